#!/usr/bin/env bash
# Builds the two base images the Dockerfile names, from Debian packages, for machines that
# reach no container registry (this project's CI): deploy/image/bases.sh
#
#   RUNTIME_IMAGE (gcr.io/distroless/cc-debian12:nonroot): a stand-in made the way distroless
#     is made, by extracting Debian 12 packages without running their scripts: base-files,
#     netbase, tzdata, ca-certificates (the bundle is built here, as update-ca-certificates
#     would), libc6, libgcc-s1, libssl3, libstdc++6, libgomp1 and what they depend on;
#     /etc/passwd with root and nonroot (65532), USER 65532, no shell.
#   RUST_IMAGE (docker.io/library/rust:<version>-slim-bookworm): Debian 12 minbase with gcc,
#     libc6-dev and ca-certificates, plus this machine's Rust toolchain (rustc, cargo and the
#     standard library from `rustc --print sysroot`) in /usr/local/rust, with the official
#     image's CARGO_HOME=/usr/local/cargo.
#
# Where a registry is reachable, skip this script: `podman build` pulls the real images.
# Needs: mmdebstrap and podman (apt-get install mmdebstrap podman), root, Debian's mirror.
# Environment: MIRROR (default http://deb.debian.org/debian), SECURITY_MIRROR, and
# PODMAN (default "podman", e.g. "podman --root DIR").
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
# shellcheck source=/dev/null
. "$here/images.env"
MIRROR="${MIRROR:-http://deb.debian.org/debian}"
SECURITY_MIRROR="${SECURITY_MIRROR:-http://deb.debian.org/debian-security}"
read -r -a podman <<<"${PODMAN:-podman}"

die() {
  echo "bases.sh: $*" >&2
  exit 1
}
command -v mmdebstrap >/dev/null || die "mmdebstrap not found: apt-get install mmdebstrap"
command -v "${podman[0]}" >/dev/null || die "${podman[0]} not found: apt-get install podman"
[ "$(id -u)" -eq 0 ] || die "run as root (mmdebstrap extracts device nodes and owners)"

work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
sources=("deb $MIRROR bookworm main" "deb $MIRROR bookworm-updates main" "deb $SECURITY_MIRROR bookworm-security main")
slim=(--dpkgopt='path-exclude=/usr/share/doc/*' --dpkgopt='path-exclude=/usr/share/man/*'
  --dpkgopt='path-exclude=/usr/share/locale/*' --dpkgopt='path-exclude=/usr/share/info/*')

# --- runtime: distroless-style ----------------------------------------------------------
cat >"$work/runtime-hook.sh" <<'EOF'
set -eu
root="$1"
# The CA bundle, as update-ca-certificates builds it from every certificate shipped.
mkdir -p "$root/etc/ssl/certs"
find "$root/usr/share/ca-certificates" -name '*.crt' | LC_ALL=C sort | xargs cat >"$root/etc/ssl/certs/ca-certificates.crt"
[ -s "$root/etc/ssl/certs/ca-certificates.crt" ]
cat >"$root/etc/passwd" <<'P'
root:x:0:0:root:/root:/sbin/nologin
nobody:x:65534:65534:nobody:/nonexistent:/sbin/nologin
nonroot:x:65532:65532:nonroot:/home/nonroot:/sbin/nologin
P
cat >"$root/etc/group" <<'G'
root:x:0:
nogroup:x:65534:
nonroot:x:65532:
G
mkdir -p "$root/home/nonroot" "$root/root" "$root/tmp"
chown 65532:65532 "$root/home/nonroot"
chmod 0700 "$root/root"
chmod 1777 "$root/tmp"
# Package tooling and documentation have no use without a package manager.
rm -rf "$root/usr/share/doc" "$root/usr/share/man" "$root/usr/share/locale" "$root/usr/share/info" \
  "$root/usr/share/lintian" "$root/var/cache/apt" "$root/var/lib/apt" "$root/etc/apt" \
  "$root/usr/bin/debconf"* "$root/usr/share/perl5" "$root/etc/debconf.conf"
EOF
echo "bases.sh: $RUNTIME_IMAGE from Debian 12 packages"
mmdebstrap --quiet --variant=extract \
  --include=base-files,netbase,tzdata,ca-certificates,libc6,libgcc-s1,libssl3,libstdc++6,libgomp1 \
  --customize-hook="sh $work/runtime-hook.sh \"\$1\"" \
  bookworm "$work/runtime.tar" "${sources[@]}"
"${podman[@]}" import --quiet \
  --change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
  --change 'ENV SSL_CERT_FILE=/etc/ssl/certs/ca-certificates.crt' \
  --change 'USER 65532:65532' --change 'WORKDIR /home/nonroot' \
  "$work/runtime.tar" "$RUNTIME_IMAGE" >/dev/null
rm -f "$work/runtime.tar"

# --- builder: Debian 12 with gcc and this machine's Rust toolchain ----------------------
sysroot="$(rustc --print sysroot)" || die "rustc not found: the builder base copies this machine's toolchain"
have="$(rustc --version | cut -d' ' -f2)"
[ "$have" = "$RUST_VERSION" ] || die "this machine's rustc is $have, images.env wants $RUST_VERSION: change RUST_VERSION (and RUST_IMAGE)"
echo "bases.sh: $RUST_IMAGE from Debian 12 packages and rustc $have ($sysroot)"
mmdebstrap --quiet --variant=minbase --include=gcc,libc6-dev,ca-certificates "${slim[@]}" \
  --customize-hook="mkdir -p \"\$1/usr/local/rust\" \"\$1/usr/local/cargo/bin\"" \
  --customize-hook="cp -a $sysroot/bin $sysroot/lib \"\$1/usr/local/rust/\"" \
  --customize-hook="ln -s ../../rust/bin/cargo ../../rust/bin/rustc \"\$1/usr/local/cargo/bin/\"" \
  --customize-hook="rm -rf \"\$1\"/var/cache/apt/* \"\$1\"/var/lib/apt/lists/*" \
  bookworm "$work/rust.tar" "${sources[@]}"
"${podman[@]}" import --quiet \
  --change 'ENV PATH=/usr/local/cargo/bin:/usr/local/rust/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
  --change 'ENV CARGO_HOME=/usr/local/cargo' --change "ENV RUST_VERSION=$have" \
  "$work/rust.tar" "$RUST_IMAGE" >/dev/null
"${podman[@]}" images --format '{{.Repository}}:{{.Tag}} {{.Size}}' | grep -F -e "$RUNTIME_IMAGE" -e "$RUST_IMAGE" || true
