package main

import (
	"bytes"
	"context"
	"encoding/json"
	"log/slog"
	"os"
	"path/filepath"
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
// startTestDev starts a dev cluster for a CLI test (within 60 s; stopped
// when the test ends) and returns the --addr flag that reaches it.
func startTestDev(t *testing.T, o devOptions) string {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	t.Cleanup(cancel)
	if o.dataDir == "" {
		o.dataDir = t.TempDir()
	}
	d, err := startDev(ctx, o, slog.New(slog.DiscardHandler))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { d.Close() })
	return "--addr=" + strings.Join(d.addrs, ",")
}

func TestCLIAgainstDevCluster(t *testing.T) {
	addr := startTestDev(t, devOptions{nodes: 3, workers: 2})

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

// TestCLISnapshotRoundTrip: `operator snapshot save` on one dev cluster,
// `operator snapshot restore` on another, the same jobs; a corrupt file and
// a second restore without --force are refused.
func TestCLISnapshotRoundTrip(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 90*time.Second)
	defer cancel()
	quiet := slog.New(slog.DiscardHandler)
	src, err := startDev(ctx, devOptions{nodes: 1, workers: 1, shards: 2, dataDir: t.TempDir()}, quiet)
	if err != nil {
		t.Fatal(err)
	}
	defer src.Close()
	saddr := "--addr=" + strings.Join(src.addrs, ",")
	jobID := func(out string) string {
		var v struct {
			ID  string `json:"id"`
			Job struct {
				ID string `json:"id"`
			} `json:"job"`
		}
		if err := json.Unmarshal([]byte(out), &v); err != nil {
			t.Fatalf("not JSON: %v\n%s", err, out)
		}
		return v.ID + v.Job.ID
	}
	out, err := run(t, saddr, "-o", "json", "job", "submit", "--wait", "--", "echo", "hello")
	if err != nil {
		t.Fatalf("submit: %v\n%s", err, out)
	}
	ids := []string{jobID(out)}
	for _, tenant := range []string{"a", "b", "c"} {
		out, err := run(t, saddr, "-o", "json", "job", "submit", "--tenant", tenant, "--delay", "1h", "--", "true")
		if err != nil {
			t.Fatalf("submit: %v\n%s", err, out)
		}
		ids = append(ids, jobID(out))
	}

	file := filepath.Join(t.TempDir(), "cluster.hodeisnap")
	out, err = run(t, saddr, "operator", "snapshot", "save", file)
	if err != nil || !strings.Contains(out, "sha256") || !strings.Contains(out, "4 jobs in 2 shards") {
		t.Fatalf("save: %v\n%s", err, out)
	}
	data, err := os.ReadFile(file)
	if err != nil {
		t.Fatal(err)
	}

	dst, err := startDev(ctx, devOptions{nodes: 1, workers: 0, shards: 2, dataDir: t.TempDir()}, quiet)
	if err != nil {
		t.Fatal(err)
	}
	defer dst.Close()
	daddr := "--addr=" + strings.Join(dst.addrs, ",")
	bad := filepath.Join(t.TempDir(), "bad")
	data[len(data)/3] ^= 0x10
	if err := os.WriteFile(bad, data, 0o644); err != nil {
		t.Fatal(err)
	}
	if out, err := run(t, daddr, "operator", "snapshot", "restore", bad); err == nil || !strings.Contains(err.Error(), "InvalidArgument") {
		t.Fatalf("restore of a corrupt file: %v\n%s", err, out)
	}
	out, err = run(t, daddr, "operator", "snapshot", "restore", file)
	if err != nil || !strings.Contains(out, "RESTORED AT") {
		t.Fatalf("restore: %v\n%s", err, out)
	}
	for _, id := range ids {
		a, err1 := run(t, saddr, "job", "get", id, "-o", "json")
		b, err2 := run(t, daddr, "job", "get", id, "-o", "json")
		if err1 != nil || err2 != nil || a != b {
			t.Fatalf("job %s: source %v\n%s\ntarget %v\n%s", id, err1, a, err2, b)
		}
	}
	if out, err := run(t, daddr, "operator", "snapshot", "restore", file); err == nil || !strings.Contains(err.Error(), "FailedPrecondition") {
		t.Fatalf("second restore without --force: %v\n%s", err, out)
	}
	if out, err := run(t, daddr, "operator", "snapshot", "restore", "--force", file); err != nil {
		t.Fatalf("restore --force: %v\n%s", err, out)
	}
}

