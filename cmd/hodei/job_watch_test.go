package main

import (
	"bytes"
	"context"
	"encoding/json"
	"strings"
	"testing"
	"time"
)

// runFor executes the CLI with a context that ends after d (a watch runs
// until interrupted).
func runFor(t *testing.T, d time.Duration, args ...string) (string, string, error) {
	t.Helper()
	global = globalOpts{}
	root := newRootCmd()
	var out, errOut bytes.Buffer
	root.SetOut(&out)
	root.SetErr(&errOut)
	root.SetArgs(args)
	ctx, cancel := context.WithTimeout(context.Background(), d)
	defer cancel()
	err := root.ExecuteContext(ctx)
	return out.String(), errOut.String(), err
}

// TestCLIJobWatch: a watch from now prints its cursor; a later watch from
// that cursor prints the job's state changes, as text and as JSON lines.
func TestCLIJobWatch(t *testing.T) {
	addr := startTestDev(t, devOptions{nodes: 3, workers: 1})
	out, _, err := runFor(t, 2*time.Second, addr, "job", "watch", "--tenant", "cli", "-o", "json")
	if err != nil {
		t.Fatalf("watch: %v", err)
	}
	var first struct {
		Bookmark bool   `json:"bookmark"`
		Cursor   string `json:"cursor"`
	}
	if err := json.Unmarshal([]byte(strings.SplitN(out, "\n", 2)[0]), &first); err != nil || !first.Bookmark || first.Cursor == "" {
		t.Fatalf("first line is not a bookmark with a cursor (%v):\n%s", err, out)
	}
	if out, err := run(t, addr, "job", "submit", "--tenant", "cli", "--wait", "--", "true"); err != nil {
		t.Fatalf("submit: %v\n%s", err, out)
	}
	out, _, err = runFor(t, 3*time.Second, addr, "job", "watch", "--tenant", "cli", "--from", first.Cursor)
	if err != nil {
		t.Fatalf("watch --from: %v", err)
	}
	for _, want := range []string{"-->PENDING", "PENDING->RUNNING", "RUNNING->SUCCEEDED", "tenant=cli kind=shell"} {
		if !strings.Contains(out, want) {
			t.Fatalf("watch --from output lacks %q:\n%s", want, out)
		}
	}
	out, _, err = runFor(t, 3*time.Second, addr, "job", "watch", "--tenant", "cli", "--from", first.Cursor, "-o", "json")
	if err != nil {
		t.Fatal(err)
	}
	n := 0
	for _, line := range strings.Split(strings.TrimSpace(out), "\n") {
		var m struct {
			Event *struct {
				JobID string `json:"jobId"`
				To    string `json:"to"`
			} `json:"event"`
		}
		if err := json.Unmarshal([]byte(line), &m); err != nil {
			t.Fatalf("not a JSON line: %q", line)
		}
		if m.Event != nil {
			n++
		}
	}
	if n != 3 {
		t.Fatalf("%d events in JSON, want 3:\n%s", n, out)
	}
	// Bad input: a clear error.
	if _, _, err := runFor(t, 3*time.Second, addr, "job", "watch", "--from", "garbage!"); err == nil || !strings.Contains(err.Error(), "InvalidArgument") {
		t.Fatalf("bad cursor: %v", err)
	}
	if _, _, err := runFor(t, 3*time.Second, addr, "job", "watch", "--from", first.Cursor, "--from-now"); err == nil {
		t.Fatal("--from with --from-now: no error")
	}
}
