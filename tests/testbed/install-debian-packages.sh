#!/usr/bin/env bash
# Install the Debian packages the testbed needs, when missing, without starting their services
# (Debian's postinst would start a system-wide MariaDB; the testbed runs its own).
#
# - mariadb-server, mariadb-client: the testbed's MySQL server, and the one in its MySQL image;
# - runc: the OCI runtime. Debian's is built with libseccomp; a runc built from its Go module without
#   cgo lacks seccomp and fails every container that asks for RuntimeDefault ("seccomp: config
#   provided but seccomp not supported"), which the chart's pods all do;
# - buildah (daemonless, builds Dockerfiles without a Docker engine) and mmdebstrap (the images'
#   Debian base, made from Debian's packages): tests/testbed/images.py;
# - iptables: kube-proxy's rules, the CNI portmap plugin and the NetworkPolicy queue on the testbed's nodes.
set -euo pipefail
packages=(mariadb-server mariadb-client runc buildah mmdebstrap iptables)
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
