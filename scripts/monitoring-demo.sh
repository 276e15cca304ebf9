#!/usr/bin/env bash
# The dashboard and the rules against a live cluster, reported, never asserted:
#   1. `meridian demo` (3 regions x 3 nodes behind emulated WAN links, authentication on, HTTPS);
#   2. Debian's Prometheus scraping every node's /metrics every 2 s, with the `region` and `node`
#      target labels the dashboard and rules expect, and terraform/monitoring/prometheus/meridian-rules.yml
#      loaded;
#   3. `meridian bench --external` traffic through one node of each region for a while;
#   4. every query of the Grafana dashboard run through Prometheus' HTTP API ($region and $node = all,
#      $__rate_interval = 1m) and every rule's health read back;
# and a table: each panel, its queries, how many series they returned. This is how the dashboard
# was checked without Grafana (Debian has no package for it).
#
# Usage: scripts/monitoring-demo.sh [--seconds 90]
# Environment: MERIDIAN_BIN (default: build target/debug/meridian with cargo), PROM_PORT (19090),
# KEEP=1 (keep the scratch directory: demo logs, Prometheus data).
# Needs prometheus and promtool: `scripts/install-deps.sh --monitoring` installs them.
set -euo pipefail

seconds=90
while (($#)); do
  case "$1" in
    --seconds) seconds=${2:?}; shift 2 ;;
    -h|--help) sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
    *) echo "unknown argument: $1 (see --help)" >&2; exit 2 ;;
  esac
done

root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
prom_port=${PROM_PORT:-19090}
command -v prometheus >/dev/null 2>&1 || { echo "prometheus is missing: run scripts/install-deps.sh --monitoring" >&2; exit 1; }
if [[ -z "${MERIDIAN_BIN:-}" ]]; then
  echo "building meridian (cargo build -p meridian-node)" >&2
  (cd "$root" && cargo build --quiet -p meridian-node)
  MERIDIAN_BIN=$root/target/debug/meridian
fi
meridian=$MERIDIAN_BIN
tmp=$(mktemp -d -t meridian-monitoring-demo.XXXXXX)
demo_pid="" prom_pid=""
cleanup() {
  [[ -n "$prom_pid" ]] && kill "$prom_pid" 2>/dev/null && wait "$prom_pid" 2>/dev/null || true
  [[ -n "$demo_pid" ]] && kill -INT "$demo_pid" 2>/dev/null && wait "$demo_pid" 2>/dev/null || true
  if [[ "${KEEP:-0}" == 1 ]]; then echo "scratch kept in $tmp" >&2; else rm -rf "$tmp"; fi
}
trap cleanup EXIT

echo "starting the demo (logs: $tmp/demo.log)" >&2
"$meridian" demo --dir "$tmp/demo" >"$tmp/demo.log" 2>&1 &
demo_pid=$!
for _ in $(seq 1 300); do
  grep -q "Ctrl-C" "$tmp/demo.log" 2>/dev/null && break
  kill -0 "$demo_pid" 2>/dev/null || { echo "the demo stopped:" >&2; tail -20 "$tmp/demo.log" >&2; exit 1; }
  sleep 1
done
grep -q "Ctrl-C" "$tmp/demo.log" || { echo "the demo did not come up in 300 s" >&2; exit 1; }

certs=$tmp/demo/certs
python3 - "$tmp/demo/cluster.json" "$certs" "$root" >"$tmp/prometheus.yml" <<'EOF'
import json, sys
plan, certs, root = json.load(open(sys.argv[1])), sys.argv[2], sys.argv[3]
print("global: {scrape_interval: 2s, evaluation_interval: 2s}")
print("rule_files: ['%s/terraform/monitoring/prometheus/meridian-rules.yml']" % root)
print("scrape_configs:")
print("  - job_name: meridian")
print("    scheme: https")
print("    tls_config: {ca_file: '%s/ca.crt', cert_file: '%s/admin.crt', key_file: '%s/admin.key'}" % (certs, certs, certs))
print("    static_configs:")
for region in plan["regions"]:
    for node in region["nodes"]:
        print("      - targets: ['%s']" % node["http_addr"])
        print("        labels: {region: '%s', node: '%s'}" % (region["name"], node["name"]))
EOF
promtool check config "$tmp/prometheus.yml" >/dev/null
prometheus --config.file "$tmp/prometheus.yml" --storage.tsdb.path "$tmp/tsdb" \
  --web.listen-address "127.0.0.1:$prom_port" >"$tmp/prometheus.log" 2>&1 &
prom_pid=$!

# Traffic through the first node of each region, at eventual, local_quorum and quorum.
endpoints=$(python3 -c 'import json,sys; p=json.load(open(sys.argv[1])); print(",".join(r["nodes"][0]["client_addr"] for r in p["regions"]))' "$tmp/demo/cluster.json")
conn=(--ca-cert "$certs/ca.crt" --cert "$certs/admin.crt" --key "$certs/admin.key")
deadline=$((SECONDS + seconds))
while ((SECONDS < deadline)); do
  for level in eventual local_quorum quorum; do
    "$meridian" bench --external --endpoints "$endpoints" "${conn[@]}" --consistency "$level" \
      --clients 6 --ops 40 --skip-baseline >/dev/null 2>>"$tmp/bench.log" || true
  done
done
sleep 5

python3 - "$root/terraform/monitoring/grafana/meridian.json" "http://127.0.0.1:$prom_port" <<'EOF'
import json, sys, urllib.parse, urllib.request
dashboard, prom = json.load(open(sys.argv[1])), sys.argv[2]
def query(expr):
    url = prom + "/api/v1/query?" + urllib.parse.urlencode({"query": expr})
    answer = json.load(urllib.request.urlopen(url, timeout=10))
    return len(answer["data"]["result"]) if answer["status"] == "success" else -1
panels = queries = with_data = 0
print("| panel | series per query |")
print("|---|---|")
for panel in dashboard["panels"]:
    targets = panel.get("targets", [])
    if not targets:
        continue
    panels += 1
    counts = []
    for target in targets:
        expr = target["expr"].replace("$region", ".*").replace("$node", ".*").replace("$__rate_interval", "1m")
        counts.append(query(expr))
        queries += 1
        with_data += counts[-1] > 0
    print(f"| {panel['title']} | {', '.join(map(str, counts))} |")
print(f"\n{panels} panels, {queries} queries, {with_data} returned series (0: no event of that kind "
      "happened in the run, e.g. no hint dropped; -1: the query failed)")
rules = json.load(urllib.request.urlopen(prom + "/api/v1/rules", timeout=10))["data"]["groups"]
health = [(r["name"], r["health"], r.get("lastError", "")) for g in rules for r in g["rules"]]
bad = [h for h in health if h[1] != "ok"]
print(f"{len(health)} rules evaluated, {len(health) - len(bad)} healthy" + "".join(f"\n  {n}: {h} {e}" for n, h, e in bad))
firing = [r["name"] for g in rules for r in g["rules"] if r.get("type") == "alerting" and r.get("state") != "inactive"]
print("alerts pending or firing: " + (", ".join(firing) if firing else "none"))
EOF
