#!/usr/bin/env bash
# Offline checks of Strait's deployment material: bash deploy/check.sh (from anywhere).
#
# What it checks (a summary of which check ran on what is printed at the end):
#   - Kubernetes: every kustomization under deploy/kubernetes is rendered with
#     `kubectl kustomize` and validated against the Kubernetes JSON schemas (strict: unknown
#     fields fail) of each version in KUBE_VERSIONS, with kubernetes-validate, which bundles
#     its schemas (no network); then what schemas miss (deploycheck.py k8s-semantics):
#     selectors that match no pod, volumeMounts naming no volume, ConfigMaps and Secrets that
#     do not exist, Services/monitors/NetworkPolicies that select nothing or name a port no
#     container has. The gateway config script is run and its output checked.
#   - Configs: `strait-agent check-config` / `strait-coordinator check-config` (types,
#     values, cross-field rules, unknown STRAIT_* variables) on every config deploy/ ships
#     or renders: the systemd examples, the one in cloud-init.yaml, Terraform's rendered
#     agent.toml, and each Strait container of every overlay with the environment its
#     manifest gives it (a gateway's config as its init container renders it).
#   - Terraform: `terraform fmt -check -recursive`; for each module/example whose providers
#     are all in the local provider mirror (never downloaded): `terraform init
#     -backend=false`, `terraform validate` and, where it has tests, `terraform test`
#     (mock providers: plans without credentials); for every directory: an HCL parse, every
#     var./local./module. reference declared, module calls against the modules' variables
#     and outputs. The shared templates are rendered by terraform and their output checked.
#   - cloud-init: Debian 12's cloud-init `schema` on deploy/systemd/cloud-init.yaml and the
#     one Terraform renders, and every top-level key known to cloud-init's schema.
#   - systemd: `systemd-analyze verify` (any warning fails) and `systemd-analyze security
#     --offline` (exposure at most SYSTEMD_MAX_EXPOSURE) on the units (the agent with its
#     BGP drop-in, the coordinator, strait-bird); shellcheck on every shell script of
#     deploy/.
#   - Grafana: the dashboard is valid JSON (python3 -m json.tool) with unique panel ids.
# deploy/tools/selftest.sh breaks a copy of deploy/ in each way these checks must catch and
# expects this script to fail each time.
#
# Needs, on a fresh Debian 12 machine:
#   apt-get install -y python3 python3-venv systemd shellcheck
#   kubectl >= 1.27 (built-in kustomize v5) and terraform >= 1.7 on PATH (neither is in
#   Debian's archive; this project's machine image has both)
#   a Terraform provider mirror (filesystem_mirror layout) at STRAIT_TF_MIRROR, default
#   /opt/tf-plugins (this image: hashicorp/aws 5.100.0); without a provider, a directory
#   gets the offline checks only, reported as SKIP for validate/test
#   cargo (strait-agent and strait-coordinator are built, debug, unless STRAIT_BIN_DIR
#   names a directory holding them)
#   PyPI once: kubernetes-validate, python-hcl2 and cloud-init's Python dependencies go
#   into a virtualenv at STRAIT_CHECK_VENV (default ~/.cache/strait-deploy-check/venv);
#   Debian once: `apt-get download cloud-init` (22.4), unpacked beside it, not installed.
# STRAIT_CHECK_ONLY=k8s,configs,tf,cloudinit,systemd,grafana runs only those sections.
# STRAIT_CHECK_TF_DIR=terraform/modules/NAME checks only that Terraform directory and those below it.
#
# Exit status: 0 if every check passed (skips are allowed and reported), 1 otherwise.
set -euo pipefail

