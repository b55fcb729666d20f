#!/usr/bin/env bash
# Checks that vendor/quinn is quinn 0.11.12 as published on crates.io (sha256 checked) with
# exactly vendor/quinn.patch applied, and nothing else changed. See vendor/README.md.
set -euo pipefail
cd "$(dirname "$0")"
name=quinn
version=0.11.12
sha256=4051e23e9185c255a7e33ef59cdbca87a22d359052eecd22fc6b901fb37d9d11
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
crate=$(find "${CARGO_HOME:-$HOME/.cargo}/registry/cache" -name "$name-$version.crate" 2>/dev/null | head -n 1 || true)
if [ -z "$crate" ]; then
  crate="$tmp/$name-$version.crate"
  curl -sSfL --retry 3 -o "$crate" "https://static.crates.io/crates/$name/$name-$version.crate"
fi
if ! echo "$sha256  $crate" | sha256sum -c --quiet; then
  echo "vendor/check.sh: $crate is not the published $name $version (sha256 differs)" >&2
  exit 1
fi
tar xzf "$crate" -C "$tmp"
(cd "$tmp/$name-$version" && git apply -p1 "$OLDPWD/quinn.patch")
if ! diff -r "$tmp/$name-$version" "$name"; then
  echo "vendor/check.sh: vendor/$name differs from $name $version + quinn.patch (above); put every change in quinn.patch" >&2
  exit 1
fi
echo "vendor/$name: $name $version from crates.io with quinn.patch applied, nothing else changed"
