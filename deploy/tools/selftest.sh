#!/usr/bin/env bash
# Proves deploy/check.sh can fail: for each breakage below, a copy of deploy/ is broken in
# that one way and check.sh must fail on it, with a FAIL line from the check meant to catch
# it. First the unbroken copy must pass the same sections.
#
#   bash deploy/tools/selftest.sh            # all cases
#   bash deploy/tools/selftest.sh NAME...    # some
#   bash deploy/tools/selftest.sh --after-check [NAME...]   # check.sh just passed on deploy/
#
# STRAIT_BIN_DIR: strait-agent and strait-coordinator for check-config (built, debug, if
# unset). Prints "ok - ..." / "not ok - ..." per case and "N passed, N failed" last.
set -euo pipefail

deploy="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
repo="$(cd "$deploy/.." && pwd)"
if [ -z "${STRAIT_BIN_DIR:-}" ]; then
  (cd "$repo" && cargo build --quiet --locked -p strait-agent -p strait-coordinator)
  STRAIT_BIN_DIR="$(cd "$repo" && cargo metadata --format-version 1 --no-deps |
    python3 -c 'import json,sys; print(json.load(sys.stdin)["target_directory"])')/debug"
fi
export STRAIT_BIN_DIR

# NAME|SECTIONS|FILE (under deploy/)|FROM|TO|what check.sh must print (a regex: the check's
# FAIL line, naming the thing that is wrong)
cases=(
  "daemonset-selector|k8s|kubernetes/base/gateway-daemonset.yaml|  selector:
    matchLabels:
      app.kubernetes.io/name: strait-agent
      app.kubernetes.io/component: gateway|  selector:
    matchLabels:
      app.kubernetes.io/name: strait-agent
      app.kubernetes.io/component: gateways|FAIL .*DaemonSet/strait-gateway: spec.selector .* does not match its pod labels"
  "volumemount-without-volume|k8s|kubernetes/base/member-daemonset.yaml|            - name: tun
              mountPath: /dev/net/tun|            - name: tun-device
              mountPath: /dev/net/tun|FAIL .*DaemonSet/strait-member: container agent mounts volume .tun-device., which the pod does not declare"
  "configmap-name-typo|k8s|kubernetes/base/gateway-daemonset.yaml|            name: strait-agent-scripts|            name: strait-agent-script|FAIL .*DaemonSet/strait-gateway: volume uses ConfigMap .strait-agent-script., which is not in the rendered manifests"
  "unknown-strait-variable|configs|kubernetes/base/gateway-daemonset.yaml|            - name: STRAIT_VAULT_KUBERNETES_ROLE|            - name: STRAIT_VAULT_KUBERNETES_ROEL|^FAIL  strait-agent check-config \\+ pod env +overlays_eks strait-gateway"
  "listen-port-fifty|configs|kubernetes/overlays/gke/agent.toml|listen-port = 51820|listen-port = \"fifty\"|^FAIL  strait-agent check-config \\+ pod env +overlays_gke strait-member"
  "listen-port-fifty-vm|configs|systemd/agent.example.toml|listen-port = 51820|listen-port = \"fifty\"|^FAIL  strait-agent check-config +deploy/systemd/agent.example.toml"
  "service-selector|k8s|kubernetes/coordinator/services.yaml|  selector:
    app.kubernetes.io/name: strait-coordinator
  ports:
    - name: quic|  selector:
    app.kubernetes.io/name: strait-coordinatr
  ports:
    - name: quic|FAIL .*Service/strait-coordinator: selector .* matches no pod template"
  "service-targetport|k8s|kubernetes/coordinator/services.yaml|      targetPort: metrics|      targetPort: metrix|FAIL .*Service/strait-coordinator-headless: port metrics targets .metrix., which no container"
  "terraform-undefined-variable|tf|terraform/modules/gcp-gateway/main.tf|ports    = [tostring(var.wireguard_port)]|ports    = [tostring(var.wireguard_prot)]|^FAIL  HCL parse \\+ references declared +deploy/terraform/modules/gcp-gateway"
  "terraform-undefined-variable-validate|tf|terraform/modules/aws-gateway/main.tf|  from_port         = var.wireguard_port|  from_port         = var.wireguard_prot|^FAIL  terraform init \\+ validate +deploy/terraform/modules/aws-gateway$"
  "cloud-init-renamed-key|cloudinit|systemd/cloud-init.yaml|write_files:|write_file:|^FAIL  cloud-init schema \\+ known keys +deploy/systemd/cloud-init.yaml"
  "cloud-init-renamed-key-terraform|cloudinit|terraform/templates/cloud-init.yaml.tftpl|  write_files = concat(|  write_file = concat(|^FAIL  cloud-init schema \\+ known keys +\\(rendered\\) tf-cloud-init.yaml"
  "bgp-router-id|configs|kubernetes/overlays/eks-bgp/bgp.toml|router-id = \"@HOST_IP@\"|router-id = \"10.10.1\"|^FAIL  strait-agent check-config \\+ pod env +overlays_eks-bgp strait-gateway"
  "bird-unit-key|systemd|systemd/strait-bird.service|RestartSec=2s|RestartSecs=2s|^FAIL  systemd-analyze verify +deploy/systemd/strait-bird.service"
  "route-server-peer-without-bfd|tf|terraform/modules/aws-site/main.tf|peer_liveness_detection = \"bfd\"|peer_liveness_detection = \"bgp-keepalive\"|^FAIL  terraform test \\(mock providers: plan\\) +deploy/terraform/modules/aws-site$"
)

