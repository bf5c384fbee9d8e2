#!/usr/bin/env bash
# Install the Debian packages the testbed needs, when missing, without starting their services
# (Debian's postinst would start a system-wide MariaDB; the testbed runs its own).
set -euo pipefail
packages=(mariadb-server mariadb-client)
missing=()
for package in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$package" 2>/dev/null | grep -q "install ok installed" || missing+=("$package")
done
[ ${#missing[@]} -eq 0 ] && exit 0
[ "$(id -u)" -eq 0 ] || { echo "installing ${missing[*]} needs root: run as root or install them yourself" >&2; exit 1; }
echo "installing Debian packages: ${missing[*]}"
policy=/usr/sbin/policy-rc.d
if [ ! -e "$policy" ]; then
  printf '#!/bin/sh\nexit 101\n' > "$policy" && chmod +x "$policy"
  trap 'rm -f "$policy"' EXIT
fi
apt-get update -qq
DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