deploy="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
repo="$(cd "$deploy/.." && pwd)"
KUBE_VERSIONS="${KUBE_VERSIONS:-1.30.0 1.34.0}"
SYSTEMD_MAX_EXPOSURE="${SYSTEMD_MAX_EXPOSURE:-3.0}"
mirror="${STRAIT_TF_MIRROR:-/opt/tf-plugins}"
venv="${STRAIT_CHECK_VENV:-${XDG_CACHE_HOME:-$HOME/.cache}/strait-deploy-check/venv}"
KV_VERSION=1.37.0
HCL2_VERSION=8.1.4
# cloud-init's own imports for `schema` (Debian 12 ships them as python3-* packages).
CLOUD_INIT_PY=(jsonschema==4.26.0 PyYAML==6.0.4 Jinja2==3.1.6 configobj==5.0.9 requests==2.34.2 jsonpatch==1.48)
only="${STRAIT_CHECK_ONLY:-k8s,configs,tf,cloudinit,systemd,grafana}"
want() { [[ ",$only," == *",$1,"* ]]; }

work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
# Terraform installs providers from the mirror only: never from the network.
cat >"$work/terraformrc" <<EOF
provider_installation {
  filesystem_mirror {
    path    = "$mirror"
    include = ["registry.terraform.io/*/*"]
  }
}
EOF
export TF_CLI_CONFIG_FILE="$work/terraformrc" TF_IN_AUTOMATION=1 CHECKPOINT_DISABLE=1
summary=()
failed=0
section() { printf '\n== %s\n' "$*"; }
record() { # STATUS CHECK TARGET
  summary+=("$(printf '%-5s %-40s %s' "$1" "$2" "${3#"$repo"/}")")
  [ "$1" != FAIL ] || failed=1
}
rel() { echo "${1#"$repo"/}"; }
need() {
  command -v "$1" >/dev/null || {
    echo "check.sh: $1 not found: $2" >&2
    exit 1
  }
}

need kubectl "install kubectl >= 1.27 (it renders the kustomizations)"
need terraform "install terraform >= 1.5"
need python3 "apt-get install python3 python3-venv"

section "tools"
pins=("kubernetes-validate==$KV_VERSION" "python-hcl2==$HCL2_VERSION" "${CLOUD_INIT_PY[@]}")
if ! "$venv/bin/python" - "${pins[@]}" 2>/dev/null <<'PY'; then
import sys, importlib.metadata as m
sys.exit(0 if all(m.version(p.split("==")[0]) == p.split("==")[1] for p in sys.argv[1:]) else 1)
PY
  echo "installing ${pins[*]} into $venv (PyPI)"
  python3 -m venv "$venv" || {
    echo "check.sh: python3 -m venv failed: apt-get install python3-venv" >&2
    exit 1
  }
  "$venv/bin/pip" install --quiet --disable-pip-version-check "${pins[@]}"
fi
# cloud-init from Debian 12, unpacked beside the virtualenv (not installed on this host).
cloudinit="$(dirname "$venv")/cloud-init"
if want cloudinit && [ ! -d "$cloudinit/usr/lib/python3/dist-packages/cloudinit" ]; then
  echo "unpacking Debian's cloud-init into $cloudinit (apt-get download)"
  mkdir -p "$cloudinit.deb"
  # Stale package lists are the usual cause of a failure: refresh them once (as root).
  (cd "$cloudinit.deb" && { apt-get download cloud-init >/dev/null 2>&1 ||
    { [ "$(id -u)" -eq 0 ] && apt-get update -qq && apt-get download cloud-init >/dev/null 2>&1; }; }) || {
    echo "check.sh: apt-get download cloud-init failed: run apt-get update (Debian's mirror must be reachable)" >&2
    exit 1
  }
  dpkg -x "$cloudinit.deb"/cloud-init_*.deb "$cloudinit"
fi
# The binaries whose check-config judges every config.
bindir=""
if want configs; then
  if [ -n "${STRAIT_BIN_DIR:-}" ]; then
    bindir="$STRAIT_BIN_DIR"
  else
    echo "building strait-agent and strait-coordinator (debug) for check-config"
    (cd "$repo" && cargo build --quiet --locked -p strait-agent -p strait-coordinator)
    bindir="$(cd "$repo" && cargo metadata --format-version 1 --no-deps |
      python3 -c 'import json,sys; print(json.load(sys.stdin)["target_directory"])')/debug"
  fi
  for b in strait-agent strait-coordinator; do
    [ -x "$bindir/$b" ] || {
      echo "check.sh: $bindir/$b not found (STRAIT_BIN_DIR)" >&2
      exit 1
    }
  done
fi
py="$venv/bin/python"
tool="$py $deploy/tools/deploycheck.py"
echo "kubectl:             $(kubectl version --client 2>/dev/null | tr '\n' ' ')"
echo "terraform:           $(terraform version 2>/dev/null | head -n 1)"
echo "python:              $("$py" --version)"
echo "kubernetes-validate: $("$venv/bin/kubernetes-validate" --version 2>&1 | tail -n 1)"
echo "python-hcl2:         $("$py" -c 'import importlib.metadata as m; print(m.version("python-hcl2"))')"
if command -v systemd-analyze >/dev/null; then
  echo "systemd-analyze:     $(systemd-analyze --version | head -n 1)"
fi
if command -v shellcheck >/dev/null; then
  echo "shellcheck:          $(shellcheck --version | sed -n 's/^version: //p')"
fi
echo "provider mirror:     $mirror"
[ -z "$bindir" ] || echo "check-config with:   $bindir ($("$bindir/strait-agent" --version))"
if [ -d "$cloudinit" ]; then
  echo "cloud-init:          $(PYTHONPATH="$cloudinit/usr/lib/python3/dist-packages" "$py" -c \
    'from cloudinit import version; print(version.version_string())' 2>/dev/null)"
fi

# check_config BIN FILE [ENVFILE]: BIN check-config --config FILE in an environment of
# ENVFILE's NAME=VALUE lines only (a container's), or of nothing but PATH.
check_config() {
  local envs=() out status
  [ -z "${3:-}" ] || mapfile -t envs <"$3"
  out="$(env -i PATH="$PATH" ${envs[@]+"${envs[@]}"} "$bindir/$1" check-config --config "$2" 2>&1)" && status=0 || status=$?
  grep -v '^note: ' <<<"$out" || true
  return "$status"
}

# --- Kubernetes -------------------------------------------------------------------------
mapfile -t kdirs < <(find "$deploy/kubernetes" -name kustomization.yaml -printf '%h\n' | sort)
rendered=()
if want k8s || want configs; then
  section "Kubernetes: kubectl kustomize + kubernetes-validate --strict (${KUBE_VERSIONS// /, })"
  for dir in "${kdirs[@]}"; do
    # Components are rendered as part of the overlays that use them.
    grep -q '^kind: Component' "$dir/kustomization.yaml" && continue
    name="$(rel "$dir")"
    out="$work/$(echo "$name" | tr / _).yaml"
    if ! kubectl kustomize "$dir" >"$out" 2>"$out.err"; then
      cat "$out.err"
      record FAIL "kubectl kustomize" "$name"
      continue
    fi
    rendered+=("$out")
    count="$(grep -c '^kind:' "$out" || true)"
    echo "$name: rendered $count resources"
    want k8s || continue
    # The Prometheus operator's kinds have no schema in kubernetes-validate: the semantic
    # checks below look at them.
    "$py" - "$out" "$out.core" <<'PY'
import sys, yaml
docs = [d for d in yaml.safe_load_all(open(sys.argv[1])) if d]
core = [d for d in docs if not d.get("apiVersion", "").startswith("monitoring.coreos.com/")]
yaml.safe_dump_all(core, open(sys.argv[2], "w"), sort_keys=False)
PY
    for v in $KUBE_VERSIONS; do
      if "$venv/bin/kubernetes-validate" --strict --quiet -k "$v" "$out.core"; then
        record PASS "kubernetes-validate --strict $v" "$name ($count resources)"
      else
        record FAIL "kubernetes-validate --strict $v" "$name"
      fi
    done
  done
fi
if want k8s; then
  section "Kubernetes: selectors, volumes, references, ports (deploycheck.py k8s-semantics)"
  if $tool k8s-semantics "${rendered[@]}"; then
    record PASS "k8s-semantics" "${#rendered[@]} renderings"
  else
    record FAIL "k8s-semantics" "see above"
  fi
fi

script="$deploy/kubernetes/base/render-gateway-config.sh"
if want k8s; then
  section "Kubernetes: render-gateway-config.sh"
  if sh -n "$script" &&
    HOST_IP=10.10.1.23 PUBLIC_IP_FROM=none IN="$deploy/kubernetes/base/agent.toml" \
      OUT="$work/rendered-gateway.toml" sh "$script" &&
    HOST_IP=fd00::23 PRIVATE_KIND=interconnect IN="$deploy/kubernetes/base/agent.toml" \
      OUT="$work/rendered-gateway6.toml" sh "$script" &&
    HOST_IP=10.10.1.23 IN="$deploy/kubernetes/base/agent.toml" OUT="$work/rendered-bgp.toml" \
      BGP_IN="$deploy/kubernetes/overlays/eks-bgp/bgp.toml" BIRD_CONFIG="$work/bird.conf" sh "$script" &&
    grep -qx 'router-id = "10.10.1.23"' "$work/rendered-bgp.toml" && grep -qx 'router id 10.10.1.23;' "$work/bird.conf" &&
    ! HOST_IP=fd00::23 IN="$deploy/kubernetes/base/agent.toml" OUT="$work/never.toml" \
      BGP_IN="$deploy/kubernetes/overlays/eks-bgp/bgp.toml" BIRD_CONFIG="$work/bird6.conf" sh "$script" 2>/dev/null &&
    ! HOST_IP=10.10.1.23 PUBLIC_IP_FROM=mars IN="$deploy/kubernetes/base/agent.toml" \
      OUT="$work/never.toml" sh "$script" 2>/dev/null; then
    record PASS "sh -n + run (private, v6, BGP, bad input)" "$(rel "$script")"
  else
    record FAIL "sh -n + run" "$(rel "$script")"
  fi
fi

# --- Terraform --------------------------------------------------------------------------
if want tf || want configs || want cloudinit; then
  # Work on a copy: init writes .terraform/ and lock files. The modules read ../../../systemd.
  cp -r "$deploy" "$work/deploy"
fi
if want tf; then
  section "Terraform: fmt -check -recursive"
  if terraform fmt -check -recursive "$deploy/terraform" >/dev/null; then
    record PASS "terraform fmt -check -recursive" "deploy/terraform"
  else
    echo "unformatted (fix with: terraform fmt -recursive deploy/terraform):"
    terraform fmt -check -recursive -diff "$deploy/terraform" || true
    record FAIL "terraform fmt -check -recursive" "deploy/terraform"
  fi

