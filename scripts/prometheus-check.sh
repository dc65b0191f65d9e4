#!/usr/bin/env bash
# Checks the Prometheus rules and the Grafana dashboard against the real thing (CI; deploy/README.md):
# promtool checks and unit-tests the rules, then a real Prometheus (Debian's package) scrapes a
# `hodei dev` cluster that ran jobs, evaluates the rules without errors, and every metric name the
# rules and the dashboard use must exist in what it scraped.
set -euo pipefail
cd "$(dirname "$0")/.."
if ! command -v prometheus >/dev/null 2>&1 || ! command -v promtool >/dev/null 2>&1; then
  apt-get install -y -qq prometheus >/dev/null
fi
RULES=deploy/prometheus/rules.yml
DASH=deploy/grafana/hodei.json
PORT=${HODEI_PROM_PORT:-29090}
GRPC=${HODEI_PROM_GRPC_PORT:-27401}
HTTP=${HODEI_PROM_HTTP_PORT:-28401}
work=$(mktemp -d)
pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; rm -rf "$work"; }
trap cleanup EXIT
fail() { echo "prometheus-check: FAIL: $*" >&2; tail -20 "$work"/*.log >&2 || true; exit 1; }
# wait_for SECONDS WHAT CMD...: poll CMD until it succeeds.
wait_for() {
  local until=$(( $(date +%s) + $1 )) what=$2; shift 2
  until "$@" >/dev/null 2>&1; do
    [ "$(date +%s)" -lt "$until" ] || fail "timed out waiting for $what"
    sleep 1 # poll interval between condition checks
  done
}

promtool check rules "$RULES"
(cd deploy/prometheus && promtool test rules rules_test.yml)

make build >/dev/null
./bin/hodei dev --port "$GRPC" --http-port "$HTTP" --workers 2 >"$work/dev.log" 2>&1 &
pids+=($!)
ADDR="127.0.0.1:$GRPC,127.0.0.1:$((GRPC+1)),127.0.0.1:$((GRPC+2))"
wait_for 60 "hodei dev to be ready" grep -q "hodei dev ready" "$work/dev.log"
for i in 1 2 3 4 5; do
  ./bin/hodei --addr "$ADDR" job submit --tenant "t$i" --wait -- true >/dev/null
done
./bin/hodei --addr "$ADDR" job submit --tenant t1 --max-attempts 1 --wait -- false >/dev/null 2>&1 || true

cp "$RULES" "$work/rules.yml"
cat >"$work/prometheus.yml" <<CFG
global: {scrape_interval: 1s, evaluation_interval: 1s}
rule_files: [rules.yml]
scrape_configs:
  - job_name: hodei
    static_configs:
      - targets: ["127.0.0.1:$HTTP", "127.0.0.1:$((HTTP+1))", "127.0.0.1:$((HTTP+2))"]
CFG
prometheus --config.file="$work/prometheus.yml" --storage.tsdb.path="$work/tsdb" \
  --web.listen-address="127.0.0.1:$PORT" >"$work/prometheus.log" 2>&1 &
pids+=($!)
API="http://127.0.0.1:$PORT/api/v1"
targets_up() {
  [ "$(curl -fsS "$API/targets" | jq '[.data.activeTargets[] | select(.health == "up")] | length')" = 3 ]
}
wait_for 60 "Prometheus to scrape all three nodes" targets_up
rules_ok() { # every rule evaluated at least once, none with an error
  curl -fsS "$API/rules" | jq -e '[.data.groups[].rules[]] | length > 0 and all(.health == "ok")'
}
wait_for 30 "every rule to evaluate without error" rules_ok

have=$(curl -fsS "$API/label/__name__/values" | jq -r '.data[]')
# Metric names used: hodei_* identifiers, minus the histogram series suffixes' base check.
used=$( (grep -o 'hodei_[a-z_]*' "$RULES"; jq -r '.panels[].targets[].expr' "$DASH" | grep -o 'hodei_[a-z_]*') | sort -u)
missing=0
for m in $used; do
  if ! grep -qx "$m" <<<"$have"; then
    echo "prometheus-check: metric $m is used but not exported" >&2
    missing=1
  fi
done
[ "$missing" = 0 ] || fail "metrics missing (above)"
# Recording rules the dashboard uses must be defined.
for r in $(jq -r '.panels[].targets[].expr' "$DASH" | grep -o 'hodei:[a-z0-9_:]*' | sort -u); do
  grep -q "record: $r\$" "$RULES" || fail "dashboard uses recording rule $r that rules.yml does not define"
done
echo "prometheus-check: PASS ($(wc -w <<<"$used") metric names, rules healthy, 3 targets up)"
