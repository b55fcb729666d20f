#!/usr/bin/env bash
# Offline checks of Strait's deployment material: bash deploy/check.sh (from anywhere).
#
# What it checks (a summary of which check ran on what is printed at the end):
#   - Kubernetes: every kustomization under deploy/kubernetes is rendered with
#     `kubectl kustomize` and validated against the Kubernetes JSON schemas (strict: unknown
#     fields fail) of each version in KUBE_VERSIONS, with kubernetes-validate, which bundles
#     its schemas (no network); the gateway config script is run and its output checked.
#   - Config keys: every agent and coordinator TOML in deploy/ (and the rendered ones) uses
#     only keys that the Rust config structs have (read from the source; both binaries
#     refuse unknown keys), apart from the keys listed as ASSUMED in tools/deploycheck.py.
#   - Terraform: `terraform fmt -check -recursive`; `terraform init -backend=false` and
#     `terraform validate` for each module/example whose providers are all in the local
#     provider mirror (never downloaded); otherwise an HCL parse of each file (python-hcl2)
#     plus a check of its module calls against the modules' variables and outputs. The
#     shared templates are rendered by terraform and their output checked.
#   - systemd: `systemd-analyze verify` (any warning fails) and `systemd-analyze security
#     --offline` (exposure at most SYSTEMD_MAX_EXPOSURE) on both units; install.sh with
#     `bash -n` (and shellcheck if installed); cloud-init.yaml parsed.
#   - Grafana: the dashboard is valid JSON (python3 -m json.tool) with unique panel ids.
#
# Needs, on a fresh Debian 12 machine:
#   apt-get install -y python3 python3-venv systemd   # systemd-analyze; skipped if absent
#   apt-get install -y shellcheck                     # optional
#   kubectl >= 1.27 (built-in kustomize v5) and terraform >= 1.5 on PATH (neither is in
#   Debian's archive; this project's machine image has both)
#   a Terraform provider mirror (filesystem_mirror layout) at STRAIT_TF_MIRROR, default
#   /opt/tf-plugins (this image: hashicorp/aws 5.100.0); without it every directory gets
#   the HCL parse only
#   PyPI once: this script installs kubernetes-validate==1.37.0 and python-hcl2==8.1.4 into
#   a virtualenv at STRAIT_CHECK_VENV (default ~/.cache/strait-deploy-check/venv) if they
#   are not there; nothing else is installed or downloaded.
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
if ! "$venv/bin/python" - "$KV_VERSION" "$HCL2_VERSION" 2>/dev/null <<'EOF'; then
import sys, importlib.metadata as m
sys.exit(0 if (m.version("kubernetes-validate"), m.version("python-hcl2")) == tuple(sys.argv[1:]) else 1)
EOF
  echo "installing kubernetes-validate==$KV_VERSION python-hcl2==$HCL2_VERSION into $venv (PyPI)"
  python3 -m venv "$venv" || {
    echo "check.sh: python3 -m venv failed: apt-get install python3-venv" >&2
    exit 1
  }
  "$venv/bin/pip" install --quiet --disable-pip-version-check \
    "kubernetes-validate==$KV_VERSION" "python-hcl2==$HCL2_VERSION"
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

# --- Kubernetes -------------------------------------------------------------------------
section "Kubernetes: kubectl kustomize + kubernetes-validate --strict (${KUBE_VERSIONS// /, })"
mapfile -t kdirs < <(find "$deploy/kubernetes" -name kustomization.yaml -printf '%h\n' | sort)
for dir in "${kdirs[@]}"; do
  name="$(rel "$dir")"
  out="$work/$(echo "$name" | tr / _).yaml"
  if ! kubectl kustomize "$dir" >"$out" 2>"$out.err"; then
    cat "$out.err"
    record FAIL "kubectl kustomize" "$name"
    continue
  fi
  count="$(grep -c '^kind:' "$out" || true)"
  echo "$name: rendered $count resources"
  for v in $KUBE_VERSIONS; do
    if "$venv/bin/kubernetes-validate" --strict --quiet -k "$v" "$out"; then
      record PASS "kubernetes-validate --strict $v" "$name ($count resources)"
    else
      record FAIL "kubernetes-validate --strict $v" "$name"
    fi
  done
