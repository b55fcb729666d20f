#!/usr/bin/env bash
# Installs Strait on a systemd host (Debian 12 / Ubuntu 22.04 or newer, systemd >= 250)
# from a release archive (deploy/release/archive.sh builds it).
#
#   install.sh --gateway|--member|--coordinator [options] SOURCE
#
# SOURCE is a release archive strait-<version>-<target>.tar.gz, an https:// URL of one
# (then --sha256 is required), or an unpacked release directory (default: the release
# this script is in). Every file of the release
# is checked against its SHA256SUMS, and the archive against --sha256 when given; any
# mismatch stops the install before anything is changed, whatever else is asked.
#
# What to install (one or more):
#   --gateway            the agent as a gateway: strait-agent.service and
#                        /etc/sysctl.d/90-strait-gateway.conf (IPv4 forwarding)
#   --member             the agent as a member: strait-agent.service and
#                        /etc/sysctl.d/90-strait-member.conf (per-flow multipath hashing)
#   --coordinator        the coordinator: strait-coordinator.service (started once
#                        /etc/strait/coordinator.toml exists) and straitctl
#   --bgp                with --gateway: BIRD 2 beside the agent for `[bgp]` (implied when
#                        agent.toml has a [bgp] table): strait-bird.service, the agent's
#                        drop-in strait-agent.service.d/50-bgp.conf (/run/strait-bird,
#                        shared with BIRD), the bird2 package (apt-get, unless --root) and
#                        Debian's own bird.service disabled. agent.toml must use
#                        bird-config = "/run/strait-bird/bird.conf" and
#                        bird-socket = "/run/strait-bird/bird.ctl". A gateway installed
#                        without it loses the two units if an earlier run installed them.
# Options:
#   --config FILE        agent config, installed as /etc/strait/agent.toml (root, 0600);
#                        without it an existing one is kept, and a missing one stops the
#                        install. Checked with `strait-agent check-config` first.
#   --coordinator-config FILE
#                        coordinator config, installed as /etc/strait/coordinator.toml
#                        (0600); checked with `strait-coordinator check-config` first
#   --secret NAME=FILE   agent secret, /etc/strait/agent-secrets/NAME (0600); the agent sees
#                        /run/credentials/strait-agent.service/secret_NAME (join-token,
#                        vault-secret-id, vault-token, ...)
#   --coordinator-secret NAME=FILE
#                        coordinator secret, /etc/strait/coordinator-secrets/NAME (0600)
#   --sha256 HEX         SHA-256 of the archive (the .sha256 file published beside it)
#   --no-start           enable the units but do not (re)start them
#   --root DIR           install into DIR as if it were / (an image or a test): no
#                        systemctl start, sysctl or daemon-reload; units are enabled with
#                        `systemctl --root`
#
# Run as root. Idempotent: running it again upgrades the binaries and restarts the units.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"

die() {
  echo "install.sh: error: $*" >&2
  exit 1
}
note() { echo "install.sh: $*"; }
usage() {
  sed -n '2,45p' "$0" | sed 's/^# \{0,1\}//'
  exit "${1:-2}"
}

gateway=no
member=no
coordinator=no
bgp=no
start=yes
config=""
coordinator_config=""
sha256=""
root=""
secrets=()
coordinator_secrets=()
source_arg=""
while [ $# -gt 0 ]; do
  case "$1" in
    --gateway) gateway=yes ;;
    --member) member=yes ;;
    --coordinator) coordinator=yes ;;
    --bgp) bgp=yes ;;
    --no-start) start=no ;;
    --config | --coordinator-config | --secret | --coordinator-secret | --sha256 | --root)
      [ $# -ge 2 ] || die "$1 needs a value (see --help)"
      case "$1" in
        --config) config="$2" ;;
        --coordinator-config) coordinator_config="$2" ;;
        --secret) secrets+=("$2") ;;
        --coordinator-secret) coordinator_secrets+=("$2") ;;
        --sha256)
          [[ "$2" =~ ^[0-9a-fA-F]{64}$ ]] || die "--sha256 $2: expected 64 hex digits"
          sha256="$2"
          ;;
        --root)
          [ -d "$2" ] || die "--root $2: no such directory"
          root="$(cd "$2" && pwd)"
          ;;
      esac
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

if [ -z "$source_arg" ]; then
  [ -f "$here/../../SHA256SUMS" ] || usage 2
  source_arg="$(cd "$here/../.." && pwd)"
fi
[ "$gateway" = yes ] || [ "$member" = yes ] || [ "$coordinator" = yes ] ||
  die "say what to install: --gateway, --member or --coordinator (see --help)"
