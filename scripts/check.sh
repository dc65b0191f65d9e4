#!/usr/bin/env bash
# make check: formatting, vet, generated code in sync, import boundaries, tidy go.mod.
set -euo pipefail
cd "$(dirname "$0")/.."
fail=0
MOD=github.com/hodei-io/hodei

echo "== gofmt"
out=$(gofmt -l $(git ls-files '*.go'))
if [ -n "$out" ]; then echo "gofmt needed:"; echo "$out"; fail=1; fi

echo "== go vet"
go vet ./... || fail=1

echo "== import boundaries"
# package -> our packages it may import (DESIGN.md: proto <- fsm <- scheduler <- cluster <- cmd;
# transport is wired in by cluster/cmd; client depends on proto only).
declare -A allowed=(
  [proto]="proto"
  [fsm]="proto"
  [scheduler]="proto fsm"
  [transport]="proto"
  [cluster]="proto fsm scheduler transport"
  [client]="proto"
  [worker]="proto client"
  [chaos]="proto client"
)
for pkg in "${!allowed[@]}"; do
  [ -d "$pkg" ] || continue
  deps=$(go list -f '{{join .Imports "\n"}}{{"\n"}}{{join .TestImports "\n"}}' "./$pkg/..." 2>/dev/null | grep "^$MOD/" | sort -u || true)
  for d in $deps; do
    rel=${d#"$MOD/"}
    top=${rel%%/*}
    ok=0
    for a in ${allowed[$pkg]} "$pkg"; do
      [ "$top" = "$a" ] && ok=1
    done
    # transport/tlsutil is a stdlib-only leaf (checked below): the client
    # SDK and its users may load and verify certificates with it (issue 12)
    [ "$rel" = transport/tlsutil ] && ok=1
    # tests of server packages may use the client and worker to drive a real cluster
    if [ $ok = 0 ] && { [ "$top" = client ] || [ "$top" = worker ]; } && \
       go list -f '{{join .TestImports "\n"}}' "./$pkg/..." | grep -qx "$d" && \
       ! go list -f '{{join .Imports "\n"}}' "./$pkg/..." | grep -qx "$d"; then
      ok=1
    fi
    if [ $ok = 0 ]; then echo "forbidden import: $pkg -> $rel"; fail=1; fi
  done
done

# fsm/cron is pure (the FSM calls it from Apply): it imports none of ours.
if go list -f '{{join .Imports "\n"}}' ./fsm/cron | grep -q "^$MOD/"; then
  echo "forbidden import: fsm/cron must not import other Hodei packages"; fail=1
fi
# fsm/pipeline is pure too (Compile and Decide run in Apply): proto only.
if go list -f '{{join .Imports "\n"}}' ./fsm/pipeline | grep "^$MOD/" | grep -qv "^$MOD/proto/"; then
  echo "forbidden import: fsm/pipeline may import only Hodei's proto packages"; fail=1
fi

# transport/tlsutil is a leaf: the standard library only.
if go list -f '{{join .Imports "\n"}}' ./transport/tlsutil | grep -q '\.'; then
  echo "forbidden import: transport/tlsutil must import the standard library only:"
  go list -f '{{join .Imports "\n"}}' ./transport/tlsutil | grep '\.'; fail=1
fi

echo "== generated protobuf code up to date"
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
cp -r proto "$tmp/before"
make -s proto >/dev/null
if ! diff -r "$tmp/before" proto >/dev/null; then
  echo "generated code is out of date: run make proto and commit"; diff -r "$tmp/before" proto | head -20; fail=1
fi

echo "== go mod tidy"
cp go.mod "$tmp/go.mod"; cp go.sum "$tmp/go.sum"
go mod tidy
if ! diff -q "$tmp/go.mod" go.mod >/dev/null || ! diff -q "$tmp/go.sum" go.sum >/dev/null; then
  echo "go.mod/go.sum not tidy: run go mod tidy and commit"; cp "$tmp/go.mod" go.mod; cp "$tmp/go.sum" go.sum; fail=1
fi

if [ $fail = 0 ]; then echo "check: ok"; else echo "check: FAILED"; fi
exit $fail
