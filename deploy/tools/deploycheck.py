#!/usr/bin/env python3
"""Offline checks behind deploy/check.sh that no off-the-shelf validator does.

  deploycheck.py config-keys REPO agent|coordinator FILE...
      Every key of each TOML file (or of the TOML in a cloud-init file's write_files whose
      path ends in agent.toml) must be a field of the Rust config structs (the agent's
      FileConfig, VaultSettings and Endpoint; the coordinator's Config, PkiConfig,
      VaultSettings, SiteConfig and ExternalPeerConfig), read from the source, since both
      binaries refuse unknown keys. Keys the deploy material assumes before the Rust code
      has them (ASSUMED below) are reported, not refused.
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

# Keys the deploy material uses that the Rust config does not have yet (issue 7, being
# added in parallel): file kind -> {dotted key: why}.
ASSUMED = {
    "agent": {},
    "coordinator": {},
}

ENDPOINT_KINDS = {"interconnect", "private", "public"}


def die(msg):
    print(f"deploycheck: {msg}", file=sys.stderr)
    sys.exit(2)


# --- Rust structs --------------------------------------------------------------------------


def rust_fields(path, struct):
    """Serde names (kebab-case) of the fields of `pub struct <struct>` in `path`."""
    text = open(path, encoding="utf-8").read()
    m = re.search(r"pub struct " + re.escape(struct) + r"\s*\{(.*?)\n\}", text, re.S)
    if not m:
        die(f"struct {struct} not found in {path}: update deploy/tools/deploycheck.py")
    body = m.group(1)
    attributes = text[: m.start()].rsplit("}", 1)[-1]
    if 'rename_all = "kebab-case"' not in attributes:
        die(f"struct {struct} in {path} is not serde kebab-case any more: update deploycheck.py")
    fields = set()
    for line in body.splitlines():
        fm = re.match(r"\s*pub\s+([a-z_][a-z0-9_]*)\s*:", line)
        if fm:
            fields.add(fm.group(1).replace("_", "-"))
        if "rename =" in line:
            die(f"{path}: a serde rename in {struct}; update deploycheck.py")
    return fields


def schema(repo, kind):
    """Nested key sets: {"": top-level keys, "vault": ..., "endpoints[]": ...}."""
    p = lambda *a: os.path.join(repo, *a)  # noqa: E731
    vault = rust_fields(p("pki/src/vault.rs"), "VaultSettings")
    if kind == "agent":
        return {
            "": rust_fields(p("agent/src/config.rs"), "FileConfig"),
            "vault": vault,
            "endpoints[]": rust_fields(p("proto/src/msg.rs"), "Endpoint"),
        }
    if kind == "coordinator":
        return {
            "": rust_fields(p("coordinator/src/config.rs"), "Config"),
            "pki": rust_fields(p("coordinator/src/config.rs"), "PkiConfig"),
            "pki.vault": vault,
            "sites[]": rust_fields(p("coordinator/src/config.rs"), "SiteConfig"),
            "external-peers[]": rust_fields(p("coordinator/src/config.rs"), "ExternalPeerConfig"),
        }
    die(f"unknown config kind {kind!r}; use agent or coordinator")


def walk(doc, prefix, shape, kind, where, errors, assumed_seen):
    allowed = shape.get(prefix)
    for key, value in doc.items():
        dotted = f"{prefix}.{key}" if prefix else key
        if key not in allowed:
            if dotted in ASSUMED[kind]:
                assumed_seen.add(dotted)
                continue
            errors.append(f"{where}: unknown key `{dotted}` (not in the Rust config; the {kind} would refuse the file)")
            continue
        sub = f"{dotted}[]"
        if isinstance(value, dict) and dotted in shape:
            walk(value, dotted, shape, kind, where, errors, assumed_seen)
        elif isinstance(value, list) and sub in shape:
            for i, item in enumerate(value):
                if not isinstance(item, dict):
                    errors.append(f"{where}: `{dotted}[{i}]` is not a table")
                    continue
                walk(item, sub, shape, kind, where, errors, assumed_seen)
                if sub == "endpoints[]" and item.get("kind") not in ENDPOINT_KINDS:
                    errors.append(f"{where}: `{dotted}[{i}].kind` is {item.get('kind')!r}; use interconnect, private or public")
    if prefix == "" and kind == "agent" and doc.get("role") not in (None, "gateway", "member"):
        errors.append(f"{where}: `role` is {doc.get('role')!r}; use gateway or member")


def toml_documents(path):
    """(label, text) of the TOML in `path`: the file itself, or agent.toml files that a
    cloud-init file writes."""
    text = open(path, encoding="utf-8").read()
    if path.endswith((".yaml", ".yml")):
        import yaml

        data = yaml.safe_load(text)
        docs = [
            (f"{path} ({f['path']})", f["content"])
            for f in (data or {}).get("write_files", [])
            if str(f.get("path", "")).endswith(".toml")
        ]
        if not docs:
            die(f"{path}: no write_files entry ending in .toml")
        return docs
    return [(path, text)]


def config_keys(repo, kind, files):
    import tomllib

    shape = schema(repo, kind)
    errors, assumed_seen = [], set()
    for path in files:
        for where, text in toml_documents(path):
            try:
                doc = tomllib.loads(text)
            except tomllib.TOMLDecodeError as e:
                errors.append(f"{where}: not valid TOML: {e}")
                continue
            before = len(errors)
            walk(doc, "", shape, kind, where, errors, assumed_seen)
            if len(errors) == before:
                print(f"  ok  {where}")
    for key in sorted(assumed_seen):
        print(f"  ASSUMED {kind} key `{key}` (not in the Rust config yet: {ASSUMED[kind][key]})")
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
                if local_name == "__is_block__":
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
    if cmd == "config-keys" and len(args) >= 3:
        return config_keys(args[0], args[1], args[2:])
    if cmd == "hcl-parse" and args:
        return hcl_parse(args)
    try:
        if cmd == "tf-providers" and len(args) == 1:
            print("\n".join(sorted(providers(os.path.normpath(args[0])))))
            return 0
        if cmd == "tf-wiring" and len(args) == 1:
            return tf_wiring(os.path.normpath(args[0]))
    except Exception as e:  # python-hcl2 raises lark's errors on a syntax error
        print(f"  FAIL {args[0]}: cannot parse its Terraform files: {type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}")
        return 1
    die(__doc__)


if __name__ == "__main__":
    sys.exit(main(sys.argv))
