#!/bin/sh
# The entrypoint of the testbed's MySQL image (Debian's MariaDB), with the official mysql image's
# contract as the chart uses it: `docker-entrypoint.sh mysqld [option...]` runs the server in the
# foreground as the current, non-root, user; on first start, with an empty data directory, it
# initialises it and gives root (localhost and any host) the password in MYSQL_ROOT_PASSWORD.
# Other commands run as given.
set -eu

case "${1:-}" in
  mysqld | mariadbd) shift ;;
  -*) ;;
  *) exec "$@" ;;
esac

datadir=/var/lib/mysql
if [ ! -d "$datadir/mysql" ]; then
  password="${MYSQL_ROOT_PASSWORD:-${MARIADB_ROOT_PASSWORD:-}}"
  if [ -z "$password" ]; then
    echo "docker-entrypoint.sh: $datadir is empty: set MYSQL_ROOT_PASSWORD to initialise it" >&2
    exit 1
  fi
  echo "docker-entrypoint.sh: initialising $datadir"
  # Run by mariadb-install-db right after the system tables, then removed: the password is never
  # left on disk. FLUSH PRIVILEGES loads the grant tables, which bootstrap mode skips.
  umask 077
  init=$(mktemp)
  trap 'rm -f "$init"' EXIT
  quoted=$(printf '%s' "$password" | sed -e 's/\\/\\\\/g' -e "s/'/\\\\'/g")
  cat >"$init" <<SQL
FLUSH PRIVILEGES;
ALTER USER 'root'@'localhost' IDENTIFIED BY '$quoted';
CREATE USER 'root'@'%' IDENTIFIED BY '$quoted';
GRANT ALL PRIVILEGES ON *.* TO 'root'@'%' WITH GRANT OPTION;
SQL
  # --force: no host name lookup (pods' names need not resolve; the server skips name resolution too).
  if ! output=$(mariadb-install-db --datadir="$datadir" --skip-test-db --force --extra-file="$init" 2>&1); then
    printf '%s\n' "$output" >&2
    exit 1
  fi
  rm -f "$init"
  trap - EXIT
fi

exec mariadbd "$@"
