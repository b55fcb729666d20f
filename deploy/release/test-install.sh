#!/usr/bin/env bash
# Installs a release archive into fake roots with install.sh --root, the way a VM would get
# it, and checks what lands where; then checks that install.sh refuses what it must refuse.
#
#   deploy/release/test-install.sh dist/strait-<version>-<target>.tar.gz
#
# Each case prints "ok - ..." or "not ok - ..."; the last line is "N passed, N failed" and
# the exit status is non-zero if any failed. Needs root (install -o root) and systemctl
# (`systemctl --root` enables the units offline).
set -euo pipefail

archive="$(cd "$(dirname "$1")" && pwd)/$(basename "$1")"
[ -f "$archive" ] || {
  echo "test-install.sh: no archive $1 (build one with deploy/release/archive.sh)" >&2
  exit 2
}
sum="$(cut -d' ' -f1 "$archive.sha256")"
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
passed=0
failed=0
ok() {
  echo "ok - $*"
  passed=$((passed + 1))
}
not_ok() {
  echo "not ok - $*"
  failed=$((failed + 1))
}
# expect DESCRIPTION CONDITION...: runs the condition (a command) and records the result.
expect() {
  local what="$1"
  shift
  if "$@"; then ok "$what"; else not_ok "$what"; fi
}
mode() { stat -c %a "$1"; }
install_sh() { # ROOT ARGS...: install.sh from the release, into ROOT
  local root="$1"
  shift
  bash "$work/release/deploy/systemd/install.sh" --root "$root" "$@" >"$root.log" 2>&1
}
refused() { # NEEDLE ROOT ARGS...: install.sh fails and says NEEDLE
  local needle="$1"
  shift
  if install_sh "$@"; then
    echo "  install.sh succeeded:" && sed 's/^/  /' "$1.log"
    return 1
  fi
  grep -qF -- "$needle" "$1.log" || {
    echo "  no \"$needle\" in:" && sed 's/^/  /' "$1.log"
    return 1
  }
}

mkdir -p "$work/release"
tar -xzf "$archive" -C "$work/release" --strip-components=1
# Configs for the cases: the shipped examples, with a join token for the member.
cp "$work/release/deploy/systemd/agent.example.toml" "$work/gateway.toml"
sed -e 's/^role = "gateway"/role = "member"/' -e '/^prefixes = /d' -e '/^\[vault\]/,$d' \
  "$work/gateway.toml" >"$work/member.toml"
echo 'join-token-file = "/run/credentials/strait-agent.service/secret_join-token"' >>"$work/member.toml"
echo "not-a-real-token" >"$work/token"
echo "00000000-secret" >"$work/secret-id"

# --- --gateway from the archive, with --sha256 ------------------------------------------
r="$work/gw"
mkdir "$r"
expect "--gateway installs from the archive with its --sha256" \
  install_sh "$r" --gateway --sha256 "$sum" --config "$work/gateway.toml" --secret "vault-secret-id=$work/secret-id" "$archive"
expect "gateway: binaries in /usr/local/bin, 0755" \
  test "$(mode "$r/usr/local/bin/strait-agent")" = 755 -a -x "$r/usr/local/bin/straitctl"
expect "gateway: no coordinator binary" test ! -e "$r/usr/local/bin/strait-coordinator"
expect "gateway: /etc/strait 0700, agent.toml 0600, secret 0600" \
  test "$(mode "$r/etc/strait")" = 700 -a "$(mode "$r/etc/strait/agent.toml")" = 600 \
  -a "$(mode "$r/etc/strait/agent-secrets/vault-secret-id")" = 600
expect "gateway: agent.toml is the given config" cmp -s "$work/gateway.toml" "$r/etc/strait/agent.toml"
expect "gateway: sysctl drop-in installed" test -f "$r/etc/sysctl.d/90-strait-gateway.conf"
expect "gateway: strait-agent.service enabled, no coordinator unit" \
  test -L "$r/etc/systemd/system/multi-user.target.wants/strait-agent.service" \
  -a ! -e "$r/etc/systemd/system/strait-coordinator.service"
