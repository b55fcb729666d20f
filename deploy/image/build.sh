#!/usr/bin/env bash
# Builds Strait's container image from the repository: deploy/image/build.sh [options]
#
#   --tag IMAGE   name of the image (default localhost/strait:<version>, the version from
#                 Cargo.toml's [workspace.package])
#   --bins DIR    also export the image's three binaries to DIR (for
#                 deploy/release/archive.sh --bins DIR: one compile for both)
#
# The base images come from a registry, or from deploy/image/bases.sh where none is
# reachable. Labels: org.opencontainers.image.{version,revision,source,created}; created
# is the commit's time, so two builds of one commit get the same labels.
# Environment: PODMAN (default "podman"); CA_BUNDLE: a PEM file that replaces the builder's
# CA certificates while cargo downloads crates (a machine behind a TLS-inspecting proxy,
# such as this project's CI, passes its own /etc/ssl/certs/ca-certificates.crt); it is
# mounted for the build only and is not in the image.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
repo="$(cd "$here/../.." && pwd)"
# shellcheck source=/dev/null
. "$here/images.env"
read -r -a podman <<<"${PODMAN:-podman}"
die() {
  echo "build.sh: $*" >&2
  exit 1
}
usage() {
  sed -n '2,17p' "$0" | sed 's/^# \{0,1\}//'
  exit "${1:-2}"
}

# [workspace.package] version and repository from Cargo.toml.
workspace_key() {
  awk -v key="$1" '/^\[/ { s = ($0 == "[workspace.package]") } s && $1 == key { gsub(/"/, "", $3); print $3; exit }' "$repo/Cargo.toml"
}
version="$(workspace_key version)"
source_url="$(workspace_key repository)"
[ -n "$version" ] || die "no version in $repo/Cargo.toml [workspace.package]"
tag="localhost/strait:$version"
bins=""
while [ $# -gt 0 ]; do
  case "$1" in
    --tag)
      [ $# -ge 2 ] || die "--tag needs an image name"
      tag="$2"
      shift
      ;;
    --bins)
      [ $# -ge 2 ] || die "--bins needs a directory"
      bins="$2"
      shift
      ;;
    -h | --help) usage 0 ;;
    *) die "unknown argument $1 (see --help)" ;;
  esac
  shift
done

revision="$(git -C "$repo" rev-parse HEAD 2>/dev/null || echo unknown)"
created="$(TZ=UTC git -C "$repo" log -1 --format=%cd --date=format-local:%Y-%m-%dT%H:%M:%SZ 2>/dev/null || echo 1970-01-01T00:00:00Z)"
args=(build --file "$here/Dockerfile"
  --build-arg "RUST_IMAGE=$RUST_IMAGE" --build-arg "RUNTIME_IMAGE=$RUNTIME_IMAGE"
  --build-arg "VERSION=$version" --build-arg "REVISION=$revision"
  --build-arg "SOURCE=$source_url" --build-arg "CREATED=$created")
if [ -n "${CA_BUNDLE:-}" ]; then
  [ -r "$CA_BUNDLE" ] || die "CA_BUNDLE=$CA_BUNDLE: no such readable file"
  args+=(--volume "$CA_BUNDLE:/etc/ssl/certs/ca-certificates.crt:ro")
fi
for image in "$RUST_IMAGE" "$RUNTIME_IMAGE"; do
  if ! "${podman[@]}" image exists "$image"; then
    echo "build.sh: $image is not here; podman will pull it (without a registry: bash deploy/image/bases.sh)"
  fi
done
echo "build.sh: building $tag (version $version, revision $revision)"
"${podman[@]}" "${args[@]}" --tag "$tag" "$repo"
if [ -n "$bins" ]; then
  mkdir -p "$bins"
  # Same stages, cached: only the export runs.
  "${podman[@]}" "${args[@]}" --target bins --output "type=local,dest=$bins" "$repo"
  ls -l "$bins"
fi
"${podman[@]}" image inspect "$tag" --format 'build.sh: {{.Id}} {{.Size}} bytes, labels {{.Labels}}'