[ "$gateway" = no ] || [ "$member" = no ] || die "--gateway and --member exclude each other: a node has one role"
agent=no
{ [ "$gateway" = yes ] || [ "$member" = yes ]; } && agent=yes
[ "$bgp" = no ] || [ "$gateway" = yes ] || die "--bgp is for gateways: add --gateway"
[ "$(id -u)" -eq 0 ] || die "run as root (it writes /usr/local/bin, /etc/strait and systemd units)"
[ -n "$root" ] || command -v systemctl >/dev/null || die "systemctl not found: this installer is for systemd hosts"

prefix="$root/usr/local/bin"
etc="$root/etc/strait"
unitdir="$root/etc/systemd/system"

readable() { # FLAG FILE
  if [ ! -r "$2" ] || [ ! -f "$2" ]; then
    die "$1 $2: no such readable file"
  fi
}
check_secret() { # FLAG NAME=FILE
  local name="${2%%=*}" file="${2#*=}"
  if [ "$name" = "$2" ] || [ -z "$name" ]; then
    die "$1 $2: expected NAME=FILE"
  fi
  case "$name" in
    */* | .*) die "$1 $2: NAME must be a plain file name" ;;
  esac
  readable "$1" "$file"
}
[ -z "$config" ] || readable --config "$config"
[ -z "$coordinator_config" ] || readable --coordinator-config "$coordinator_config"
if [ "$agent" = yes ] && [ -z "$config" ] && [ ! -f "$etc/agent.toml" ]; then
  die "no $etc/agent.toml yet: pass --config FILE (see agent.example.toml next to this script)"
fi
[ "$agent" = yes ] || [ ${#secrets[@]} -eq 0 ] || die "--secret is for the agent: add --gateway or --member (or use --coordinator-secret)"
[ "$agent" = yes ] || [ -z "$config" ] || die "--config is the agent's: add --gateway or --member (or use --coordinator-config)"
[ "$coordinator" = yes ] || [ -z "$coordinator_config" ] || die "--coordinator-config needs --coordinator"
for s in ${secrets[@]+"${secrets[@]}"}; do check_secret --secret "$s"; done
for s in ${coordinator_secrets[@]+"${coordinator_secrets[@]}"}; do check_secret --coordinator-secret "$s"; done

work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT

# --- The release: fetch, check the archive's sum, unpack, check every file's sum --------
case "$source_arg" in
  https://*)
    [ -n "$sha256" ] || die "--sha256 is required with a URL: the published strait-*.tar.gz.sha256 holds it"
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
    actual="$(sha256sum "$archive" | cut -d' ' -f1)"
    [ "$actual" = "${sha256,,}" ] || die "$source_arg has SHA-256 $actual, not $sha256: refusing it (a corrupt or altered download)"
    note "archive SHA-256 $actual matches"
  fi
  mkdir "$work/release"
  tar -xzf "$archive" -C "$work/release" --no-same-owner || die "$source_arg is not a .tar.gz"
  mapfile -t sums < <(find "$work/release" -maxdepth 2 -name SHA256SUMS)
  [ ${#sums[@]} -eq 1 ] || die "$source_arg holds ${#sums[@]} SHA256SUMS files, not one: not a Strait release archive"
  release="$(dirname "${sums[0]}")"
else
  [ -z "$sha256" ] || die "--sha256 applies to an archive, not to the directory $source_arg"
  release="$(cd "$source_arg" && pwd)"
  [ -f "$release/SHA256SUMS" ] || die "$release has no SHA256SUMS: not an unpacked Strait release"
fi
if ! (cd "$release" && sha256sum --check --strict --quiet SHA256SUMS); then
  die "files of $source_arg do not match its SHA256SUMS: refusing a corrupt release"
fi
listed() { grep -qE "^[0-9a-f]{64}  (\./)?$1\$" "$release/SHA256SUMS"; }
for f in bin/strait-agent bin/strait-coordinator bin/straitctl deploy/systemd/strait-agent.service \
  deploy/systemd/strait-coordinator.service deploy/systemd/90-strait-gateway.conf; do
  if [ ! -f "$release/$f" ] || ! listed "$f"; then
    die "$source_arg has no $f in its SHA256SUMS: not a complete Strait release"
  fi
done
version="$("$release/bin/strait-agent" --version 2>/dev/null)" ||
  die "$release/bin/strait-agent does not run here (wrong architecture, or glibc older than 2.34?)"
note "release verified: $version ($(wc -l <"$release/SHA256SUMS") files)"
units="$release/deploy/systemd"

# --- Check the configuration before changing anything -----------------------------------
agent_toml="${config:-$etc/agent.toml}"
# bgp_key KEY: the value of KEY = "..." in agent.toml's [bgp] table (empty if unset).
bgp_key() {
  sed -n '/^\[bgp\][[:space:]]*$/,/^\[[^[]/p' "$agent_toml" |
    sed -n "s/^[[:space:]]*$1[[:space:]]*=[[:space:]]*\"\([^\"]*\)\".*/\1/p" | head -n 1
}
if [ "$gateway" = yes ] && grep -q '^\[bgp\][[:space:]]*$' "$agent_toml"; then
  [ "$bgp" = yes ] || note "$agent_toml has [bgp]: installing BIRD beside the agent (as --bgp)"
  bgp=yes
