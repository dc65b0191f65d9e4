package main

import (
	"encoding/json"
	"strings"
	"testing"
	"time"
)

// TestCLISchedules drives `hodei schedule ...` against a dev cluster, in
// text and json.
func TestCLISchedules(t *testing.T) {
	addr := startTestDev(t, devOptions{nodes: 1, workers: 1, shards: 2})

	out, err := run(t, addr, "schedule", "create", "tick", "--tenant", "acme", "--cron", "@every 1s", "--overlap", "allow-all", "--", "echo", "tick")
	if err != nil || !strings.Contains(out, "Catch-up window:") || !strings.Contains(out, "1h0m0s") || !strings.Contains(out, "allow-all") {
		t.Fatalf("create: %v\n%s", err, out)
	}
	type sched struct {
		ID              string `json:"id"`
		Fired           string `json:"fired"`
		Paused          bool   `json:"paused"`
		PauseNote       string `json:"pauseNote"`
		CatchUpWindowMs string `json:"catchUpWindowMs"`
		LastFireMs      string `json:"lastFireMs"`
	}
	get := func() sched {
		t.Helper()
		out, err := run(t, addr, "-o", "json", "schedule", "get", "tick", "--tenant", "acme")
		if err != nil {
			t.Fatalf("get: %v", err)
		}
		var s sched
		if err := json.Unmarshal([]byte(out), &s); err != nil {
			t.Fatalf("get -o json is not JSON: %v\n%s", err, out)
		}
		return s
	}
	deadline := time.Now().Add(20 * time.Second)
	for s := get(); s.Fired == "" || s.Fired == "1"; s = get() {
		if time.Now().After(deadline) {
			t.Fatalf("the schedule did not fire twice: %+v", s)
		}
		time.Sleep(100 * time.Millisecond)
	}
	if s := get(); s.CatchUpWindowMs != "3600000" {
		t.Fatalf("get: %+v", s)
	}
	out, err = run(t, addr, "schedule", "list")
	if err != nil || !strings.Contains(out, "acme") || !strings.Contains(out, "@every 1s") {
		t.Fatalf("list: %v\n%s", err, out)
	}
	out, err = run(t, addr, "schedule", "pause", "tick", "--tenant", "acme", "--note", "maintenance")
	if err != nil || !strings.Contains(out, "paused: maintenance") {
		t.Fatalf("pause: %v\n%s", err, out)
	}
	if s := get(); !s.Paused || s.PauseNote != "maintenance" {
		t.Fatalf("after pause: %+v", s)
	}
	out, err = run(t, addr, "schedule", "trigger", "tick", "--tenant", "acme")
	if err != nil || !strings.Contains(out, "PENDING") && !strings.Contains(out, "RUNNING") && !strings.Contains(out, "SUCCEEDED") {
		t.Fatalf("trigger: %v\n%s", err, out)
	}
	out, err = run(t, addr, "schedule", "backfill", "tick", "--tenant", "acme", "--from", "-3s", "--to", "-1s")
	if err != nil || !strings.Contains(out, "slots,") {
		t.Fatalf("backfill: %v\n%s", err, out)
	}
	out, err = run(t, addr, "schedule", "resume", "tick", "--tenant", "acme")
	if err != nil || !strings.Contains(out, "State:") || strings.Contains(out, "paused") {
		t.Fatalf("resume: %v\n%s", err, out)
	}
	for _, tc := range []struct {
		args []string
		want string
	}{
		{[]string{"schedule", "create", "x", "--cron", "61 * * * *", "--", "true"}, "InvalidArgument: invalid schedule: spec: minute field"},
		{[]string{"schedule", "create", "x", "--cron", "@daily", "--tz", "Mars/Base", "--", "true"}, "time_zone: unknown time zone"},
		{[]string{"schedule", "create", "x", "--cron", "@daily", "--start", "2030-01-01T00:00:00Z", "--end", "2029-01-01T00:00:00Z", "--", "true"}, "end_ms"},
		{[]string{"schedule", "create", "x", "--cron", "@daily", "--overlap", "sometimes", "--", "true"}, "--overlap"},
		{[]string{"schedule", "create", "x", "--", "true"}, "--cron is required"},
		{[]string{"schedule", "backfill", "tick", "--tenant", "acme", "--from", "-2h", "--to", "now"}, "more than 1000 slots"},
		{[]string{"schedule", "get", "nope"}, "NotFound"},
	} {
		_, err := run(t, append([]string{addr}, tc.args...)...)
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%v: err = %v, want it to mention %q", tc.args, err, tc.want)
		}
	}
	out, err = run(t, addr, "schedule", "delete", "tick", "--tenant", "acme")
	if err != nil || !strings.Contains(out, "deleted tick") {
		t.Fatalf("delete: %v\n%s", err, out)
	}
	out, err = run(t, addr, "-o", "json", "schedule", "list")
	if err != nil || strings.TrimSpace(out) != "{}" {
		t.Fatalf("list after delete: %v\n%s", err, out)
	}
}