expect "gateway: a second run (an upgrade) keeps the config" \
  install_sh "$r" --gateway "$archive"

# --- --gateway with [bgp]: BIRD beside the agent ------------------------------------------
r="$work/bgp"
mkdir -p "$r/lib/systemd/system"
# Debian's bird2 unit, enabled as the package leaves it: --bgp must disable it.
printf '[Unit]\nDescription=BIRD\n[Service]\nExecStart=/usr/sbin/bird -f\n[Install]\nWantedBy=multi-user.target\n' \
  >"$r/lib/systemd/system/bird.service"
systemctl --root="$r" enable bird.service >/dev/null 2>&1
cp "$work/release/deploy/systemd/agent-bgp.example.toml" "$work/bgp.toml"
expect "--gateway with a [bgp] config installs BIRD beside the agent (--bgp implied)" \
  install_sh "$r" --gateway --config "$work/bgp.toml" --secret "join-token=$work/token" \
  --secret "bgp-password=$work/secret-id" "$archive"
expect "bgp: the log says [bgp] implied --bgp" grep -qF "has [bgp]: installing BIRD" "$r.log"
expect "bgp: strait-bird.service and the agent's drop-in 50-bgp.conf installed, 0644" \
  test "$(mode "$r/etc/systemd/system/strait-bird.service")" = 644 \
  -a "$(mode "$r/etc/systemd/system/strait-agent.service.d/50-bgp.conf")" = 644
expect "bgp: the drop-in gives the agent /run/strait-bird" \
  grep -qx 'RuntimeDirectory=strait-bird' "$r/etc/systemd/system/strait-agent.service.d/50-bgp.conf"
expect "bgp: the drop-in wants strait-bird.service" \
  grep -qx 'Wants=strait-bird.service' "$r/etc/systemd/system/strait-agent.service.d/50-bgp.conf"
expect "bgp: BIRD runs as the agent's dynamic user" \
  grep -qx 'User=strait-agent' "$r/etc/systemd/system/strait-bird.service"
expect "bgp: BIRD bound to the agent" grep -qx 'BindsTo=strait-agent.service' "$r/etc/systemd/system/strait-bird.service"
expect "bgp: Debian's bird.service disabled" \
  test ! -e "$r/etc/systemd/system/multi-user.target.wants/bird.service"
expect "bgp: the BGP password is a 0600 secret" test "$(mode "$r/etc/strait/agent-secrets/bgp-password")" = 600
expect "bgp: a second run keeps BIRD's units (the config still has [bgp])" \
  install_sh "$r" --gateway "$archive"
expect "bgp: still there after the upgrade" test -f "$r/etc/systemd/system/strait-bird.service"
expect "bgp: a run with a config without [bgp] removes BIRD's unit and the drop-in" \
  install_sh "$r" --gateway --config "$work/gateway.toml" "$archive"
expect "bgp: removed" test ! -e "$r/etc/systemd/system/strait-bird.service" \
  -a ! -e "$r/etc/systemd/system/strait-agent.service.d"

# --- --member from the unpacked release directory -----------------------------------------
r="$work/member"
mkdir "$r"
expect "--member installs from an unpacked release" \
  install_sh "$r" --member --config "$work/member.toml" --secret "join-token=$work/token" "$work/release"
expect "member: agent unit enabled, no gateway sysctl drop-in" \
  test -L "$r/etc/systemd/system/multi-user.target.wants/strait-agent.service" \
  -a ! -e "$r/etc/sysctl.d/90-strait-gateway.conf"
expect "member: per-flow multipath sysctl drop-in" \
  grep -q "^net.ipv4.fib_multipath_hash_policy = 1" "$r/etc/sysctl.d/90-strait-member.conf"
