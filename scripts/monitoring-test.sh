#!/usr/bin/env bash
# The monitoring checks of `make test` (docs/monitoring.md), on terraform/monitoring/:
#  1. `promtool check rules` and `promtool test rules` of the Prometheus rules and their unit tests;
#  2. the Grafana dashboard parses as JSON and holds what an import needs (a title, uid, the
#     DS_PROMETHEUS datasource variable, panels with unique ids, every query on ${DS_PROMETHEUS});
#  3. every alert's runbook_url ends in an anchor that docs/monitoring.md has as a heading.
# That the metric names they use exist is node/tests/monitoring.rs (cargo test), against a running node.
# promtool: Debian's prometheus package (`scripts/install-deps.sh --monitoring`, which
# `make monitoring-test` runs).
set -euo pipefail
cd "$(dirname "$0")/.."

rules=terraform/monitoring/prometheus/meridian-rules.yml
rule_tests=terraform/monitoring/prometheus/meridian-rules.test.yml
dashboard=terraform/monitoring/grafana/meridian.json
runbook=docs/monitoring.md

command -v promtool >/dev/null 2>&1 || { echo "promtool is missing: scripts/install-deps.sh --monitoring" >&2; exit 1; }
echo "== $(promtool --version 2>&1 | head -1)"

echo "== promtool check rules $rules"
promtool check rules "$rules"

echo "== promtool test rules $rule_tests"
promtool test rules "$rule_tests"

echo "== dashboard $dashboard"
python3 - "$dashboard" <<'PY'
import json, sys

path = sys.argv[1]
with open(path) as f:
    board = json.load(f)  # a syntax error fails here, naming the line
problems = []
for field in ("title", "uid", "panels", "templating"):
    if field not in board:
        problems.append(f"no top-level {field!r}")
variables = {v.get("name"): v for v in board.get("templating", {}).get("list", [])}
if variables.get("DS_PROMETHEUS", {}).get("type") != "datasource":
    problems.append("no datasource variable DS_PROMETHEUS (the Prometheus chosen on import)")

def panels(items):
    for panel in items:
        yield panel
        yield from panels(panel.get("panels", []))

ids, queries = set(), 0
for panel in panels(board.get("panels", [])):
    where = f"panel {panel.get('id')} {panel.get('title')!r}"
    if "id" not in panel or panel["id"] in ids:
        problems.append(f"{where}: missing or duplicate id")
    ids.add(panel.get("id"))
    if panel.get("type") == "row":
        continue
    if not panel.get("targets"):
        problems.append(f"{where}: no queries")
    if panel.get("datasource", {}).get("uid") != "${DS_PROMETHEUS}":
        problems.append(f"{where}: datasource is not ${{DS_PROMETHEUS}}")
    for target in panel.get("targets", []):
        queries += 1
        if not target.get("expr", "").strip():
            problems.append(f"{where}: a target without expr")
if problems:
    sys.exit(f"{path}:\n  " + "\n  ".join(problems))
print(f"  SUCCESS: {len(ids)} panels, {queries} queries")
PY

echo "== runbook anchors in $runbook"
python3 - "$rules" "$runbook" <<'PY'
import re, sys

rules, runbook = sys.argv[1], sys.argv[2]
# GitHub's anchor of a heading: lowercase, punctuation but '-' and '_' dropped, spaces to '-'.
with open(runbook) as f:
    anchors = {re.sub(r"[^a-z0-9 _-]", "", line.lstrip("#").strip().lower()).replace(" ", "-")
               for line in f if line.startswith("#")}
with open(rules) as f:
    text = f.read()
alerts = re.findall(r"^\s*- alert: (\S+)", text, re.M)
urls = re.findall(r'^\s*runbook_url: "?([^"\s]+)', text, re.M)
missing = [u for u in urls if u.partition("#")[2] not in anchors]
if len(urls) != len(alerts):
    missing.append(f"{len(alerts)} alerts but {len(urls)} runbook_url annotations")
if missing:
    sys.exit(f"runbook anchors missing from {runbook}:\n  " + "\n  ".join(missing))
print(f"  SUCCESS: {len(urls)} alerts, each with a runbook section")
PY
