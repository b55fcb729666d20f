#!/usr/bin/env bash
# Prints a containers.conf that lets rootful podman run on this kind of machine; use it as
#   export CONTAINERS_CONF=/some/dir/containers.conf
#   bash deploy/image/podman-conf.sh >"$CONTAINERS_CONF"
# - ulimits: podman asks for nofile 1048576 (and lowers its own nproc to 32768) but the OCI
#   runtime may only set what the caller's hard limits allow unless it holds
#   CAP_SYS_RESOURCE (CI's sandbox does not): ask for the caller's own limits.
# - runtime: crun 1.8 refuses a cgroup v1/v2 hybrid whose v2 hierarchy has controllers
#   ("cgroups in hybrid mode not supported"); runc accepts it.
set -euo pipefail
nofile="$(ulimit -Hn)"
nproc="$(ulimit -Hu)"
[ "$nproc" = unlimited ] || [ "$nproc" -gt 32768 ] && nproc=32768
[ "$nofile" = unlimited ] && nofile=1048576
echo "# written by deploy/image/podman-conf.sh"
echo "[containers]"
echo "default_ulimits = [\"nofile=$nofile:$nofile\", \"nproc=$nproc:$nproc\"]"
if grep -qs . /sys/fs/cgroup/unified/cgroup.controllers; then
  command -v runc >/dev/null || {
    echo "podman-conf.sh: cgroup hybrid mode with v2 controllers needs runc: apt-get install runc" >&2
    exit 1
  }
  echo "[engine]"
  echo "runtime = \"runc\""
fi