# --after-check: check.sh has just passed on this deploy/ (CI runs it first), so the unbroken
# copy is not checked again.
after_check=0
if [ "${1:-}" = --after-check ]; then
  after_check=1
  shift
fi
selected=("$@")
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
passed=0
failed=0

# copy_deploy DIR: a copy of deploy/ in DIR/deploy (with no terraform state or caches).
copy_deploy() {
  mkdir -p "$1"
  cp -r "$deploy" "$1/deploy"
  find "$1/deploy" -name .terraform -prune -exec rm -rf {} + 2>/dev/null || true
}

sections=""
for c in "${cases[@]}"; do
  IFS='|' read -r name secs _ <<<"$c"
  if [ ${#selected[@]} -gt 0 ] && [[ " ${selected[*]} " != *" $name "* ]]; then continue; fi
  [[ ",$sections," == *",$secs,"* ]] || sections="${sections:+$sections,}$secs"
done
[ -n "$sections" ] || {
  echo "selftest.sh: no case named ${selected[*]}" >&2
  exit 2
}

if [ "$after_check" = 1 ]; then
  echo "# the unbroken deploy/ is not checked again (--after-check: check.sh just passed on it)"
else
  copy_deploy "$work/clean"
  if STRAIT_CHECK_ONLY="$sections" bash "$work/clean/deploy/check.sh" >"$work/clean.log" 2>&1; then
    echo "ok - the unbroken copy passes sections $sections"
    passed=$((passed + 1))
  else
    echo "not ok - the unbroken copy fails sections $sections:"
    grep -E '^(FAIL|check.sh)' "$work/clean.log" | sed 's/^/  /'
    failed=$((failed + 1))
  fi
fi

# run_case CASE: breaks a copy of deploy/ in that one way and runs check.sh on it; writes the
# result line ("ok - ..." / "not ok - ...", then any detail) to $work/NAME.result.
run_case() {
  local c="$1" name rest secs file from to expect dir start tfdir=""
  name="${c%%|*}"
  rest="${c#*|}"
  secs="${rest%%|*}"
  rest="${rest#*|}"
  file="${rest%%|*}"
  rest="${rest#*|}"
  from="${rest%%|*}"
  rest="${rest#*|}"
  to="${rest%%|*}"
  expect="${rest#*|}"
  dir="$work/$name"
  copy_deploy "$dir"
  # Exactly one occurrence is changed; a breakage whose text is gone fails here, not silently.
  if ! python3 - "$dir/deploy/$file" "$from" "$to" <<'PY'; then
import sys
path, old, new = sys.argv[1:]
text = open(path).read()
if old not in text:
    sys.exit(f"selftest: {old!r} not found in {path}: update the case")
open(path, "w").write(text.replace(old, new, 1))
PY
    echo "not ok - $name: cannot apply the breakage to deploy/$file" >"$dir.result"
    return
  fi
  # A broken Terraform module is checked alone (the others' validate takes most of a minute).
  if [ "$secs" = tf ] && [[ "$file" == terraform/modules/* ]]; then
    tfdir="$(cut -d/ -f1-3 <<<"$file")"
  fi
  start=$(date +%s)
  if STRAIT_CHECK_ONLY="$secs" STRAIT_CHECK_TF_DIR="$tfdir" bash "$dir/deploy/check.sh" >"$dir.log" 2>&1; then
    echo "not ok - $name: check.sh passed with deploy/$file broken" >"$dir.result"
  elif grep -qE "$expect" "$dir.log"; then
    echo "ok - $name: check.sh failed: $(grep -E "$expect" "$dir.log" | head -n 1 | tr -s ' ' | cut -c1-150) ($(($(date +%s) - start)) s)" >"$dir.result"
  else
    {
      echo "not ok - $name: check.sh failed, but not with /$expect/:"
      grep -E '^FAIL' "$dir.log" | sed 's/^/  /'
    } >"$dir.result"
  fi
}

# The cases run two at a time (each is a few processes waiting on one another; two keep
# both cores of a small CI machine busy), and report in the order above.
jobs_max="${STRAIT_SELFTEST_JOBS:-2}"
names=()
for c in "${cases[@]}"; do
  name="${c%%|*}"
  if [ ${#selected[@]} -gt 0 ] && [[ " ${selected[*]} " != *" $name "* ]]; then continue; fi
  names+=("$name")
  while [ "$(jobs -rp | wc -l)" -ge "$jobs_max" ]; do wait -n || true; done
  run_case "$c" &
done
wait
for name in "${names[@]}"; do
  if [ -f "$work/$name.result" ]; then
    cat "$work/$name.result"
    if head -n 1 "$work/$name.result" | grep -q '^ok - '; then
      passed=$((passed + 1))
    else
      failed=$((failed + 1))
    fi
  else
    echo "not ok - $name: the case left no result (see above)"
    failed=$((failed + 1))
  fi
done
echo "$passed passed, $failed failed"
[ "$failed" -eq 0 ]
