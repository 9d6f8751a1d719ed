#!/usr/bin/env bash
# Install every Debian package the shipyard test lab needs (tests/lab/README.md).
#
# Idempotent and quick when everything is there: it asks dpkg first and only runs
# apt-get (update + install) for what is missing. Needs root; Debian 12.
set -euo pipefail

packages=(
  docker.io          # dockerd 20.10 for the deployer and every lab host
  openssh-server     # one sshd per lab host
  openssh-client     # ssh / ssh-keygen for the deployer and the tests
  busybox-static     # busybox:local base image
  iproute2           # ip netns, veth, bridge
  iptables           # the lab firewall
  docker-registry    # distribution registry 2.8, run by hand with our own config
  debootstrap        # pybase:local base image
  debian-archive-keyring gpgv  # debootstrap verifies the mirror's Release file
  util-linux         # nsenter, unshare, setsid
  procps             # pgrep/ps, used by people debugging the lab
  make               # make lab-up / lab-down
  pebble             # local ACME server (RFC 8555) for the proxy's automatic-TLS tests
  python3            # runs lab.py; tests also run small scripts inside hosts
  tar
)

if [[ $(id -u) -ne 0 ]]; then
  echo "install-packages.sh: must run as root (apt-get and dpkg need it); rerun with sudo" >&2
  exit 1
fi

missing=()
for pkg in "${packages[@]}"; do
  # "install ok installed" is the only state that means the package is usable.
  status=$(dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null || true)
  [[ $status == "install ok installed" ]] || missing+=("$pkg")
done

if [[ ${#missing[@]} -eq 0 ]]; then
  echo "lab packages: all ${#packages[@]} already installed"
  exit 0
fi

echo "lab packages: installing ${missing[*]}"
export DEBIAN_FRONTEND=noninteractive

# Without systemd, the maintainer scripts would start the packaged services through
# /etc/init.d (an sshd on :22 and a registry on :5000 in the root namespace, both
# outside our control). A policy-rc.d that answers 101 forbids that; we only add one
# for the duration of the install if the machine has none.
policy=/usr/sbin/policy-rc.d
if [[ ! -e $policy ]]; then
  printf '#!/bin/sh\nexit 101\n' >"$policy"
  chmod 0755 "$policy"
  trap 'rm -f "$policy"' EXIT
fi

apt-get update -qq
apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
echo "lab packages: installed ${missing[*]}"
