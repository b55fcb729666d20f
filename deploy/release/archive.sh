#!/usr/bin/env bash
# Builds the release archive: deploy/release/archive.sh [--bins DIR] [--out DIR]
#
#   dist/strait-<version>-<target>.tar.gz          the release (one directory inside)
#   dist/strait-<version>-<target>.tar.gz.sha256   its SHA-256 (`sha256sum` format): what
#                                                  install.sh --sha256 and Terraform's
#                                                  strait_release_sha256 take
#
# The archive holds bin/ (strait-agent, strait-coordinator, straitctl), deploy/systemd/
# (install.sh, the units, the sysctl drop-in, example configs, cloud-init), README.md and
# SHA256SUMS (every other file's SHA-256, checked by install.sh).
#
#   --bins DIR   take the binaries from DIR (e.g. deploy/image/build.sh --bins DIR: the
#                image's, so one compile serves both); default: cargo build --profile dist
#   --out DIR    where to write (default: dist/ in the repository)
#   --target T   the target triple in the name (default: rustc's host triple)
#
# The archive is reproducible: sorted entries, owner 0, mtimes from the last commit.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
repo="$(cd "$here/../.." && pwd)"
die() {
  echo "archive.sh: $*" >&2
  exit 1
}
usage() {
  sed -n '2,19p' "$0" | sed 's/^# \{0,1\}//'
  exit "${1:-2}"
}

bins=""
out="$repo/dist"
target=""
while [ $# -gt 0 ]; do
  case "$1" in
    --bins | --out | --target)
      [ $# -ge 2 ] || die "$1 needs a value"
      case "$1" in
        --bins) bins="$2" ;;
        --out) out="$2" ;;
        --target) target="$2" ;;
      esac
      shift
      ;;
    -h | --help) usage 0 ;;
    *) die "unknown argument $1 (see --help)" ;;
  esac
  shift
done

version="$(awk '/^\[/ { s = ($0 == "[workspace.package]") } s && $1 == "version" { gsub(/"/, "", $3); print $3; exit }' "$repo/Cargo.toml")"
[ -n "$version" ] || die "no version in $repo/Cargo.toml [workspace.package]"
if [ -z "$target" ]; then
  target="$(rustc -vV 2>/dev/null | sed -n 's/^host: //p')" || true
  [ -n "$target" ] || die "rustc not found: pass --target TRIPLE"
fi
if [ -z "$bins" ]; then
  (cd "$repo" && cargo build --profile dist --locked -p strait-agent -p strait-coordinator -p strait-ctl)
  bins="$repo/target/dist"
fi
for b in strait-agent strait-coordinator straitctl; do
  [ -x "$bins/$b" ] || die "$bins/$b: no such executable"
done
built="$("$bins/strait-agent" --version)"
[ "$built" = "strait-agent $version" ] || die "$bins/strait-agent says \"$built\", but Cargo.toml's version is $version: stale binaries?"

name="strait-$version-$target"
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
top="$work/$name"
mkdir -p "$top/bin" "$top/deploy/systemd"
for b in strait-agent strait-coordinator straitctl; do
  install -m 0755 "$bins/$b" "$top/bin/$b"
done
for f in install.sh strait-agent.service strait-coordinator.service 90-strait-gateway.conf 90-strait-member.conf \
  strait-bird.service strait-agent.service.d/50-bgp.conf agent.example.toml \
  agent-bgp.example.toml coordinator.example.toml cloud-init.yaml; do
  [ -f "$repo/deploy/systemd/$f" ] || die "deploy/systemd/$f is missing"
  mode=0644
  [ "$f" != install.sh ] || mode=0755
  install -D -m "$mode" "$repo/deploy/systemd/$f" "$top/deploy/systemd/$f"
done
install -m 0644 "$repo/README.md" "$top/README.md"
(cd "$top" && find . -type f -printf '%P\n' | LC_ALL=C sort | xargs sha256sum) >"$work/SHA256SUMS"
mv "$work/SHA256SUMS" "$top/SHA256SUMS"

epoch="$(git -C "$repo" log -1 --format=%ct 2>/dev/null || echo 0)"
mkdir -p "$out"
tar --sort=name --mtime="@$epoch" --owner=0 --group=0 --numeric-owner --format=gnu \
  -C "$work" -cf - "$name" | gzip -n -9 >"$out/$name.tar.gz"
(cd "$out" && sha256sum "$name.tar.gz" >"$name.tar.gz.sha256")
echo "archive.sh: $out/$name.tar.gz ($(stat -c %s "$out/$name.tar.gz") bytes)"
cat "$out/$name.tar.gz.sha256"
