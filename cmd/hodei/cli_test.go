package main

import (
	"bytes"
	"context"
	"encoding/json"
	"log/slog"
	"strings"
	"testing"
	"time"
)

// run executes the hodei CLI in-process, like a shell would.
func run(t *testing.T, args ...string) (string, error) {
	t.Helper()
	global = globalOpts{}
	root := newRootCmd()
	var out, errOut bytes.Buffer
	root.SetOut(&out)
	root.SetErr(&errOut)
	root.SetArgs(args)
	err := root.Execute()
	return out.String(), err
}

// TestCLIAgainstDevCluster is the README's promise: a local cluster with
// workers, `job submit -- echo hello`, and `job get` shows SUCCEEDED with
// the output.
func TestCLIAgainstDevCluster(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	d, err := startDev(ctx, devOptions{nodes: 3, workers: 2, dataDir: t.TempDir()}, slog.New(slog.DiscardHandler))
	if err != nil {
		t.Fatal(err)
	}
	defer d.Close()
	addr := "--addr=" + strings.Join(d.addrs, ",")

	out, err := run(t, addr, "job", "submit", "--wait", "--", "echo", "hello")
	if err != nil {
		t.Fatalf("submit: %v\n%s", err, out)
	}
	// --wait prints the job block: "ID:  0-1".
	var id string
	for _, line := range strings.Split(out, "\n") {
		if f := strings.Fields(line); len(f) == 2 && f[0] == "ID:" {
			id = f[1]
		}
	}
	if !strings.Contains(out, "SUCCEEDED") {
		t.Fatalf("submit --wait output:\n%s", out)
	}
	out, err = run(t, addr, "job", "get", id, "-o", "json")
	if err != nil {
		t.Fatalf("get: %v", err)
	}
	var job struct {
		ID         string `json:"id"`
		State      string `json:"state"`
		LastResult struct {
			Output string `json:"output"` // base64 in protojson
		} `json:"lastResult"`
	}
	if err := json.Unmarshal([]byte(out), &job); err != nil {
		t.Fatalf("get -o json is not JSON: %v\n%s", err, out)
	}
	if job.ID != id || job.State != "JOB_STATE_SUCCEEDED" || job.LastResult.Output != "aGVsbG8K" {
		t.Fatalf("job = %+v", job)
	}
	out, err = run(t, addr, "job", "list", "--state", "succeeded")
	if err != nil || !strings.Contains(out, id) {
		t.Fatalf("list: %v\n%s", err, out)
	}

	// Bad input: a clear error, nothing changes.
	for _, tc := range []struct {
		args []string
		want string
	}{
		{[]string{"job", "get", "0-999999"}, "NotFound"},
		{[]string{"job", "get", "nonsense"}, "InvalidArgument"},
		{[]string{"job", "cancel", id}, "FailedPrecondition"},
		{[]string{"job", "list", "--state", "bogus"}, "unknown state"},
		{[]string{"job", "submit", "--", ""}, "InvalidArgument"},
		{[]string{"job", "submit", "--priority", "1000", "--", "true"}, "priority"},
		{[]string{"job", "submit", "--", "true", strings.Repeat("x", 1100<<10)}, "payload"},
	} {
		_, err := run(t, append([]string{addr}, tc.args...)...)
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%v: err = %v, want it to mention %q", tc.args, err, tc.want)
		}
	}
	// Nothing was created by the bad submits.
	out, err = run(t, addr, "job", "list", "-o", "json")
	if err != nil || strings.Count(out, `"id"`) != 1 {
		t.Fatalf("after bad input the cluster holds other jobs than %s: %v\n%s", id, err, out)
	}
	out, err = run(t, addr, "operator", "shards")
	if err != nil || !strings.Contains(out, "LEADER") {
		t.Fatalf("operator shards: %v\n%s", err, out)
	}
}