expect "member: join token 0600" test "$(mode "$r/etc/strait/agent-secrets/join-token")" = 600

# --- --coordinator: no agent.toml needed, no agent unit --------------------------------
r="$work/coord"
mkdir "$r"
expect "--coordinator installs without any agent.toml" \
  install_sh "$r" --coordinator --coordinator-config "$work/release/deploy/systemd/coordinator.example.toml" "$archive"
expect "coordinator: coordinator and straitctl installed, no agent" \
  test -x "$r/usr/local/bin/strait-coordinator" -a -x "$r/usr/local/bin/straitctl" -a ! -e "$r/usr/local/bin/strait-agent"
expect "coordinator: coordinator.toml 0600, its unit enabled, no agent unit" \
  test "$(mode "$r/etc/strait/coordinator.toml")" = 600 \
  -a -L "$r/etc/systemd/system/multi-user.target.wants/strait-coordinator.service" \
  -a ! -e "$r/etc/systemd/system/strait-agent.service"

# --- refusals: nothing installed ----------------------------------------------------------
r="$work/refuse"
mkdir "$r"
expect "a wrong --sha256 is refused" \
  refused "refusing it" "$r" --gateway --sha256 "$(printf '1%.0s' {1..64})" --config "$work/gateway.toml" "$archive"
# The same archive with one byte of the agent binary changed, repacked: SHA256SUMS no
# longer matches (and the archive's own sum changed too).
mkdir "$work/tampered"
tar -xzf "$archive" -C "$work/tampered"
bin="$(find "$work/tampered" -path '*/bin/strait-agent')"
printf '\x90' | dd of="$bin" bs=1 seek=4096 conv=notrunc status=none
tar -czf "$work/tampered.tar.gz" -C "$work/tampered" .
expect "an archive whose files do not match its SHA256SUMS is refused" \
  refused "do not match its SHA256SUMS" "$r" --gateway --config "$work/gateway.toml" "$work/tampered.tar.gz"
expect "the tampered archive is refused even with its own (new) --sha256" \
  refused "do not match its SHA256SUMS" "$r" --gateway --sha256 "$(sha256sum "$work/tampered.tar.gz" | cut -d' ' -f1)" --config "$work/gateway.toml" "$work/tampered.tar.gz"
expect "a URL without --sha256 is refused" \
  refused "--sha256 is required" "$r" --gateway --config "$work/gateway.toml" https://releases.example.net/strait.tar.gz
sed 's/^listen-port = 51820/listen-port = "fifty"/' "$work/gateway.toml" >"$work/bad.toml"
expect "an invalid config is refused, naming the key" \
  refused "listen-port" "$r" --gateway --config "$work/bad.toml" "$archive"
expect "a member config for --gateway is refused" \
  refused 'set role = "gateway"' "$r" --gateway --config "$work/member.toml" "$archive"
expect "--bgp on a member is refused" \
  refused "--bgp is for gateways" "$r" --member --bgp --config "$work/member.toml" "$archive"
expect "--bgp with a config without [bgp] is refused" \
  refused "has no [bgp] table" "$r" --gateway --bgp --config "$work/gateway.toml" "$archive"
sed 's|^bird-config = .*|bird-config = "/run/strait/bird.conf"|' "$work/bgp.toml" >"$work/bgp-elsewhere.toml"
expect "a [bgp] config whose bird-config is not /run/strait-bird/bird.conf is refused" \
  refused 'set bird-config = "/run/strait-bird/bird.conf"' "$r" --gateway --config "$work/bgp-elsewhere.toml" "$archive"
expect "an agent install without agent.toml is refused" \
  refused "no $r/etc/strait/agent.toml" "$r" --member "$archive"
expect "the refusals installed nothing" test -z "$(find "$r" -mindepth 1 -not -name '*.log' -print -quit)"

echo "$passed passed, $failed failed"
[ "$failed" -eq 0 ]
