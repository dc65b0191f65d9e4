package main

import (
	"context"
	"encoding/json"
	"log/slog"
	"strings"
	"testing"
	"time"
)

// TestCLIDeadLetters: a job out of attempts is DEAD, listed with --state
// dead, shown with its reason and attempt history; `job retry` and `job
// requeue` put it back; bad input is refused with the field named.
func TestCLIDeadLetters(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 90*time.Second)
	defer cancel()
	d, err := startDev(ctx, devOptions{nodes: 3, workers: 1, dataDir: t.TempDir()}, slog.New(slog.DiscardHandler))
	if err != nil {
		t.Fatal(err)
	}
	defer d.Close()
	addr := "--addr=" + strings.Join(d.addrs, ",")

	out, err := run(t, addr, "job", "submit", "--wait", "--max-attempts", "1", "--shell", "--", "echo doomed; exit 3")
	if err == nil || !strings.Contains(out, "DEAD") {
		t.Fatalf("submit --wait of a failing job: %v\n%s", err, out)
	}
	var id string
	for _, line := range strings.Split(out, "\n") {
		if f := strings.Fields(line); len(f) == 2 && f[0] == "ID:" {
			id = f[1]
		}
	}
	if !strings.Contains(out, "attempts exhausted") {
		t.Fatalf("no dead reason in:\n%s", out)
	}
	out, err = run(t, addr, "job", "list", "--state", "dead")
	if err != nil || !strings.Contains(out, id) {
		t.Fatalf("list --state dead: %v\n%s", err, out)
	}
	out, err = run(t, addr, "job", "retry", id)
	if err != nil || !strings.Contains(out, "retry 1") {
		t.Fatalf("retry: %v\n%s", err, out)
	}
	// It runs again and dies again: now with the first attempt in its history.
	deadline := time.Now().Add(30 * time.Second)
	for {
		out, err = run(t, addr, "job", "get", id)
		if err == nil && strings.Contains(out, "State:") && strings.Contains(out, "DEAD") && strings.Contains(out, "Earlier attempts:") {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("job did not die again with its history: %v\n%s", err, out)
		}
		time.Sleep(50 * time.Millisecond) // polling a CLI read, not synchronising goroutines
	}
	if !strings.Contains(out, "doomed") || !strings.Contains(out, "Retries:") {
		t.Fatalf("history table:\n%s", out)
	}
	out, err = run(t, addr, "job", "get", id, "-o", "json")
	if err != nil || !strings.Contains(out, `"history"`) || !strings.Contains(out, `"deadReason"`) {
		t.Fatalf("get -o json: %v\n%s", err, out)
	}
	out, err = run(t, addr, "job", "requeue", "--tenant", "default", "--since", "1h", "-o", "json")
	var rq struct {
		Requeued int `json:"requeued"`
	}
	if err != nil || json.Unmarshal([]byte(out), &rq) != nil || rq.Requeued != 1 {
		t.Fatalf("requeue: %v\n%s", err, out)
	}

	for _, tc := range []struct {
		args []string
		want string
	}{
		{[]string{"job", "retry", "0-999999"}, "NotFound"},
		{[]string{"job", "requeue", "--since", "yesterday"}, "--since"},
		{[]string{"job", "requeue", "--since", "1h", "--until", "2h"}, "InvalidArgument"},
		{[]string{"job", "requeue", "--tenant", "bad tenant"}, "tenant"},
		{[]string{"job", "requeue", "--limit", "20000"}, "--limit"},
		{[]string{"job", "list", "--state", "deadish"}, "dead"},
	} {
		_, err := run(t, append([]string{addr}, tc.args...)...)
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%v: err = %v, want it to mention %q", tc.args, err, tc.want)
		}
	}
}
