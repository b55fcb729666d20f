#!/usr/bin/env python3
"""Offline checks behind deploy/check.sh that no off-the-shelf validator does.

  deploycheck.py k8s-semantics RENDERED.yaml...
      In kustomize's output: workload selectors match their pod labels; every volumeMount
      names a volume; every ConfigMap and Secret a pod uses is rendered (or is one of the
      documented EXTERNAL_SECRETS); every Service, PodMonitor, ServiceMonitor and
      NetworkPolicy selects something, and their ports name ports that exist.
  deploycheck.py k8s-configs RENDERED.yaml OUTDIR
      For each strait-agent / strait-coordinator container: the config file it reads (a
      gateway's rendered by running its init container's script) and its environment, in
      OUTDIR/<name>.{toml,env,bin}, for `check-config` (which also refuses unknown STRAIT_*).
  deploycheck.py cloud-config-keys SCHEMA.json FILE...
      Top-level keys of each cloud-config are keys of cloud-init's own schema.
  deploycheck.py tf-refs DIR
      Every var., local. and module. reference in DIR's .tf files is declared in DIR.
  deploycheck.py hcl-parse FILE...
      Parses every Terraform file with python-hcl2.
  deploycheck.py tf-providers DIR
      Prints the providers (host/namespace/type) DIR and its local modules require.
  deploycheck.py tf-wiring DIR
      Checks each local `module` block of DIR against the module's variables (no unknown
      argument, every variable without a default given) and each module.NAME.OUTPUT
      reference against the module's outputs.
"""

import os
import re
import sys

# --- Kubernetes ----------------------------------------------------------------------------

# Secrets the manifests use that the operator creates (README.md's bootstrap path), not
# kustomize: name -> how it is made.
EXTERNAL_SECRETS = {
    "strait-join-tokens": "kubectl create secret generic strait-join-tokens --from-file=NODE=token ...",
    "strait-coordinator-store": "kubectl create secret generic strait-coordinator-store --from-file=url=...",
    "strait-vault-ca": "kubectl create secret generic strait-vault-ca --from-file=ca.pem=...",
}
WORKLOADS = {"DaemonSet", "Deployment", "StatefulSet", "Job"}
# Sample values for the downward API when rendering what a pod sees.
FIELD_SAMPLES = {
    "spec.nodeName": "node-1",
    "status.hostIP": "10.10.1.23",
    "status.podIP": "10.10.1.23",
    "metadata.name": "pod-1",
    "metadata.namespace": "strait-system",
}


def load_yaml_docs(path):
    import yaml

    with open(path, encoding="utf-8") as fh:
        return [d for d in yaml.safe_load_all(fh) if d]


def pod_templates(docs):
    for d in docs:
        if d.get("kind") in WORKLOADS:
            yield d, d["spec"]["template"]


def containers(pod):
    spec = pod.get("spec", {})
    return [("init", c) for c in spec.get("initContainers", [])] + [("", c) for c in spec.get("containers", [])]


def selector_matches(selector, labels):
    """A LabelSelector (matchLabels, matchExpressions) against a label map."""
    labels = labels or {}
    for k, v in (selector.get("matchLabels") or {}).items():
        if labels.get(k) != v:
            return False
    for e in selector.get("matchExpressions") or []:
        op, key, values = e["operator"], e["key"], e.get("values", [])
        if op == "In" and labels.get(key) not in values:
            return False
        if op == "NotIn" and labels.get(key) in values:
            return False
        if op == "Exists" and key not in labels:
            return False
        if op == "DoesNotExist" and key in labels:
            return False
    return True