done

section "Kubernetes: render-gateway-config.sh"
script="$deploy/kubernetes/base/render-gateway-config.sh"
if sh -n "$script" &&
  HOST_IP=10.10.1.23 PUBLIC_IP_FROM=none IN="$deploy/kubernetes/base/agent.toml" \
    OUT="$work/rendered-gateway.toml" sh "$script" &&
  HOST_IP=fd00::23 PRIVATE_KIND=interconnect IN="$deploy/kubernetes/base/agent.toml" \
    OUT="$work/rendered-gateway6.toml" sh "$script" &&
  ! HOST_IP=10.10.1.23 PUBLIC_IP_FROM=mars IN="$deploy/kubernetes/base/agent.toml" \
    OUT="$work/never.toml" sh "$script" 2>/dev/null; then
  record PASS "sh -n + run (private, v6, bad input)" "$(rel "$script")"
else
  record FAIL "sh -n + run" "$(rel "$script")"
fi

# --- Terraform --------------------------------------------------------------------------
section "Terraform: fmt -check -recursive"
if terraform fmt -check -recursive "$deploy/terraform" >/dev/null; then
  record PASS "terraform fmt -check -recursive" "deploy/terraform"
else
  echo "unformatted (fix with: terraform fmt -recursive deploy/terraform):"
  terraform fmt -check -recursive -diff "$deploy/terraform" || true
  record FAIL "terraform fmt -check -recursive" "deploy/terraform"
fi

