#!/usr/bin/env bash
# Installs Strait on a systemd host (Debian 12 / Ubuntu 22.04 or newer, systemd >= 250).
#
#   install.sh [--gateway] [--coordinator] [--config FILE] [--secret NAME=FILE]...
#              [--sha256 HEX] [--no-start] SOURCE
#
# SOURCE is a directory holding the binaries (strait-agent, and strait-coordinator and
# straitctl if present), a .tar.gz of them (any layout), or an https:// URL of such a
# .tar.gz (checked against --sha256 when given). Binaries go to /usr/local/bin.
#
#   --config FILE        install FILE as /etc/strait/agent.toml (root, 0600); without it an
#                        existing agent.toml is kept, and a missing one stops the install
#   --secret NAME=FILE   install FILE as /etc/strait/agent-secrets/NAME (0600); the agent
#                        sees it as /run/credentials/strait-agent.service/secret_NAME
#                        (e.g. join-token, vault-secret-id, vault-token)
#   --gateway            also install /etc/sysctl.d/90-strait-gateway.conf (IPv4 forwarding)
#   --coordinator        also install strait-coordinator.service (enabled, started once
#                        /etc/strait/coordinator.toml exists; see the unit file)
#   --no-start           enable the units but do not (re)start them
#
# Run as root. Idempotent: running it again upgrades the binaries and restarts the agent.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
prefix=/usr/local/bin
etc=/etc/strait
unitdir=/etc/systemd/system

die() {
  echo "install.sh: error: $*" >&2
  exit 1
}
note() { echo "install.sh: $*"; }
usage() {
  sed -n '2,23p' "$0" | sed 's/^# \{0,1\}//'
  exit "${1:-2}"
}

gateway=no
coordinator=no
start=yes
config=""
sha256=""
secrets=()
source_arg=""
while [ $# -gt 0 ]; do
  case "$1" in
    --gateway) gateway=yes ;;
    --coordinator) coordinator=yes ;;
    --no-start) start=no ;;
    --config)
      [ $# -ge 2 ] || die "--config needs a file"
      config="$2"
      shift
      ;;
    --secret)
      [ $# -ge 2 ] || die "--secret needs NAME=FILE"
      secrets+=("$2")
      shift
      ;;
    --sha256)
      [ $# -ge 2 ] || die "--sha256 needs a hex digest"
      [[ "$2" =~ ^[0-9a-fA-F]{64}$ ]] || die "--sha256 $2: expected 64 hex digits"
      sha256="$2"
      shift
      ;;
    -h | --help) usage 0 ;;
    -*) die "unknown option $1 (see --help)" ;;
    *)
      [ -z "$source_arg" ] || die "more than one SOURCE given ($source_arg, $1)"
      source_arg="$1"
      ;;
  esac
  shift
done

[ -n "$source_arg" ] || usage 2
[ "$(id -u)" -eq 0 ] || die "run as root (it writes /usr/local/bin, /etc/strait and systemd units)"
command -v systemctl >/dev/null || die "systemctl not found: this installer is for systemd hosts"
for unit in strait-agent.service strait-coordinator.service 90-strait-gateway.conf; do
  [ -f "$here/$unit" ] || die "$here/$unit is missing: run install.sh from its directory in the Strait release (deploy/systemd)"
done
if [ -n "$config" ] && [ ! -r "$config" ]; then
  die "--config $config: no such readable file"
fi
if [ -z "$config" ] && [ ! -f "$etc/agent.toml" ]; then
  die "no $etc/agent.toml yet: pass --config FILE (see agent.example.toml next to this script)"