def k8s_semantics(paths):
    """What the API server or kubelet would refuse or silently get wrong, and schemas do
    not see: selectors, volume names, references to ConfigMaps and Secrets, Services and
    monitors that select nothing, ports by a name no container has."""
    errors = []
    for path in paths:
        docs = load_yaml_docs(path)
        where = os.path.basename(path)
        names = {}
        for d in docs:
            names.setdefault(d.get("kind"), set()).add((d["metadata"].get("namespace"), d["metadata"]["name"]))
        pods = []  # (namespace, workload name, labels, pod spec)
        for d, tpl in pod_templates(docs):
            ns, wname = d["metadata"].get("namespace"), f"{d['kind']}/{d['metadata']['name']}"
            labels = tpl.get("metadata", {}).get("labels", {})
            sel = d["spec"].get("selector")
            if d["kind"] != "Job":
                if not sel or not selector_matches(sel, labels):
                    errors.append(f"{where}: {wname}: spec.selector {sel} does not match its pod labels {labels}")
            spec = tpl.get("spec", {})
            pods.append((ns, wname, labels, spec))
            volumes = {v["name"]: v for v in spec.get("volumes", [])}
            claims = {c["metadata"]["name"] for c in d["spec"].get("volumeClaimTemplates", [])}
            for kind, c in containers(tpl):
                for m in c.get("volumeMounts", []):
                    if m["name"] not in volumes and m["name"] not in claims:
                        errors.append(f"{where}: {wname}: container {c['name']} mounts volume {m['name']!r}, which the pod does not declare (volumes: {sorted(volumes)})")
                for e in c.get("env", []):
                    ref = (e.get("valueFrom") or {})
                    if "configMapKeyRef" in ref and not ref["configMapKeyRef"].get("optional"):
                        n = ref["configMapKeyRef"]["name"]
                        if (ns, n) not in names.get("ConfigMap", set()):
                            errors.append(f"{where}: {wname}: env {e['name']} reads ConfigMap {n!r}, which is not in the rendered manifests")
                    if "secretKeyRef" in ref and not ref["secretKeyRef"].get("optional"):
                        n = ref["secretKeyRef"]["name"]
                        if (ns, n) not in names.get("Secret", set()) and n not in EXTERNAL_SECRETS:
                            errors.append(f"{where}: {wname}: env {e['name']} reads Secret {n!r}, which is neither rendered nor a documented external Secret")
            refs = []
            for v in volumes.values():
                if "configMap" in v:
                    refs.append(("ConfigMap", v["configMap"]["name"], v["configMap"].get("optional")))
                if "secret" in v:
                    refs.append(("Secret", v["secret"]["secretName"], v["secret"].get("optional")))
                for src in (v.get("projected") or {}).get("sources", []):
                    if "configMap" in src:
                        refs.append(("ConfigMap", src["configMap"]["name"], src["configMap"].get("optional")))
                    if "secret" in src:
                        refs.append(("Secret", src["secret"]["name"], src["secret"].get("optional")))
            for kind, n, optional in refs:
                if optional or (ns, n) in names.get(kind, set()):
                    continue
                if kind == "Secret" and n in EXTERNAL_SECRETS:
                    continue
                errors.append(f"{where}: {wname}: volume uses {kind} {n!r}, which is not in the rendered manifests (a typo, or a generator's name?)")
        for d in docs:
            kind, ns, name = d.get("kind"), d["metadata"].get("namespace"), d["metadata"]["name"]
            if kind == "Service":
                sel = d["spec"].get("selector")
                if not sel:
                    continue
                matched = [p for p in pods if p[0] == ns and selector_matches({"matchLabels": sel}, p[2])]
                if not matched:
                    errors.append(f"{where}: Service/{name}: selector {sel} matches no pod template")
                    continue
                for port in d["spec"].get("ports", []):
                    target = port.get("targetPort", port["port"])
                    found = False
                    for _, _, _, spec in matched:
                        for _, c in containers({"spec": spec}):
                            for cp in c.get("ports", []):
                                if target in (cp.get("name"), cp.get("containerPort")):
                                    found = True
                    if not found:
                        errors.append(f"{where}: Service/{name}: port {port.get('name', port['port'])} targets {target!r}, which no container of the selected pods declares")
            if kind in ("PodMonitor", "ServiceMonitor", "NetworkPolicy"):
                spec = d["spec"]
                sel = spec.get("podSelector") if kind == "NetworkPolicy" else spec.get("selector", {})
                if kind == "ServiceMonitor":
                    targets = [(x, (x["metadata"].get("labels") or {})) for x in docs if x.get("kind") == "Service" and x["metadata"].get("namespace") == ns]
                    matched = [x for x, labels in targets if selector_matches(sel, labels)]
                    ports = {p.get("name") for x in matched for p in x["spec"].get("ports", [])}
                    wanted = [e.get("port") for e in spec.get("endpoints", [])]
                else:
                    matched = [p for p in pods if p[0] == ns and selector_matches(sel, p[2])]
                    ports = {cp.get("name") for p in matched for _, c in containers({"spec": p[3]}) for cp in c.get("ports", [])}
                    wanted = [e.get("port") for e in spec.get("podMetricsEndpoints", [])] if kind == "PodMonitor" else []
                if not matched:
                    errors.append(f"{where}: {kind}/{name}: selector {sel} matches nothing")
                for w in wanted:
                    if w not in ports:
                        errors.append(f"{where}: {kind}/{name}: port {w!r} is not a port name of what it selects ({sorted(p for p in ports if p)})")
        print(f"  {'ok ' if not errors else '   '} {where}: {sum(1 for _ in pod_templates(docs))} pod templates, {len(docs)} resources")
    for e in errors:
        print(f"  FAIL {e}")
    return 1 if errors else 0