fi
if [ "$bgp" = yes ]; then
  grep -q '^\[bgp\][[:space:]]*$' "$agent_toml" ||
    die "--bgp: $agent_toml has no [bgp] table (see agent-bgp.example.toml next to this script)"
  for kv in bird-config=/run/strait-bird/bird.conf bird-socket=/run/strait-bird/bird.ctl; do
    [ "$(bgp_key "${kv%%=*}")" = "${kv#*=}" ] ||
      die "$agent_toml: set ${kv%%=*} = \"${kv#*=}\" in [bgp]: strait-bird.service runs BIRD on that file (got \"$(bgp_key "${kv%%=*}")\")"
  done
  birdc_path="$(bgp_key birdc)"
  case "$birdc_path" in
    /usr/sbin/birdc | birdc) ;;
    *) die "$agent_toml: set birdc = \"/usr/sbin/birdc\" in [bgp] (the bird2 package's; got \"$birdc_path\")" ;;
  esac
  for f in deploy/systemd/strait-bird.service deploy/systemd/strait-agent.service.d/50-bgp.conf; do
    if [ ! -f "$release/$f" ] || ! listed "$f"; then
      die "$source_arg has no $f in its SHA256SUMS: this release cannot run BIRD beside the agent (--bgp)"
    fi
  done
fi
if [ "$agent" = yes ]; then
  out="$("$release/bin/strait-agent" check-config --config "$agent_toml" 2>&1)" || die "$agent_toml: $out"
  want=member
  [ "$gateway" = yes ] && want=gateway
  case "$out" in
    *" role=$want "* | *" role=$want") ;;
    *) die "$agent_toml: $out; but this install is --$want: set role = \"$want\" in it" ;;
  esac
  note "$out"
fi
coordinator_toml="${coordinator_config:-$etc/coordinator.toml}"
if [ "$coordinator" = yes ] && [ -f "$coordinator_toml" ]; then
  out="$("$release/bin/strait-coordinator" check-config --config "$coordinator_toml" 2>&1)" || die "$coordinator_toml: $out"
  note "$out"
fi

# --- Install ---------------------------------------------------------------------------
install -d -m 0755 "$prefix" "$unitdir"
install_bin() {
  install -m 0755 -o root -g root "$release/bin/$1" "$prefix/$1"
  note "installed $prefix/$1"
}
[ "$agent" = no ] || install_bin strait-agent
[ "$coordinator" = no ] || install_bin strait-coordinator
install_bin straitctl
# Configuration and secrets: root only. The services read copies through LoadCredential=.
install -d -m 0700 -o root -g root "$etc"
if [ "$agent" = yes ]; then
  install -d -m 0700 -o root -g root "$etc/agent-secrets"
  if [ -n "$config" ]; then
    install -m 0600 -o root -g root "$config" "$etc/agent.toml"
    note "installed $etc/agent.toml"
  fi
  for s in ${secrets[@]+"${secrets[@]}"}; do
    install -m 0600 -o root -g root "${s#*=}" "$etc/agent-secrets/${s%%=*}"
    note "installed secret $etc/agent-secrets/${s%%=*}"
  done
  install -m 0644 -o root -g root "$units/strait-agent.service" "$unitdir/strait-agent.service"
