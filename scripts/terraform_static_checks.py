"""Static checks of terraform/ that need no provider (the AWS modules cannot be planned offline).

1. Every .tf file parses as HCL (python-hcl2).
2. Every variable has a type, a description and (unless a bool) a validation; every output a
   description.
3. Every module pins `required_version`; every required provider has a source and a version
   constraint, and the AWS provider is required at >= 6 (the per-resource `region` argument).
4. Every AWS resource and data source sets `region` (one provider configuration serves all regions).
5. The cloud-init template of modules/aws-region, rendered by Terraform itself (templatefile() in the
   provider-free root terraform/tests/render-cloud-init), is valid YAML starting with #cloud-config,
   writes a meridian.toml that `meridian config check` accepts, and runs the node under systemd with
   a restart policy.
6. The certificate bootstrap step (terraform/scripts/issue-certs.sh) issues, with `meridian certs`,
   a certificate per node whose identity and hosts are the ones Terraform computed.

usage: terraform_static_checks.py MERIDIAN_BINARY TERRAFORM_WRAPPER
"""
import json
import os
import pathlib
import subprocess
import sys
import tempfile

import hcl2
import yaml

ROOT = pathlib.Path(__file__).resolve().parent.parent / "terraform"
failures = []


def fail(message):
    failures.append(message)
    print(f"FAIL {message}")


def items(block):
    """A parsed block's entries, without python-hcl2's own `__is_block__`/`__comments__` keys."""
    return [(k.strip('"'), v) for k, v in block.items() if not k.startswith("__")]


def module_dirs():
    dirs = {p.parent for p in ROOT.rglob("*.tf") if ".terraform" not in p.parts}
    return sorted(dirs)


def check_module(directory):
    blocks = {"variable": [], "output": [], "terraform": [], "resource": [], "data": []}
    for path in sorted(directory.glob("*.tf")):
        try:
            with open(path) as f:
                parsed = hcl2.load(f)
        except Exception as e:  # any parse error is a failure to report, not to crash on
            fail(f"{path.relative_to(ROOT)}: does not parse: {e}")
            continue
        for kind in blocks:
            blocks[kind].extend(parsed.get(kind, []))
    rel = directory.relative_to(ROOT.parent)
    for block in blocks["variable"]:
        for name, body in items(block):
            for field in ("type", "description"):
                if field not in body:
                    fail(f"{rel}: variable {name} has no {field}")
            # A bool has nothing to validate; every other input says what it accepts.
            if "validation" not in body and str(body.get("type", "")).strip('"${}') != "bool":
                fail(f"{rel}: variable {name} has no validation")
    for block in blocks["output"]:
        for name, body in items(block):
            if "description" not in body:
                fail(f"{rel}: output {name} has no description")
    settings = [b for b in blocks["terraform"]]
    if not any("required_version" in b for b in settings):
        fail(f"{rel}: no terraform.required_version")
    uses_aws = False
    for b in settings:
        for providers in b.get("required_providers", []):
            for name, spec in items(providers):
                if not isinstance(spec, dict) or "source" not in spec or "version" not in spec:
                    fail(f"{rel}: provider {name} needs a source and a version constraint")
                    continue
                if name == "aws":
                    uses_aws = True
                    if ">= 6" not in spec["version"]:
                        fail(f"{rel}: the aws provider must be required at >= 6 (found {spec['version']})")
    for kind in ("resource", "data"):
        for block in blocks[kind]:
            for rtype, instances in items(block):
                if not rtype.startswith("aws_"):
                    continue
                for name, body in items(instances):
                    if "region" not in body:
                        fail(f"{rel}: {kind} {rtype}.{name} sets no `region`")
                uses_aws = True
    return uses_aws