section "Terraform: validate where the providers are in the mirror, else HCL parse"
# Work on a copy: init writes .terraform/ and lock files. The modules read ../../../systemd.
cp -r "$deploy" "$work/deploy"
mirrored() { # host/namespace/type
  [ -d "$mirror/$1" ] && [ -n "$(ls -A "$mirror/$1" 2>/dev/null)" ]
}
mapfile -t tfdirs < <(find "$deploy/terraform/modules" "$deploy/terraform/examples" -name '*.tf' -printf '%h\n' | sort -u)
for dir in "${tfdirs[@]}"; do
  name="$(rel "$dir")"
  copy="$work/deploy/${dir#"$deploy"/}"
  if ! provs_out="$($tool tf-providers "$dir")"; then
    echo "$provs_out"
    record FAIL "HCL parse" "$name"
    continue
  fi
  mapfile -t provs <<<"$provs_out"
  missing=()
  for p in "${provs[@]}"; do mirrored "$p" || missing+=("$p"); done
  if [ ${#missing[@]} -eq 0 ] && [ ${#provs[@]} -gt 0 ]; then
    echo "$name: providers ${provs[*]} are in the mirror: init + validate"
    if (cd "$copy" && terraform init -backend=false -input=false -no-color >"$work/init.log" 2>&1 || {
      cat "$work/init.log"
      exit 1
    }) && (cd "$copy" && terraform validate -no-color); then
      record PASS "terraform init + validate" "$name"
    else
      record FAIL "terraform init + validate" "$name"
    fi
  else
    echo "$name: not in the mirror: ${missing[*]:-none declared}; HCL parse instead of validate"
    if $tool hcl-parse "$dir"/*.tf; then
      record PASS "HCL parse (no validate: provider)" "$name"
    else
      record FAIL "HCL parse" "$name"
    fi
    record SKIP "terraform validate (not mirrored)" "$name: ${missing[*]:-}"
  fi
  if grep -q '^module ' "$dir"/*.tf; then
    if $tool tf-wiring "$dir"; then
      record PASS "module calls vs variables/outputs" "$name"
    else
      record FAIL "module calls vs variables/outputs" "$name"
    fi
  fi
done

section "Terraform: render the shared templates (agent.toml, cloud-init)"
mkdir -p "$work/render"
cat >"$work/render/main.tf" <<EOF
locals {
  templates = "$work/deploy/terraform/templates"
  agent_toml = templatefile("\${local.templates}/agent.toml.tftpl", {
    mesh = "prod", site = "aws-use1", node = "gw-1", coordinators = ["strait-coordinator.example.net:7443"],
    wireguard_port = 51820, mtu = 1380, metrics_port = 9464, prefixes = ["10.10.0.0/16"],
    endpoints = [{ address = "10.10.0.10:51820", kind = "private" }, { address = "198.51.100.20:51820", kind = "public" }],
    extra = "[vault]\naddress = \"https://vault.example.net:8200\"\nrole = \"strait-gateway\"\nauth = \"approle\"\nrole-id = \"r\"\nsecret-id-file = \"/run/credentials/strait-agent.service/secret_vault-secret-id\"\n"
  })
  cloud_init = templatefile("\${local.templates}/cloud-init.yaml.tftpl", {
    agent_toml = local.agent_toml, agent_secrets = { "vault-secret-id" = "s" },
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

# --- Config keys ------------------------------------------------------------------------
section "Config keys against the Rust structs"
agent_files=("$deploy"/kubernetes/base/agent.toml "$deploy"/kubernetes/overlays/*/agent.toml
  "$deploy/systemd/agent.example.toml" "$deploy/systemd/cloud-init.yaml")
for f in "$work/rendered-gateway.toml" "$work/rendered-gateway6.toml" "$work/tf-agent.toml" "$work/tf-cloud-init.yaml"; do
  [ -f "$f" ] && agent_files+=("$f")
done
coordinator_files=("$deploy/kubernetes/coordinator/coordinator.toml" "$deploy"/kubernetes/overlays/*/coordinator.toml)
if $tool config-keys "$repo" agent "${agent_files[@]}"; then
  record PASS "agent keys vs agent/src/config.rs" "${#agent_files[@]} files"
else
  record FAIL "agent keys vs agent/src/config.rs" "see above"
fi
if $tool config-keys "$repo" coordinator "${coordinator_files[@]}"; then
  record PASS "coordinator keys vs config.rs" "${#coordinator_files[@]} files"
else
  record FAIL "coordinator keys vs config.rs" "see above"
fi

# --- systemd ----------------------------------------------------------------------------
section "systemd units, install.sh, cloud-init"
units=(strait-agent.service strait-coordinator.service)
if command -v systemd-analyze >/dev/null; then
  # verify wants the ExecStart binaries and the standard units: a scratch root holds the
  # units, stub binaries and a copy of the system's unit directory.
  root="$work/sdroot"
  mkdir -p "$root/etc/systemd/system" "$root/usr/local/bin" "$root/usr/lib/systemd"
  cp -r /usr/lib/systemd/system "$root/usr/lib/systemd/"
  for u in "${units[@]}"; do cp "$deploy/systemd/$u" "$root/etc/systemd/system/"; done
  for b in strait-agent strait-coordinator; do
    printf '#!/bin/sh\n' >"$root/usr/local/bin/$b"
    chmod +x "$root/usr/local/bin/$b"
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
if bash -n "$deploy/systemd/install.sh"; then
  record PASS "bash -n" "deploy/systemd/install.sh"
else
  record FAIL "bash -n" "deploy/systemd/install.sh"
fi
if command -v shellcheck >/dev/null; then
  if shellcheck "$deploy/systemd/install.sh" "$deploy/check.sh" && shellcheck -s sh "$script"; then
    record PASS "shellcheck" "install.sh, check.sh, render-gateway-config.sh"
  else
    record FAIL "shellcheck" "install.sh, check.sh, render-gateway-config.sh"
  fi
else
  record SKIP "shellcheck (not installed)" "install.sh, check.sh, render-gateway-config.sh"
fi
for f in "$deploy/systemd/cloud-init.yaml" "$work/tf-cloud-init.yaml"; do
  [ -f "$f" ] || continue
  if head -n 1 "$f" | grep -qx '#cloud-config' && "$py" -c 'import sys, yaml; yaml.safe_load(open(sys.argv[1]))' "$f"; then
    record PASS "#cloud-config + YAML parse" "$f"
  else
    record FAIL "#cloud-config + YAML parse" "$f"
  fi
done

# --- Grafana ----------------------------------------------------------------------------
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

section "summary"
printf '%s\n' "${summary[@]}" | sed "s|$work/|(rendered) |"
if [ "$failed" -ne 0 ]; then
  echo "check.sh: FAILED"
  exit 1
fi
echo "check.sh: all checks passed"