// TestCLITenantWeights: `operator tenant set NAME --weight N` and `operator
// tenant list` (text and -o json); bad weights are refused and change
// nothing.
func TestCLITenantWeights(t *testing.T) {
	addr := startTestDev(t, devOptions{nodes: 1, workers: 0, shards: 2})

	out, err := run(t, addr, "operator", "tenant", "list")
	if err != nil || !strings.Contains(out, "no tenant settings") {
		t.Fatalf("list on a new cluster: %v\n%s", err, out)
	}
	out, err = run(t, addr, "operator", "tenant", "set", "heavy", "--weight", "3")
	if err != nil || !strings.Contains(out, "tenant heavy: weight 3 (in effect on shard") {
		t.Fatalf("set: %v\n%s", err, out)
	}
	out, err = run(t, addr, "operator", "tenant", "list")
	if err != nil || !strings.Contains(out, "SHARD APPLIES") || !strings.Contains(out, "heavy") {
		t.Fatalf("list: %v\n%s", err, out)
	}
	for _, tc := range []struct {
		args []string
		want string
	}{
		{[]string{"operator", "tenant", "set", "heavy", "--weight", "0"}, "InvalidArgument"},
		{[]string{"operator", "tenant", "set", "heavy", "--weight", "1001"}, "InvalidArgument"},
		{[]string{"operator", "tenant", "set", "", "--weight", "2"}, "InvalidArgument"},
		{[]string{"operator", "tenant", "set", "no/slash", "--weight", "2"}, "InvalidArgument"},
		{[]string{"operator", "tenant", "set", "heavy"}, `"weight" not set`},
	} {
		_, err := run(t, append([]string{addr}, tc.args...)...)
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%v: err = %v, want it to mention %q", tc.args, err, tc.want)
		}
	}
	out, err = run(t, addr, "-o", "json", "operator", "tenant", "list")
	if err != nil {
		t.Fatalf("list -o json: %v", err)
	}
	var list struct {
		Tenants []struct {
			Tenant      string `json:"tenant"`
			Weight      uint32 `json:"weight"`
			ShardWeight uint32 `json:"shardWeight"`
		} `json:"tenants"`
	}
	if err := json.Unmarshal([]byte(out), &list); err != nil {
		t.Fatalf("list -o json is not JSON: %v\n%s", err, out)
	}
	if len(list.Tenants) != 1 || list.Tenants[0].Tenant != "heavy" || list.Tenants[0].Weight != 3 || list.Tenants[0].ShardWeight != 3 {
		t.Fatalf("after bad input: %+v", list)
	}
	out, err = run(t, addr, "-o", "json", "operator", "tenant", "set", "heavy", "--weight", "1")
	if err != nil {
		t.Fatalf("set -o json: %v", err)
	}
	var set struct {
		Tenant struct {
			Tenant      string `json:"tenant"`
			Weight      uint32 `json:"weight"`
			ShardWeight uint32 `json:"shardWeight"`
		} `json:"tenant"`
	}
	if err := json.Unmarshal([]byte(out), &set); err != nil || set.Tenant.Tenant != "heavy" || set.Tenant.Weight != 1 || set.Tenant.ShardWeight != 1 {
		t.Fatalf("set -o json: %v %+v\n%s", err, set, out)
	}
}