def check_cloud_init(meridian, terraform):
    root = ROOT / "tests" / "render-cloud-init"
    with tempfile.TemporaryDirectory() as tmp:
        env = dict(os.environ, TF_DATA_DIR=os.path.join(tmp, ".terraform"))
        state = f"-state={os.path.join(tmp, 'terraform.tfstate')}"

        def tf(*args):
            out = subprocess.run([terraform, f"-chdir={root}", *args], env=env, capture_output=True, text=True, timeout=300)
            if out.returncode != 0:
                raise RuntimeError(f"terraform {' '.join(args)} failed:\n{out.stdout}\n{out.stderr}")
            return out.stdout

        tf("init", "-input=false", "-no-color")
        tf("apply", "-auto-approve", "-input=false", "-no-color", state)
        user_data = json.loads(tf("output", "-json", "-no-color", state, "user_data"))
        for node, text in sorted(user_data.items()):
            if not text.startswith("#cloud-config\n"):
                fail(f"cloud-init of {node}: does not start with #cloud-config")
            doc = yaml.safe_load(text)
            files = {f["path"]: f for f in doc.get("write_files", [])}
            config = files.get("/etc/meridian/meridian.toml", {}).get("content")
            if config is None:
                fail(f"cloud-init of {node}: writes no /etc/meridian/meridian.toml")
                continue
            path = os.path.join(tmp, f"{node}.toml")
            with open(path, "w") as f:
                f.write(config)
            env_node = {k: v for k, v in os.environ.items() if not k.startswith("MERIDIAN_")}
            check = subprocess.run([meridian, "config", "check", path], capture_output=True, text=True, env=env_node, timeout=60)
            if check.returncode != 0:
                fail(f"cloud-init of {node}: meridian config check refused it: {check.stderr.strip()}")
            else:
                print(f"ok   cloud-init of {node}: {check.stdout.strip()}")
            for needle in ('listen = "0.0.0.0:7402"', "advertise = ", "enabled = true", 'cert = "/etc/meridian/certs/node.crt"'):
                if needle not in config:
                    fail(f"cloud-init of {node}: config lacks {needle!r}")
            unit = files.get("/etc/systemd/system/meridian.service", {}).get("content", "")
            for needle in ("Restart=always", "ExecStart=/usr/local/bin/meridian serve --config /etc/meridian/meridian.toml"):
                if needle not in unit:
                    fail(f"cloud-init of {node}: the systemd unit lacks {needle!r}")
            key = files.get("/etc/meridian/certs/node.key", {})
            if key.get("permissions") != "0600":
                fail(f"cloud-init of {node}: the node key is not written 0600")
            bootstrap = files.get("/usr/local/sbin/meridian-bootstrap", {}).get("content", "")
            if "sha256sum -c" not in bootstrap:
                fail(f"cloud-init of {node}: the binary download is not verified")
        check_issue_certs(meridian, tf("output", "-json", "-no-color", state, "certificate_identities"), tmp)


def check_issue_certs(meridian, identities_json, tmp):
    certs = os.path.join(tmp, "certs")
    script = ROOT / "scripts" / "issue-certs.sh"
    env = dict(os.environ, MERIDIAN=meridian, IDENTITIES_JSON=identities_json, MERIDIAN_LOG="warn")
    out = subprocess.run([str(script), certs], env=env, capture_output=True, text=True, timeout=120)
    if out.returncode != 0:
        fail(f"issue-certs.sh failed: {out.stderr.strip()}")
        return
    for node, identity in sorted(json.loads(identities_json).items()):
        shown = subprocess.run([meridian, "certs", "show", os.path.join(certs, f"{node}.crt")], capture_output=True, text=True, timeout=60)
        if identity["uri"] not in shown.stdout:
            fail(f"issue-certs.sh: {node}'s certificate does not carry {identity['uri']}: {shown.stdout}{shown.stderr}")
        for host in identity["hosts"]:
            if host not in shown.stdout:
                fail(f"issue-certs.sh: {node}'s certificate lacks host {host}")
    for name in ("ca.crt", "admin.crt", "admin.key"):
        if not os.path.exists(os.path.join(certs, name)):
            fail(f"issue-certs.sh: no {name}")
    print(f"ok   issue-certs.sh issued {len(json.loads(identities_json))} node certificates for Terraform's identities")


def main():
    if len(sys.argv) != 3:
        print(__doc__)
        return 2
    meridian, terraform = sys.argv[1], sys.argv[2]
    aws_modules = []
    for directory in module_dirs():
        if check_module(directory):
            aws_modules.append(str(directory.relative_to(ROOT.parent)))
    print(f"ok   HCL of {len(module_dirs())} modules parsed; variables, outputs and versions checked")
    print(f"     AWS modules (statically checked only, no provider offline): {', '.join(aws_modules)}")
    check_cloud_init(meridian, terraform)
    if failures:
        print(f"{len(failures)} static check(s) failed")
        return 1
    print("static checks passed")
    return 0


if __name__ == "__main__":
    sys.exit(main())
