package main

import (
	"encoding/json"
	"strings"
	"testing"
)

// TestCLITenantQuota: limits through `operator tenant set`, a submit over
// max-queued refused with ResourceExhausted naming the limit, usage in
// `tenant list` (text and json), bad limits and constraints refused.
func TestCLITenantQuota(t *testing.T) {
	addr := startTestDev(t, devOptions{nodes: 1, workers: 0, shards: 2})

	out, err := run(t, addr, "operator", "tenant", "set", "shop", "--max-queued", "2", "--submit-rate", "100/s")
	if err != nil || !strings.Contains(out, "tenant shop: weight 1, max-queued 2, submit-rate 100/s burst 100 (in effect on shard") {
		t.Fatalf("set: %v\n%s", err, out)
	}
	for i := 0; i < 2; i++ {
		if out, err := run(t, addr, "job", "submit", "--tenant", "shop", "--", "true"); err != nil {
			t.Fatalf("submit %d: %v\n%s", i, err, out)
		}
	}
	_, err = run(t, addr, "job", "submit", "--tenant", "shop", "--", "true")
	if err == nil || !strings.Contains(err.Error(), "ResourceExhausted") || !strings.Contains(err.Error(), "max-queued limit of 2") {
		t.Fatalf("third submit: %v", err)
	}
	out, err = run(t, addr, "operator", "tenant", "list")
	if err != nil || !strings.Contains(out, "MAX-QUEUED") || !strings.Contains(out, "1/0") {
		t.Fatalf("list: %v\n%s", err, out)
	}
	out, err = run(t, addr, "-o", "json", "operator", "tenant", "list")
	var list struct {
		Tenants []struct {
			Limits struct {
				MaxQueued uint32 `json:"maxQueued"`
			} `json:"limits"`
			Usage struct {
				Queued        string `json:"queued"`
				RefusedQueued string `json:"refusedQueued"`
			} `json:"usage"`
		} `json:"tenants"`
	}
	if err != nil || json.Unmarshal([]byte(out), &list) != nil || len(list.Tenants) != 1 ||
		list.Tenants[0].Limits.MaxQueued != 2 || list.Tenants[0].Usage.Queued != "2" || list.Tenants[0].Usage.RefusedQueued != "1" {
		t.Fatalf("list -o json: %v %+v\n%s", err, list, out)
	}
	for _, tc := range []struct {
		args []string
		want string
	}{
		{[]string{"operator", "tenant", "set", "shop", "--burst", "5", "--submit-rate", "0"}, "needs a submit-rate"},
		{[]string{"operator", "tenant", "set", "shop", "--max-running", "2000000"}, "max-running"},
		{[]string{"operator", "tenant", "set", "shop", "--submit-rate", "fast"}, "--submit-rate"},
		{[]string{"job", "submit", "--constraint", "region in eu", "--", "true"}, "parentheses"},
	} {
		_, err := run(t, append([]string{addr}, tc.args...)...)
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%v: err = %v, want it to mention %q", tc.args, err, tc.want)
		}
	}
	out, err = run(t, addr, "job", "submit", "--tenant", "other", "--constraint", "region in (us,eu)", "--", "true")
	if err != nil {
		t.Fatalf("submit with a constraint: %v", err)
	}
	id := strings.Fields(out)[0]
	out, err = run(t, addr, "job", "get", id)
	if err != nil || !strings.Contains(out, "region in (eu,us)") {
		t.Fatalf("get: %v\n%s", err, out)
	}
}
