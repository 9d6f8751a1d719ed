#!/usr/bin/env bash
# First process of a lab host. lab.py starts it as
#   setsid -f ip netns exec hN unshare --mount --uts --propagation private -- host-init.sh ...
# so it already runs in the host's network, mount and UTS namespaces. It turns the
# shared filesystem into the host's own view, starts the host's sshd and dockerd,
# marks the host ready and then stays as dockerd's parent.
#
# Usage: host-init.sh NAME HOST_DIR LOG_DIR CGROUP_MOUNTS_FILE
set -euo pipefail

name=$1 host_dir=$2 log_dir=$3 cgroup_mounts=$4
# lab.py shows the tail of this log when a host fails to start.
trap 'echo "host-init $name: failed (exit $?) at line $LINENO: $BASH_COMMAND" >&2' ERR

# lab.py's launcher already wrote our pid to $host_dir/pids/init.pid.
echo "host-init $name: pid $$" >&2

hostname "$name"

# `ip netns exec` remounts /sys so that /sys/class/net shows this namespace, which
# leaves /sys/fs/cgroup empty; dockerd then dies with "Devices cgroup isn't mounted".
# lab.py recorded the root namespace's cgroup mounts (fstype, options, mount point,
# in mount order); mounting the same hierarchies again gives the same cgroup trees.
while read -r fstype options target; do
  mkdir -p "$target"
  case $fstype in
    tmpfs) mount -t tmpfs -o "$options" cgroup_root "$target" ;;
    cgroup) mount -t cgroup -o "$options" cgroup "$target" ;;
    cgroup2) mount -t cgroup2 -o "$options" cgroup2 "$target" ;;
  esac
done <"$cgroup_mounts"

# Our mount namespace started as a copy of the root one. Copies of its mounts under
# /run (netns handles, the root dockerd's container netns) and /var/lib/docker (the
# root dockerd's overlay mounts) would pin those objects for as long as this host
# lives: the root dockerd could not remove its containers ("device or resource
# busy"). Detach them, deepest first, before hiding both paths.
awk '{print $5}' /proc/self/mountinfo | grep -E '^/(run|var/lib/docker)(/|$)' | sort -r |
  while read -r mnt; do umount -l "$mnt" 2>/dev/null || true; done

mkdir -p /var/lib/docker /etc/docker
mount --bind "$host_dir/root" /root
mount --bind "$host_dir/docker" /var/lib/docker
mount --bind "$host_dir/etc-docker" /etc/docker
mount --bind "$host_dir/etc/hosts" /etc/hosts
mount --bind "$host_dir/etc/hostname" /etc/hostname
mount --bind "$host_dir/etc/resolv.conf" /etc/resolv.conf
# The host's own /tmp goes last. When the lab directory itself is under /tmp (a clone in
# a temp dir), that mount would hide it, and with it the sshd config, the pid files and
# the logs: carry the lab directory into the host's /tmp at the same path first. The
# carried mount exists only in this host's mount namespace.
lab_root=$(cd "$host_dir/../.." && pwd -P)
tmp_bind=--bind
if [[ $lab_root == /tmp/* ]]; then
  mkdir -p "$host_dir/tmp${lab_root#/tmp}"
  mount --bind "$lab_root" "$host_dir/tmp${lab_root#/tmp}"
  tmp_bind=--rbind
fi
mount "$tmp_bind" "$host_dir/tmp" /tmp
mount -t tmpfs -o mode=0755,size=256m run /run
mkdir -p /run/sshd /run/lock
chmod 0755 /run/sshd

# sshd forks into the background before it binds port 22, so readiness below waits
# for the listening socket too. Its PidFile is in host_dir so the deployer can stop
# and start it (tests need "a stopped host").
/usr/sbin/sshd -f "$host_dir/ssh/sshd_config" -E "$log_dir/$name-sshd.log"

dockerd --config-file /etc/docker/daemon.json >>"$log_dir/$name-dockerd.log" 2>&1 &
dockerd_pid=$!
echo "$dockerd_pid" >"$host_dir/pids/dockerd.pid"

# Readiness: sshd listens and the Docker API answers. Bounded at ~60 s; lab.py has its own, shorter, deadline
# and reports the logs if we never get here.
for _ in $(seq 1 1200); do
  if [ -n "$(ss -Hltn 'sport = :22')" ] && docker -H unix:///run/docker.sock version >/dev/null 2>&1; then
    touch "$host_dir/ready"
    echo "host-init $name: ready" >&2
    break
  fi
  if ! kill -0 "$dockerd_pid" 2>/dev/null; then
    echo "host-init $name: dockerd exited during start-up; see $log_dir/$name-dockerd.log" >&2
    exit 1
  fi
  sleep 0.05
done

# Stay dockerd's parent and reap it: with `exec sleep infinity` a dead dockerd would
# linger as a zombie that still looks alive to teardown.
rc=0
wait "$dockerd_pid" || rc=$?
echo "host-init $name: dockerd exited with $rc" >&2
exit "$rc"