fi
if [ "$bgp" = yes ]; then
  if [ -n "$root" ]; then
    [ -x "$root/usr/sbin/bird" ] || note "warning: no $root/usr/sbin/bird: install the bird2 package in $root (--root installs no packages)"
  elif ! command -v bird >/dev/null || ! command -v birdc >/dev/null; then
    command -v apt-get >/dev/null || die "--bgp needs BIRD 2 (bird, birdc in /usr/sbin): install it, e.g. the bird2 package"
    note "installing bird2 (apt-get)"
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends bird2 >/dev/null ||
      die "apt-get install bird2 failed (run apt-get update?)"
  fi
  install -d -m 0755 "$unitdir/strait-agent.service.d"
  install -m 0644 -o root -g root "$units/strait-bird.service" "$unitdir/strait-bird.service"
  install -m 0644 -o root -g root "$units/strait-agent.service.d/50-bgp.conf" "$unitdir/strait-agent.service.d/50-bgp.conf"
  note "installed strait-bird.service and strait-agent.service.d/50-bgp.conf (BIRD beside the agent)"
  # Debian's bird.service runs BIRD on /etc/bird/bird.conf: not ours, and it would hold port 179.
  if [ -f "$root/lib/systemd/system/bird.service" ] || [ -f "$root/usr/lib/systemd/system/bird.service" ]; then
    if [ -n "$root" ]; then
      systemctl --root="$root" disable bird.service >/dev/null 2>&1 || true
    else
      systemctl disable --now bird.service >/dev/null 2>&1 || true
    fi
    note "disabled Debian's bird.service (strait-bird.service runs BIRD for the agent)"
  fi
elif [ "$gateway" = yes ]; then
  for f in strait-agent.service.d/50-bgp.conf strait-bird.service; do
    if [ -e "$unitdir/$f" ]; then
      rm -f "$unitdir/$f"
      note "removed $unitdir/$f (no [bgp] in $agent_toml)"
    fi
  done
  rmdir "$unitdir/strait-agent.service.d" 2>/dev/null || true
fi
if [ "$gateway" = yes ]; then
  install -d -m 0755 "$root/etc/sysctl.d"
  install -m 0644 -o root -g root "$units/90-strait-gateway.conf" "$root/etc/sysctl.d/90-strait-gateway.conf"
  if [ -z "$root" ]; then
    sysctl -q -p /etc/sysctl.d/90-strait-gateway.conf
    note "IPv4 forwarding on (/etc/sysctl.d/90-strait-gateway.conf)"
  fi
fi
if [ "$member" = yes ] && [ -f "$units/90-strait-member.conf" ]; then
  install -d -m 0755 "$root/etc/sysctl.d"
  install -m 0644 -o root -g root "$units/90-strait-member.conf" "$root/etc/sysctl.d/90-strait-member.conf"
  if [ -z "$root" ]; then
    sysctl -q -p /etc/sysctl.d/90-strait-member.conf
    note "per-flow spreading over the site's gateways (/etc/sysctl.d/90-strait-member.conf)"
  fi
fi
if [ "$coordinator" = yes ]; then
  install -d -m 0700 -o root -g root "$etc/coordinator-secrets"
  if [ -n "$coordinator_config" ]; then
    install -m 0600 -o root -g root "$coordinator_config" "$etc/coordinator.toml"
    note "installed $etc/coordinator.toml"
  fi
  for s in ${coordinator_secrets[@]+"${coordinator_secrets[@]}"}; do
    install -m 0600 -o root -g root "${s#*=}" "$etc/coordinator-secrets/${s%%=*}"
    note "installed secret $etc/coordinator-secrets/${s%%=*}"
  done
  install -m 0644 -o root -g root "$units/strait-coordinator.service" "$unitdir/strait-coordinator.service"
fi

services=()
[ "$agent" = no ] || services+=(strait-agent.service)
[ "$coordinator" = no ] || services+=(strait-coordinator.service)
if [ -n "$root" ]; then
  systemctl --root="$root" enable "${services[@]}" >/dev/null 2>&1 ||
    die "systemctl --root=$root enable ${services[*]} failed"
  note "enabled ${services[*]} in $root (not started: --root)"
  exit 0
fi
systemctl daemon-reload
systemctl enable "${services[@]}" >/dev/null
if [ "$start" = no ]; then
  note "enabled ${services[*]}, not started (--no-start)"
  exit 0
fi
if [ "$coordinator" = yes ]; then
  if [ -f "$etc/coordinator.toml" ]; then
    systemctl restart strait-coordinator.service
    note "strait-coordinator started; follow it with: journalctl -u strait-coordinator -f"
  else
    note "strait-coordinator enabled but not started: create the mesh once with"
    note "  strait-coordinator init --state-dir /var/lib/strait-coordinator --mesh NAME --site ..."
    note "  install -m 0600 /var/lib/strait-coordinator/coordinator.toml $etc/coordinator.toml"
    note "  systemctl start strait-coordinator"
  fi
fi
if [ "$agent" = yes ]; then
  systemctl restart strait-agent.service
  note "strait-agent started; follow it with: journalctl -u strait-agent -f"
fi
