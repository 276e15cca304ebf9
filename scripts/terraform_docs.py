"""Writes the Inputs and Outputs tables of every Terraform module's README.md, between the
`<!-- BEGIN_TF_DOCS -->` and `<!-- END_TF_DOCS -->` markers (the terraform-docs convention), from the
variables' and outputs' own descriptions, so the READMEs cannot drift from the code.

usage: terraform_docs.py [--check]   (--check: exit 1 when a README is not up to date)
"""
import pathlib
import re
import sys

import hcl2

ROOT = pathlib.Path(__file__).resolve().parent.parent / "terraform"
BEGIN, END = "<!-- BEGIN_TF_DOCS -->", "<!-- END_TF_DOCS -->"


def unquote(value):
    text = str(value)
    if len(text) >= 2 and text[0] == '"' and text[-1] == '"':
        text = text[1:-1]
    return text


def cell(value):
    text = unquote(value)
    # Heredoc descriptions come back with their <<-EOT … EOT markers.
    text = re.sub(r"^<<-?(\w+)\s*(.*?)\s*\1$", r"\2", text, flags=re.S)
    text = " ".join(text.replace("\\n", " ").split())
    return text.replace("|", "\\|")


def unquote_expr(value):
    # python-hcl2 gives expressions as "${...}"; show them as written.
    text = str(value)
    if text.startswith("${") and text.endswith("}"):
        text = text[2:-1]
    return cell(text)


def hcl_value(value):
    """A default as it reads in HCL: true/false, strings quoted, lists and maps in brackets."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, list):
        return "[" + ", ".join(hcl_value(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{" + ", ".join(f"{unquote(k)} = {hcl_value(v)}" for k, v in value.items()) + "}"
    if isinstance(value, str) and not (value.startswith("${") and value.endswith("}")):
        return '"' + unquote(value) + '"' if value.startswith('"') else value
    return unquote_expr(value)


def tables(directory):
    variables, outputs = [], []
    for path in sorted(directory.glob("*.tf")):
        with open(path) as f:
            parsed = hcl2.load(f)
        for block in parsed.get("variable", []):
            for name, body in block.items():
                if name.startswith("__"):
                    continue
                required = "default" not in body
                default = "" if required else f"`{cell(hcl_value(body['default']))}`"
                variables.append((name.strip('"'), cell(body.get("description", "")), f"`{unquote_expr(body.get('type', 'any'))}`", default, "yes" if required else "no"))
        for block in parsed.get("output", []):
            for name, body in block.items():
                if not name.startswith("__"):
                    outputs.append((name.strip('"'), cell(body.get("description", ""))))
    lines = [BEGIN, "## Inputs", ""]
    if variables:
        lines += ["| Name | Description | Type | Default | Required |", "|---|---|---|---|:---:|"]
        lines += [f"| `{n}` | {d} | {t} | {df} | {r} |" for n, d, t, df, r in variables]
    else:
        lines += ["None."]
    lines += ["", "## Outputs", ""]
    if outputs:
        lines += ["| Name | Description |", "|---|---|"]
        lines += [f"| `{n}` | {d} |" for n, d in outputs]
    else:
        lines += ["None."]
    return "\n".join(lines + [END])


def main():
    check = "--check" in sys.argv[1:]
    stale = []
    for readme in sorted(ROOT.rglob("README.md")):
        if ".terraform" in readme.parts:
            continue
        text = readme.read_text()
        if BEGIN not in text:
            continue
        new = re.sub(re.escape(BEGIN) + ".*?" + re.escape(END), lambda _: tables(readme.parent), text, flags=re.S)
        if new != text:
            stale.append(str(readme.relative_to(ROOT.parent)))
            if not check:
                readme.write_text(new)
    if check and stale:
        print("out of date (run scripts/terraform_docs.py): " + ", ".join(stale))
        return 1
    print(("checked" if check else "wrote") + " the inputs/outputs tables" + (f" ({', '.join(stale)})" if stale and not check else ""))
    return 0


if __name__ == "__main__":
    sys.exit(main())
