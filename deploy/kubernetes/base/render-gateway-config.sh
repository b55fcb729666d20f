#!/bin/sh
# Runs in the gateway pod's init container: writes the agent's config to $OUT with this
# node's endpoints first (they differ per node, so they cannot live in the ConfigMap), then
# the shared config from the ConfigMap. Top-level keys must come before the [vault] table,
# hence endpoints first.
#
# Variables: HOST_IP (downward API status.hostIP), WG_PORT (default 51820),
# PRIVATE_KIND (private or interconnect: how other sites reach HOST_IP; default private),
# PUBLIC_IP_FROM (none, aws, gcp or azure: the cloud metadata service that knows this
# node's public address; default none), IN (default /etc/strait/agent.toml),
# OUT (default /run/strait/agent.toml).
# With BGP (components/gateway-bgp): BGP_IN, a [bgp] table appended after the shared config
# with every @HOST_IP@ replaced by HOST_IP (the router id), and BIRD_CONFIG, where a
# minimal BIRD configuration is written so the BIRD sidecar starts at once; the agent
# replaces it with the real one and reloads BIRD.
set -eu

IN="${IN:-/etc/strait/agent.toml}"
OUT="${OUT:-/run/strait/agent.toml}"
WG_PORT="${WG_PORT:-51820}"
PRIVATE_KIND="${PRIVATE_KIND:-private}"
PUBLIC_IP_FROM="${PUBLIC_IP_FROM:-none}"
# The metadata endpoint (the same link-local address on AWS, GCP and Azure); a variable for tests.
IMDS="${IMDS:-http://169.254.169.254}"

fail() {
  echo "render-gateway-config: $*" >&2
  exit 1
}

[ -n "${HOST_IP:-}" ] || fail "HOST_IP is not set (set it from status.hostIP)"
case "$PRIVATE_KIND" in
  private | interconnect) ;;
  *) fail "PRIVATE_KIND is '$PRIVATE_KIND'; use private or interconnect" ;;
esac
[ -r "$IN" ] || fail "cannot read $IN"
if [ -n "${BGP_IN:-}" ]; then
  [ -r "$BGP_IN" ] || fail "cannot read BGP_IN=$BGP_IN"
  grep -q '^\[bgp\]' "$BGP_IN" || fail "$BGP_IN has no [bgp] table"
fi
if [ -n "${BIRD_CONFIG:-}" ]; then
  case "$HOST_IP" in
    *:*) fail "HOST_IP $HOST_IP is IPv6: BGP's router id is an IPv4 address (set router-id in $BGP_IN)" ;;
  esac
fi

# address:port, with brackets for IPv6.
addr() {
  case "$1" in
    *:*) printf '[%s]:%s' "$1" "$WG_PORT" ;;
    *) printf '%s:%s' "$1" "$WG_PORT" ;;
  esac
}

fetch() {
  curl --fail --silent --show-error --max-time 5 --retry 3 "$@"
}

public_ip() {
  case "$PUBLIC_IP_FROM" in
    none) ;;
    aws)
      # IMDSv2: a session token first (hostNetwork pods are one hop from IMDS).
      token=$(fetch -X PUT -H 'X-aws-ec2-metadata-token-ttl-seconds: 60' \
        "$IMDS/latest/api/token") || fail "AWS IMDS unreachable"
      fetch -H "X-aws-ec2-metadata-token: $token" \
        "$IMDS/latest/meta-data/public-ipv4" ||
        fail "this EC2 instance has no public IPv4 address (give gateway nodes one, or set PUBLIC_IP_FROM=none)"
      ;;
    gcp)
      fetch -H 'Metadata-Flavor: Google' \
        "$IMDS/computeMetadata/v1/instance/network-interfaces/0/access-configs/0/external-ip" ||
        fail "this GCE instance has no external IP (give gateway nodes one, or set PUBLIC_IP_FROM=none)"
      ;;
    azure)
      fetch -H 'Metadata: true' \
        "$IMDS/metadata/instance/network/interface/0/ipv4/ipAddress/0/publicIpAddress?api-version=2021-02-01&format=text" ||
        fail "Azure IMDS unreachable"
      ;;
    *) fail "PUBLIC_IP_FROM is '$PUBLIC_IP_FROM'; use none, aws, gcp or azure" ;;
  esac
}

public="$(public_ip)"
if [ "$PUBLIC_IP_FROM" != none ]; then
  case "$public" in
    "" | *[!0-9a-fA-F.:]*) fail "the $PUBLIC_IP_FROM metadata service returned '$public', not an IP address" ;;
  esac
fi

tmp="$OUT.tmp"
{
  echo "# Written by render-gateway-config.sh at pod start from $IN; edit the ConfigMap, not this file."
  echo "endpoints = ["
  printf '  { address = "%s", kind = "%s" },\n' "$(addr "$HOST_IP")" "$PRIVATE_KIND"
  if [ -n "$public" ]; then
    printf '  { address = "%s", kind = "public" },\n' "$(addr "$public")"
  fi
  echo "]"
  echo
  cat "$IN"
  if [ -n "${BGP_IN:-}" ]; then
    echo
    sed "s/@HOST_IP@/$HOST_IP/g" "$BGP_IN"
  fi
} >"$tmp"
mv "$tmp" "$OUT"
if [ -n "${BIRD_CONFIG:-}" ]; then
  printf 'router id %s;\nprotocol device { scan time 10; }\n' "$HOST_IP" >"$BIRD_CONFIG.tmp"
  mv "$BIRD_CONFIG.tmp" "$BIRD_CONFIG"
fi
echo "render-gateway-config: wrote $OUT (private $(addr "$HOST_IP"), public ${public:-none})"