  section "Terraform: init + validate + test where the providers are in the mirror; offline checks everywhere"
  mirrored() { # host/namespace/type
    [ -d "$mirror/$1" ] && [ -n "$(ls -A "$mirror/$1" 2>/dev/null)" ]
  }
  mapfile -t tfdirs < <(find "$deploy/terraform/modules" "$deploy/terraform/examples" -name '*.tf' -printf '%h\n' | sort -u)
  for dir in "${tfdirs[@]}"; do
    # STRAIT_CHECK_TF_DIR (a directory under deploy/, e.g. terraform/modules/aws-site): only it
    # and the directories below it (deploy/tools/selftest.sh breaks one module at a time).
    if [ -n "${STRAIT_CHECK_TF_DIR:-}" ] && [[ "$dir/" != "$deploy/${STRAIT_CHECK_TF_DIR%/}/"* ]]; then
      continue
    fi
    name="$(rel "$dir")"
    copy="$work/deploy/${dir#"$deploy"/}"
    if ! provs_out="$($tool tf-providers "$dir")"; then
      echo "$provs_out"
      record FAIL "HCL parse" "$name"
      continue
    fi
    if $tool hcl-parse "$dir"/*.tf >/dev/null && $tool tf-refs "$dir"; then
      record PASS "HCL parse + references declared" "$name"
    else
      $tool hcl-parse "$dir"/*.tf || true
      record FAIL "HCL parse + references declared" "$name"
    fi
    if grep -q '^module ' "$dir"/*.tf; then
      if $tool tf-wiring "$dir"; then
        record PASS "module calls vs variables/outputs" "$name"
      else
        record FAIL "module calls vs variables/outputs" "$name"
      fi
    fi
    mapfile -t provs <<<"$provs_out"
    missing=()
    for p in "${provs[@]}"; do mirrored "$p" || missing+=("$p"); done
    if [ ${#missing[@]} -ne 0 ] || [ ${#provs[@]} -eq 0 ]; then
      echo "$name: not in the mirror: ${missing[*]:-none declared}; no validate, no plan"
      record SKIP "terraform validate/test (provider not mirrored)" "$name: ${missing[*]:-}"
      continue
    fi
    echo "$name: providers ${provs[*]} are in the mirror: init + validate"
    if ! (cd "$copy" && terraform init -backend=false -input=false -no-color >"$work/init.log" 2>&1); then
      cat "$work/init.log"
      record FAIL "terraform init" "$name"
      continue
    fi
    if (cd "$copy" && terraform validate -no-color); then
      record PASS "terraform init + validate" "$name"
    else
      record FAIL "terraform init + validate" "$name"
      continue
    fi
    if compgen -G "$dir/tests/*.tftest.hcl" >/dev/null || compgen -G "$dir/*.tftest.hcl" >/dev/null; then
      if (cd "$copy" && terraform test -no-color); then
        record PASS "terraform test (mock providers: plan)" "$name"
      else
        record FAIL "terraform test (mock providers: plan)" "$name"
      fi
    fi
  done
fi

if want tf || want configs || want cloudinit; then
  section "Terraform: render the shared templates (agent.toml, cloud-init)"
  mkdir -p "$work/render"
  cat >"$work/render/main.tf" <<EOF
locals {
  templates = "$work/deploy/terraform/templates"
  agent_toml = templatefile("\${local.templates}/agent.toml.tftpl", {
    mesh = "prod", site = "aws-use1", node = "gw-1", coordinators = ["strait-coordinator.example.net:7443"],
    wireguard_port = 51820, mtu = 1380, metrics_listen = "10.10.0.10:9464", prefixes = ["10.10.0.0/16"],
    endpoints = [{ address = "10.10.0.10:51820", kind = "private" }, { address = "198.51.100.20:51820", kind = "public" }],
    extra = "fail-closed = true", priority = "standby",
    bgp = "[bgp]\nlocal-as = 65001\nrouter-id = \"10.10.0.10\"\nbird-config = \"/run/strait-bird/bird.conf\"\nbird-socket = \"/run/strait-bird/bird.ctl\"\nbirdc = \"/usr/sbin/birdc\"\n\n[[bgp.neighbors]]\naddress = \"10.10.0.4\"\nremote-as = 65000",
    vault = "[vault]\naddress = \"https://vault.example.net:8200\"\nrole = \"strait-gateway-aws-use1\"\nauth = \"aws\"\nauth-mount = \"aws\"\nauth-role = \"strait-gateway-aws-use1\"\nca-cert = \"/etc/ssl/strait/vault-ca.pem\""
  })
  cloud_init = templatefile("\${local.templates}/cloud-init.yaml.tftpl", {
    agent_toml = local.agent_toml, agent_secrets = { "join-token" = "s" }, vault_ca_cert = "-----BEGIN CERTIFICATE-----\n",
    packages = ["curl", "ca-certificates", "bird2"],
    release_url = "https://releases.example.net/strait.tar.gz", release_sha256 = "$(printf '0%.0s' {1..64})",
    install_files = { "install.sh" = file("$work/deploy/systemd/install.sh") }
  })
}
output "agent_toml" { value = local.agent_toml }
output "cloud_init" { value = local.cloud_init }
EOF
  if (cd "$work/render" && terraform init -backend=false -input=false -no-color >/dev/null &&
    terraform apply -auto-approve -input=false -no-color >/dev/null &&
    terraform output -raw agent_toml >"$work/tf-agent.toml" &&
    terraform output -raw cloud_init >"$work/tf-cloud-init.yaml") &&
    head -n 1 "$work/tf-cloud-init.yaml" | grep -qx '#cloud-config'; then
    record PASS "terraform templatefile render" "deploy/terraform/templates"
  else
    record FAIL "terraform templatefile render" "deploy/terraform/templates"
  fi
fi

# --- Configs: check-config on everything deploy/ ships or renders -----------------------
if want configs; then
  section "Configs: strait-agent / strait-coordinator check-config"
  # The agent.toml that deploy/systemd/cloud-init.yaml writes.
  "$py" - "$deploy/systemd/cloud-init.yaml" "$work/cloud-init-agent.toml" <<'PY'
import sys, yaml
doc = yaml.safe_load(open(sys.argv[1]))
f = next(f for f in doc["write_files"] if f["path"] == "/etc/strait/agent.toml")
open(sys.argv[2], "w").write(f["content"])
PY
  configs=("strait-agent:$deploy/systemd/agent.example.toml"
    "strait-agent:$deploy/systemd/agent-bgp.example.toml"
    "strait-agent:$work/cloud-init-agent.toml"
    "strait-coordinator:$deploy/systemd/coordinator.example.toml")
  [ ! -f "$work/tf-agent.toml" ] || configs+=("strait-agent:$work/tf-agent.toml")
  for c in "${configs[@]}"; do
    if check_config "${c%%:*}" "${c#*:}"; then
      record PASS "${c%%:*} check-config" "${c#*:}"
    else
      record FAIL "${c%%:*} check-config" "${c#*:}"
    fi
  done
  # Each Strait container of each rendering, with its manifest's environment. The base is
  # completed by the overlays (site, prefixes): it is checked through them.
  mkdir -p "$work/pods"
  for out in "${rendered[@]}"; do
    [ "$(basename "$out")" != deploy_kubernetes_base.yaml ] || continue
    $tool k8s-configs "$out" "$work/pods" || record FAIL "render the containers' configs" "$(basename "$out")"
  done
  for toml in "$work"/pods/*.toml; do
    [ -e "$toml" ] || continue
    n="${toml%.toml}"
    label="$(basename "$n" | sed 's/^deploy_kubernetes_//; s/__/ /g')"
    if check_config "$(cat "$n.bin")" "$toml" "$n.env"; then
      record PASS "$(cat "$n.bin") check-config + pod env" "$label"
    else
      echo "  (config: $toml; environment: $(tr '\n' ' ' <"$n.env"))"
      record FAIL "$(cat "$n.bin") check-config + pod env" "$label"
    fi
  done
fi

# --- cloud-init ---------------------------------------------------------------------------
if want cloudinit; then
  section "cloud-init: schema (Debian 12's cloud-init) and top-level keys"
  ci_schema="$cloudinit/usr/lib/python3/dist-packages/cloudinit/config/schemas/schema-cloud-config-v1.json"
  for f in "$deploy/systemd/cloud-init.yaml" "$work/tf-cloud-init.yaml"; do
    [ -f "$f" ] || continue
    if PYTHONPATH="$cloudinit/usr/lib/python3/dist-packages" "$py" -m cloudinit.cmd.main schema --config-file "$f" &&
      $tool cloud-config-keys "$ci_schema" "$f"; then
      record PASS "cloud-init schema + known keys" "$f"
    else
      record FAIL "cloud-init schema + known keys" "$f"
    fi
  done
fi

# --- systemd and shell --------------------------------------------------------------------
if want systemd; then
  section "systemd units, shell scripts"
  units=(strait-agent.service strait-coordinator.service strait-bird.service)
  if command -v systemd-analyze >/dev/null; then
    # verify wants the ExecStart binaries and the standard units: a scratch root holds the
    # units, stub binaries and a copy of the system's unit directory.
    root="$work/sdroot"
    mkdir -p "$root/etc/systemd/system" "$root/usr/local/bin" "$root/usr/sbin" "$root/usr/lib/systemd"
    cp -r /usr/lib/systemd/system "$root/usr/lib/systemd/"
    for u in "${units[@]}"; do cp "$deploy/systemd/$u" "$root/etc/systemd/system/"; done
    # The agent as install.sh --bgp leaves it: with its drop-in (verified with it).
    cp -r "$deploy/systemd/strait-agent.service.d" "$root/etc/systemd/system/"
    for b in local/bin/strait-agent local/bin/strait-coordinator sbin/bird sbin/birdc; do
      printf '#!/bin/sh\n' >"$root/usr/$b"
      chmod +x "$root/usr/$b"
    done
    for u in "${units[@]}"; do
      msgs="$(systemd-analyze verify --root="$root" "$u" 2>&1)" && status=0 || status=$?
      if [ "$status" -eq 0 ] && [ -z "$msgs" ]; then
        record PASS "systemd-analyze verify" "deploy/systemd/$u"
      else
        echo "$msgs"
        record FAIL "systemd-analyze verify" "deploy/systemd/$u"
      fi
      exposure="$(systemd-analyze security --offline=true --root="$root" "$u" 2>/dev/null |
        sed -n 's/.*Overall exposure level for [^:]*: \([0-9.]*\).*/\1/p')"
      if [ -n "$exposure" ] && awk -v e="$exposure" -v m="$SYSTEMD_MAX_EXPOSURE" 'BEGIN { exit !(e <= m) }'; then
        record PASS "systemd-analyze security <= $SYSTEMD_MAX_EXPOSURE" "deploy/systemd/$u (exposure $exposure)"
      else
        record FAIL "systemd-analyze security <= $SYSTEMD_MAX_EXPOSURE" "deploy/systemd/$u (exposure ${exposure:-unknown})"
      fi
    done
  else
    echo "systemd-analyze not found (apt-get install systemd): unit checks skipped"
    record SKIP "systemd-analyze verify/security" "deploy/systemd/*.service (no systemd-analyze)"
  fi
  mapfile -t scripts < <(find "$deploy" -name '*.sh' | sort)
  if command -v shellcheck >/dev/null; then
    bash_scripts=()
    for f in "${scripts[@]}"; do [ "$f" = "$script" ] || bash_scripts+=("$f"); done
    if shellcheck "${bash_scripts[@]}" && shellcheck -s sh "$script"; then
      record PASS "shellcheck" "${#scripts[@]} scripts in deploy/"
    else
      record FAIL "shellcheck" "deploy/**/*.sh"
    fi
  else
    record SKIP "shellcheck (not installed)" "deploy/**/*.sh"
  fi
fi

# --- Grafana ----------------------------------------------------------------------------
if want grafana; then
  section "Grafana dashboard"
  dash="$deploy/grafana/strait-dashboard.json"
  if python3 -m json.tool "$dash" >/dev/null &&
    python3 - "$dash" <<'EOF'; then
import json, sys
d = json.load(open(sys.argv[1]))
ids = []
def walk(panels):
    for p in panels:
        ids.append(p["id"])
        walk(p.get("panels", []))
walk(d["panels"])
assert len(ids) == len(set(ids)), f"duplicate panel ids {ids}"
assert d.get("uid") and d.get("title"), "dashboard needs uid and title"
print(f"{len(ids)} panels, uid {d['uid']}")
EOF
    record PASS "json.tool + panel ids" "$(rel "$dash")"
  else
    record FAIL "json.tool + panel ids" "$(rel "$dash")"
  fi
fi

section "summary"
printf '%s\n' "${summary[@]}" | sed "s|$work/|(rendered) |"
if [ "$failed" -ne 0 ]; then
  echo "check.sh: FAILED"
  exit 1
fi
echo "check.sh: all checks passed"