def expand(value, env):
    """$(VAR) as the kubelet expands it in env values and commands."""
    return re.sub(r"\$\(([A-Za-z_][A-Za-z0-9_]*)\)", lambda m: env.get(m.group(1), m.group(0)), value)


def container_env(c, docs, ns):
    env = {}
    for e in c.get("env", []):
        if "value" in e:
            env[e["name"]] = expand(str(e["value"]), env)
            continue
        ref = e.get("valueFrom") or {}
        if "fieldRef" in ref:
            env[e["name"]] = FIELD_SAMPLES.get(ref["fieldRef"]["fieldPath"], "sample")
        elif "configMapKeyRef" in ref:
            r = ref["configMapKeyRef"]
            for d in docs:
                if d.get("kind") == "ConfigMap" and d["metadata"]["name"] == r["name"]:
                    env[e["name"]] = (d.get("data") or {}).get(r["key"], "")
        elif "secretKeyRef" in ref:
            env[e["name"]] = "sample-secret"
        else:
            env[e["name"]] = "sample"
    return env


def mounted_files(c, spec, docs, ns):
    """{path in the container: content} for ConfigMap volumes mounted by `c`."""
    volumes = {v["name"]: v for v in spec.get("volumes", [])}
    files = {}
    for m in c.get("volumeMounts", []):
        v = volumes.get(m["name"], {})
        if "configMap" not in v:
            continue
        data = {}
        for d in docs:
            if d.get("kind") == "ConfigMap" and d["metadata"]["name"] == v["configMap"]["name"]:
                data = d.get("data") or {}
        if "subPath" in m:
            if m["subPath"] in data:
                files[m["mountPath"]] = data[m["subPath"]]
        else:
            for k, text in data.items():
                files[os.path.join(m["mountPath"], k)] = text
    return files


def k8s_configs(rendered, outdir):
    """Writes, for every strait-agent and strait-coordinator container of the rendered
    manifests, the config file it reads (a gateway's as its render-config init container
    writes it, run here with PUBLIC_IP_FROM=none) and its environment, as
    OUTDIR/<n>.{toml,env,cmd} for `check-config`."""
    import subprocess
    import tempfile

    docs = load_yaml_docs(rendered)
    base = os.path.basename(rendered).removesuffix(".yaml")
    count = 0
    for d, tpl in pod_templates(docs):
        spec, ns = tpl.get("spec", {}), d["metadata"].get("namespace")
        for _, c in containers(tpl):
            command = [expand(x, {}) for x in (c.get("command") or []) + (c.get("args") or [])]
            binary = next((os.path.basename(x) for x in command if os.path.basename(x) in ("strait-agent", "strait-coordinator")), None)
            if not binary:
                continue
            env = container_env(c, docs, ns)
            command = [expand(x, env) for x in command]
            config = env.get("STRAIT_CONFIG")
            if "--config" in command:
                config = command[command.index("--config") + 1]
            files = mounted_files(c, spec, docs, ns)
            text = files.get(config)
            if text is None:
                # Written by an init container into a shared emptyDir: run it.
                shared = {m["name"] for m in c.get("volumeMounts", []) if config.startswith(m["mountPath"].rstrip("/") + "/")}
                for ic in spec.get("initContainers", []):
                    if not any(m["name"] in shared for m in ic.get("volumeMounts", [])):
                        continue
                    ifiles = mounted_files(ic, spec, docs, ns)
                    icmd = ic.get("command") or []
                    script = next((ifiles[x] for x in icmd if x in ifiles), None)
                    if script is None:
                        continue
                    ienv = container_env(ic, docs, ns)
                    with tempfile.TemporaryDirectory() as tmp:
                        src = os.path.join(tmp, "in.toml")
                        with open(src, "w") as fh:
                            fh.write(ifiles.get("/etc/strait/agent.toml", ""))
                        out = os.path.join(tmp, "out.toml")
                        # Other paths the script is given: mounted files as copies, paths
                        # in its other mounts (emptyDirs) under a scratch directory.
                        for k, v in list(ienv.items()):
                            if not v.startswith("/"):
                                continue
                            local = os.path.join(tmp, "env", k, os.path.basename(v))
                            if v in ifiles:
                                os.makedirs(os.path.dirname(local), exist_ok=True)
                                with open(local, "w") as fh:
                                    fh.write(ifiles[v])
                                ienv[k] = local
                            elif any(v.startswith(m["mountPath"].rstrip("/") + "/") for m in ic.get("volumeMounts", [])):
                                os.makedirs(os.path.dirname(local), exist_ok=True)
                                ienv[k] = local
                        run_env = {**os.environ, **ienv, "IN": src, "OUT": out, "PUBLIC_IP_FROM": "none"}
                        r = subprocess.run(["sh", "-c", script, "render"], env=run_env, capture_output=True, text=True)
                        if r.returncode != 0:
                            print(f"  FAIL {base}: {d['kind']}/{d['metadata']['name']}: init container {ic['name']} failed: {r.stderr.strip()}")
                            return 1
                        text = open(out).read()
            if text is None:
                print(f"  FAIL {base}: {d['kind']}/{d['metadata']['name']}: container {c['name']} reads {config}, which no ConfigMap or init container provides")
                return 1
            n = f"{base}__{d['metadata']['name']}__{c['name']}"
            with open(os.path.join(outdir, n + ".toml"), "w") as fh:
                fh.write(text)
            with open(os.path.join(outdir, n + ".env"), "w") as fh:
                for k, v in env.items():
                    fh.write(f"{k}={v}\n")
            with open(os.path.join(outdir, n + ".bin"), "w") as fh:
                fh.write(binary + "\n")
            count += 1
    print(f"  {base}: {count} Strait containers")
    return 0


