#!/usr/bin/env bash
# The container scenario of CI (docs: deploy/README.md): build the image, bring the 3-node compose
# cluster up, run jobs through it while one container is restarted and the container of the node
# leading the most shards is killed, and check that every acknowledged job succeeds and that every
# node's gossip view shows every member alive. Needs a Docker engine and docker-compose (or the
# `docker compose` plugin); pulls nothing (the image is FROM scratch).
# Usage: scripts/compose-test.sh [JOBS_PER_PHASE]   (default 60)
set -euo pipefail
cd "$(dirname "$0")/.."
JOBS=${1:-60}
DEADLINE=${HODEI_COMPOSE_DEADLINE:-300} # seconds for the whole scenario
PROJECT=hodeici$$
export HODEI_PORT_BASE=${HODEI_PORT_BASE:-1740} HODEI_HTTP_PORT_BASE=${HODEI_HTTP_PORT_BASE:-1840}
ADDRS="127.0.0.1:${HODEI_PORT_BASE}1,127.0.0.1:${HODEI_PORT_BASE}2,127.0.0.1:${HODEI_PORT_BASE}3"
start=$(date +%s)

if docker compose version >/dev/null 2>&1; then COMPOSE=(docker compose); else COMPOSE=(docker-compose); fi
COMPOSE+=(-p "$PROJECT" -f deploy/docker-compose.yml)

log() { echo "compose-test [$(( $(date +%s) - start ))s]: $*"; }
fail() { log "FAIL: $*"; "${COMPOSE[@]}" logs --no-color --tail 40 >&2 || true; exit 1; }
# wait_for SECONDS WHAT CMD...: run CMD until it succeeds, or fail.
wait_for() {
  local secs=$1 what=$2; shift 2
  local until=$(( $(date +%s) + secs ))
  until "$@" >/dev/null 2>&1; do
    [ "$(date +%s)" -lt "$until" ] || fail "timed out after ${secs}s waiting for $what"
    [ $(( $(date +%s) - start )) -lt "$DEADLINE" ] || fail "scenario deadline ${DEADLINE}s passed waiting for $what"
    sleep 1 # a poll interval between condition checks, not a synchronisation
  done
}

make build image >/dev/null
HODEI=./bin/hodei
cleanup() { "${COMPOSE[@]}" down -v --remove-orphans >/dev/null 2>&1 || true; }
trap cleanup EXIT
"${COMPOSE[@]}" up -d >/dev/null 2>&1 || fail "compose up"
log "cluster starting ($PROJECT)"

# every node answers and every shard has a leader
ready() {
  for i in 1 2 3; do
    curl -fsS "http://127.0.0.1:${HODEI_HTTP_PORT_BASE}$i/readyz" >/dev/null || return 1
  done
}
wait_for 90 "every node ready (/readyz)" ready
log "ready"

# gossip_alive N: every reachable node's view shows N members alive and none otherwise
gossip_alive() {
  local want=$1 i n
  for i in 1 2 3; do
    out=$($HODEI --addr "127.0.0.1:${HODEI_PORT_BASE}$i" -o json operator members 2>/dev/null) || return 1
    n=$(jq '[.members[]? | select(.state == "alive")] | length' <<<"$out")
    [ "$n" = "$want" ] || return 1
  done
}
# each node sees the two others alive (a node's own entry is alive too in memberlist's view)
wait_for 60 "gossip to show all 3 nodes alive on every node" gossip_alive 3
log "gossip: all members alive"

ACKED=$(mktemp)
submit() { # submit N jobs, recording the ids of the acknowledged ones
  local n=$1 k id
  for k in $(seq 1 "$n"); do
    if id=$($HODEI --addr "$ADDRS" -o json job submit --tenant "t$((k % 7))" -- /hodei --version 2>/dev/null | jq -r '.id'); then
      [ -n "$id" ] && [ "$id" != null ] && echo "$id" >>"$ACKED"
    fi
  done
}
submit "$JOBS"
log "phase 1: $(wc -l <"$ACKED") jobs acknowledged"

"${COMPOSE[@]}" restart -t 10 n2 >/dev/null 2>&1 || fail "restart n2"
submit "$JOBS"
log "phase 2 (after restarting n2): $(wc -l <"$ACKED") jobs acknowledged"
wait_for 90 "every node ready after the restart" ready

# the node leading the most shards
leader=$($HODEI --addr "$ADDRS" -o json operator shards | jq -r '[.shards[].leaderId] | group_by(.) | max_by(length) | .[0]')
[ -n "$leader" ] && [ "$leader" != null ] || fail "no shard leader found"
cid=$("${COMPOSE[@]}" ps -q "$leader")
docker kill "$cid" >/dev/null || fail "docker kill $leader"
log "killed the container of $leader (a killed container stays down until started)"
submit "$JOBS"
log "phase 3 (after killing $leader): $(wc -l <"$ACKED") jobs acknowledged"

all_succeeded() {
  local id state
  while read -r id; do
    state=$($HODEI --addr "$ADDRS" -o json job get "$id" 2>/dev/null | jq -r '.state') || return 1
    [ "$state" = JOB_STATE_SUCCEEDED ] || { echo "$id $state"; return 1; }
  done <"$ACKED"
}
wait_for 120 "every acknowledged job to succeed" all_succeeded
acked=$(wc -l <"$ACKED")
[ "$acked" -ge $(( JOBS * 2 )) ] || fail "only $acked of $(( JOBS * 3 )) submits were acknowledged"
log "all $acked acknowledged jobs succeeded with $leader down"
docker start "$cid" >/dev/null || fail "docker start $leader"
wait_for 90 "every node ready after $leader came back" ready
wait_for 60 "gossip to show all 3 nodes alive again" gossip_alive 3
log "PASS: $acked acknowledged jobs all succeeded; gossip alive on every node"