fi
for s in "${secrets[@]}"; do
  name="${s%%=*}"
  file="${s#*=}"
  if [ "$name" = "$s" ] || [ -z "$name" ]; then
    die "--secret $s: expected NAME=FILE"
  fi
  case "$name" in
    */* | .*) die "--secret $s: NAME must be a plain file name" ;;
  esac
  [ -r "$file" ] || die "--secret $s: cannot read $file"
done

work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT

# Find the binaries: a directory, a local archive, or a downloaded archive.
case "$source_arg" in
  https://*)
    command -v curl >/dev/null || die "curl is needed to download $source_arg (apt-get install curl)"
    note "downloading $source_arg"
    curl --fail --silent --show-error --location --proto '=https' --retry 3 \
      -o "$work/strait.tar.gz" "$source_arg" || die "download of $source_arg failed"
    archive="$work/strait.tar.gz"
    ;;
  http://*) die "refusing to download over plain http: $source_arg" ;;
  *)
    [ -e "$source_arg" ] || die "SOURCE $source_arg does not exist"
    archive=""
    [ -f "$source_arg" ] && archive="$source_arg"
    ;;
esac
if [ -n "$archive" ]; then
  if [ -n "$sha256" ]; then
    echo "$sha256  $archive" | sha256sum --check --quiet - || die "$archive does not match --sha256 $sha256"
  fi
  tar -xzf "$archive" -C "$work" || die "$archive is not a .tar.gz"
  bindir="$work"
else
  [ -z "$sha256" ] || die "--sha256 applies to an archive, not to the directory $source_arg"
  bindir="$source_arg"
fi
find_bin() { find "$bindir" -type f -name "$1" -perm -u+x | head -n 1; }

# Check everything before changing anything.
agent_bin="$(find_bin strait-agent)"
[ -n "$agent_bin" ] || die "no executable strait-agent in $source_arg"
"$agent_bin" --version >/dev/null 2>&1 || die "$agent_bin does not run here (wrong architecture or libc?)"
coordinator_bin="$(find_bin strait-coordinator)"
straitctl_bin="$(find_bin straitctl)"
if [ "$coordinator" = yes ] && [ -z "$coordinator_bin" ]; then
  die "--coordinator given but there is no strait-coordinator in $source_arg"
fi

install -m 0755 -o root -g root "$agent_bin" "$prefix/strait-agent"
note "installed $prefix/strait-agent ($("$prefix/strait-agent" --version))"
if [ -n "$coordinator_bin" ]; then
  install -m 0755 -o root -g root "$coordinator_bin" "$prefix/strait-coordinator"
  note "installed $prefix/strait-coordinator"
fi
if [ -n "$straitctl_bin" ]; then
  install -m 0755 -o root -g root "$straitctl_bin" "$prefix/straitctl"
  note "installed $prefix/straitctl"
fi

# Configuration and secrets: root only. The service reads copies through LoadCredential=.
install -d -m 0700 -o root -g root "$etc" "$etc/agent-secrets"
if [ -n "$config" ]; then
  install -m 0600 -o root -g root "$config" "$etc/agent.toml"
  note "installed $etc/agent.toml"
fi
for s in "${secrets[@]}"; do
  install -m 0600 -o root -g root "${s#*=}" "$etc/agent-secrets/${s%%=*}"
  note "installed secret $etc/agent-secrets/${s%%=*}"
done

install -m 0644 -o root -g root "$here/strait-agent.service" "$unitdir/strait-agent.service"
if [ "$gateway" = yes ]; then
  install -m 0644 -o root -g root "$here/90-strait-gateway.conf" /etc/sysctl.d/90-strait-gateway.conf
  sysctl -q -p /etc/sysctl.d/90-strait-gateway.conf
  note "IPv4 forwarding on (/etc/sysctl.d/90-strait-gateway.conf)"
fi
if [ "$coordinator" = yes ]; then
  install -d -m 0700 -o root -g root "$etc/coordinator-secrets"
  install -m 0644 -o root -g root "$here/strait-coordinator.service" "$unitdir/strait-coordinator.service"
fi

systemctl daemon-reload
systemctl enable strait-agent.service >/dev/null
[ "$coordinator" = no ] || systemctl enable strait-coordinator.service >/dev/null

if [ "$start" = yes ]; then
  if [ "$coordinator" = yes ]; then
    if [ -f "$etc/coordinator.toml" ]; then
      systemctl restart strait-coordinator.service
      note "strait-coordinator started"
    else
      note "strait-coordinator enabled but not started: create the mesh with"
      note "  strait-coordinator init --state-dir /var/lib/strait-coordinator --mesh NAME --site ..."
      note "  install -m 0600 /var/lib/strait-coordinator/coordinator.toml $etc/coordinator.toml"
      note "  systemctl start strait-coordinator"
    fi
  fi
  systemctl restart strait-agent.service
  note "strait-agent started; follow it with: journalctl -u strait-agent -f"
else
  note "units enabled, not started (--no-start)"
fi