def cloud_config_keys(schema_path, files):
    """Top-level keys of each cloud-config must be keys some cloud-init module reads (the
    union of the properties of cloud-init's own schema): cloud-init ignores others, so a
    misspelt or renamed key would silently do nothing."""
    import json

    import yaml

    with open(schema_path, encoding="utf-8") as fh:
        schema_doc = json.load(fh)
    known = set()
    for d in schema_doc.get("$defs", {}).values():
        known |= set(d.get("properties", {}))
    errors = []
    for f in files:
        with open(f, encoding="utf-8") as fh:
            doc = yaml.safe_load(fh) or {}
        unknown = sorted(set(doc) - known)
        for k in unknown:
            errors.append(f"{f}: top-level key {k!r} is read by no cloud-init module (cloud-init would ignore it)")
        if not unknown:
            print(f"  ok  {f}: {len(doc)} top-level keys, all known to cloud-init")
    for e in errors:
        print(f"  FAIL {e}")
    return 1 if errors else 0


# --- Terraform -----------------------------------------------------------------------------


def unquote(s):
    return s[1:-1] if isinstance(s, str) and len(s) >= 2 and s[0] == s[-1] == '"' else s


def load_dir(d):
    import hcl2

    blocks = {}
    for name in sorted(os.listdir(d)):
        if name.endswith(".tf"):
            path = os.path.join(d, name)
            try:
                with open(path, encoding="utf-8") as fh:
                    parsed = hcl2.load(fh)
            except Exception as e:  # lark's parse errors
                raise ValueError(f"{path}: {str(e).splitlines()[0] if str(e) else type(e).__name__}") from e
            for kind, items in parsed.items():
                blocks.setdefault(kind, []).extend(items)
    return blocks


def local_modules(d, blocks):
    out = {}
    for item in blocks.get("module", []):
        for name, body in item.items():
            src = unquote(body.get("source", ""))
            if src.startswith(("./", "../")):
                out[unquote(name)] = (os.path.normpath(os.path.join(d, src)), body)
    return out


def providers(d, seen=None):
    seen = seen if seen is not None else set()
    if d in seen:
        return set()
    seen.add(d)
    blocks = load_dir(d)
    found = set()
    for tf in blocks.get("terraform", []):
        for rp in tf.get("required_providers", []):
            for local_name, spec in rp.items():
                if local_name.startswith("__"):  # __is_block__, __inline_comments__ (python-hcl2)
                    continue
                src = unquote(spec.get("source", f"hashicorp/{local_name}")) if isinstance(spec, dict) else f"hashicorp/{local_name}"
                if src.count("/") == 1:
                    src = "registry.terraform.io/" + src
                found.add(src.lower())
    for mdir, _ in local_modules(d, blocks).values():
        found |= providers(mdir, seen)
    return found


def tf_wiring(d):
    blocks = load_dir(d)
    errors = []
    meta = {"source", "version", "providers", "count", "for_each", "depends_on"}
    for name, (mdir, body) in local_modules(d, blocks).items():
        mblocks = load_dir(mdir)
        variables = {}
        for item in mblocks.get("variable", []):
            for vname, vbody in item.items():
                variables[unquote(vname)] = "default" in vbody
        outputs = {unquote(o) for item in mblocks.get("output", []) for o in item}
        given = {k for k in body if k not in meta and not k.startswith("__")}
        for k in sorted(given - set(variables)):
            errors.append(f"{d}: module.{name} passes `{k}`, which {mdir} does not declare")
        for k in sorted(v for v, has_default in variables.items() if not has_default and v not in given):
            errors.append(f"{d}: module.{name} does not pass required variable `{k}` of {mdir}")
        text = "".join(open(os.path.join(d, f), encoding="utf-8").read() for f in os.listdir(d) if f.endswith(".tf"))
        for ref in sorted(set(re.findall(r"module\." + re.escape(name) + r"\.([A-Za-z0-9_]+)", text))):
            if ref not in outputs:
                errors.append(f"{d}: module.{name}.{ref} is not an output of {mdir}")
        print(f"  ok  module.{name} -> {mdir}: {len(given)} arguments, {len(variables)} variables, {len(outputs)} outputs")
    for e in errors:
        print(f"  FAIL {e}")
    return 1 if errors else 0


def tf_refs(d):
    """Every var.X, local.X and module.X that a directory's .tf files use is declared
    there: terraform validate says so too, but only where the providers are installed."""
    blocks = load_dir(d)
    declared = {
        "var": {unquote(n) for item in blocks.get("variable", []) for n in item},
        "local": {unquote(n) for item in blocks.get("locals", []) for n in item},
        "module": {unquote(n) for item in blocks.get("module", []) for n in item},
    }
    errors = []
    for name in sorted(os.listdir(d)):
        if not name.endswith(".tf"):
            continue
        text = open(os.path.join(d, name), encoding="utf-8").read()
        text = re.sub(r"#[^\n]*|//[^\n]*", "", text)
        text = re.sub(r"\$\$\{[^}]*\}", "", text)  # $${...} is a literal, not a reference
        for kind, ref in sorted(set(re.findall(r"(?<![A-Za-z0-9_.])(var|local|module)\.([A-Za-z_][A-Za-z0-9_-]*)", text))):
            if ref not in declared[kind]:
                errors.append(f"{d}/{name}: {kind}.{ref} is not declared in {d}")
    if not errors:
        print(f"  ok  {d}: {sum(len(v) for v in declared.values())} declarations, every reference declared")
    for e in errors:
        print(f"  FAIL {e}")
    return 1 if errors else 0


def hcl_parse(files):
    import hcl2

    bad = 0
    for f in files:
        try:
            with open(f, encoding="utf-8") as fh:
                hcl2.load(fh)
            print(f"  ok  {f}")
        except Exception as e:  # the parser raises several types
            print(f"  FAIL {f}: {e}")
            bad += 1
    return 1 if bad else 0


def main(argv):
    if len(argv) < 2:
        die(__doc__)
    cmd, args = argv[1], argv[2:]
    if cmd == "k8s-semantics" and args:
        return k8s_semantics(args)
    if cmd == "k8s-configs" and len(args) == 2:
        return k8s_configs(args[0], args[1])
    if cmd == "cloud-config-keys" and len(args) >= 2:
        return cloud_config_keys(args[0], args[1:])
    if cmd == "hcl-parse" and args:
        return hcl_parse(args)
    try:
        if cmd == "tf-providers" and len(args) == 1:
            print("\n".join(sorted(providers(os.path.normpath(args[0])))))
            return 0
        if cmd == "tf-wiring" and len(args) == 1:
            return tf_wiring(os.path.normpath(args[0]))
        if cmd == "tf-refs" and len(args) == 1:
            return tf_refs(os.path.normpath(args[0]))
    except Exception as e:  # python-hcl2 raises lark's errors on a syntax error
        print(f"  FAIL {args[0]}: cannot parse its Terraform files: {type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}")
        return 1
    die(__doc__)


if __name__ == "__main__":
    sys.exit(main(sys.argv))
