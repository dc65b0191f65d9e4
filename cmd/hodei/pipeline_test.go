package main

import (
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// TestCLIPipelines drives `hodei pipeline ...` against a dev cluster (shell
// workers), in text and json: the README's three-step pipeline, a failing
// one retried with --from, a cancel mid-run, and bad input.
func TestCLIPipelines(t *testing.T) {
	addr := startTestDev(t, devOptions{nodes: 1, workers: 1, shards: 2})
	dir := t.TempDir()
	write := func(name, body string) string {
		t.Helper()
		p := filepath.Join(dir, name)
		if err := os.WriteFile(p, []byte(body), 0o600); err != nil {
			t.Fatal(err)
		}
		return p
	}
	ok := write("ok.yaml", `name: hello
steps:
  - id: fetch
    command: echo fetching
  - id: test
    depends_on: [fetch]
    for_each: [unit, e2e]
    command: ["echo", "testing {{item}}"]
  - id: report
    depends_on: [test]
    trigger_rule: all_done
    command: echo done
`)
	out, err := run(t, addr, "pipeline", "submit", ok, "--wait")
	if err != nil || !strings.Contains(out, "SUCCEEDED") || !strings.Contains(out, "test[1]") || !strings.Contains(out, "STEP") {
		t.Fatalf("submit --wait: %v\n%s", err, out)
	}
	var id string
	for _, line := range strings.Split(out, "\n") {
		if f := strings.Fields(line); len(f) == 2 && f[0] == "ID:" {
			id = f[1]
		}
	}
	if !strings.HasPrefix(id, "p") {
		t.Fatalf("no pipeline id in\n%s", out)
	}
	out, err = run(t, addr, "-o", "json", "pipeline", "get", id)
	if err != nil {
		t.Fatal(err)
	}
	var got struct {
		ID    string `json:"id"`
		State string `json:"state"`
		Steps []struct {
			ID    string `json:"id"`
			State string `json:"state"`
			JobID string `json:"jobId"`
			Runs  int    `json:"runs"`
		} `json:"steps"`
	}
	if err := json.Unmarshal([]byte(out), &got); err != nil {
		t.Fatalf("get -o json: %v\n%s", err, out)
	}
	if got.ID != id || got.State != "PIPELINE_STATE_SUCCEEDED" || len(got.Steps) != 4 {
		t.Fatalf("get: %+v", got)
	}
	for _, s := range got.Steps {
		if s.State != "STEP_STATE_SUCCEEDED" || s.JobID == "" || s.Runs != 1 {
			t.Fatalf("step %+v", s)
		}
	}
	jobID := got.Steps[0].JobID
	out, err = run(t, addr, "job", "get", jobID)
	if err != nil || !strings.Contains(out, "Pipeline:") || !strings.Contains(out, id+", step fetch") {
		t.Fatalf("job get of a step job: %v\n%s", err, out)
	}
	out, err = run(t, addr, "pipeline", "list")
	if err != nil || !strings.Contains(out, id) || !strings.Contains(out, "hello") {
		t.Fatalf("list: %v\n%s", err, out)
	}

	// A failing step, continue policy: FAILED; retry --from a step that
	// does not exist is InvalidArgument; retry runs it again (still fails).
	bad := write("fail.json", `{"failure_policy": "continue", "steps": [
  {"id": "ok", "command": "true"},
  {"id": "boom", "command": "exit 3", "max_attempts": 1},
  {"id": "after", "depends_on": ["boom"], "command": "true"}]}`)
	out, err = run(t, addr, "pipeline", "submit", bad, "--wait")
	if err == nil || !strings.Contains(err.Error(), "FAILED") || !strings.Contains(out, "exit status 3") {
		t.Fatalf("failing pipeline: %v\n%s", err, out)
	}
	fid := ""
	for _, line := range strings.Split(out, "\n") {
		if f := strings.Fields(line); len(f) == 2 && f[0] == "ID:" {
			fid = f[1]
		}
	}
	if _, err := run(t, addr, "pipeline", "retry", fid, "--from", "nope"); err == nil || !strings.Contains(err.Error(), `InvalidArgument: pipeline `+fid+` has no step "nope"`) {
		t.Fatalf("retry --from nope: %v", err)
	}
	out, err = run(t, addr, "pipeline", "retry", fid, "--from", "ok", "--wait")
	if err == nil || !strings.Contains(out, "Retries:") {
		t.Fatalf("retry --from ok: %v\n%s", err, out)
	}

	// Cancel mid-run.
	slow := write("slow.yaml", "steps:\n  - id: nap\n    command: sleep 60\n  - id: never\n    depends_on: [nap]\n    command: 'true'\n")
	out, err = run(t, addr, "pipeline", "submit", slow)
	if err != nil {
		t.Fatalf("submit slow: %v\n%s", err, out)
	}
	sid := ""
	for _, line := range strings.Split(out, "\n") {
		if f := strings.Fields(line); len(f) == 2 && f[0] == "ID:" {
			sid = f[1]
		}
	}
	deadline := time.Now().Add(20 * time.Second)
	for {
		out, err = run(t, addr, "pipeline", "get", sid)
		if err == nil && strings.Contains(out, "nap    RUNNING") {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("nap never ran: %v\n%s", err, out)
		}
		time.Sleep(100 * time.Millisecond)
	}
	out, err = run(t, addr, "pipeline", "cancel", sid, "--reason", "enough")
	if err != nil || !strings.Contains(out, "CANCELLED (cancelled: enough)") || !strings.Contains(out, "never  SKIPPED") {
		t.Fatalf("cancel: %v\n%s", err, out)
	}

	// Bad input never reaches the cluster, or is refused by it.
	broken := write("broken.yaml", "steps:\n  - id: a\n    command: [x\n")
	if _, err := run(t, addr, "pipeline", "submit", broken); err == nil || !strings.Contains(err.Error(), "line 3, column") {
		t.Fatalf("broken file: %v", err)
	}
	cyc := write("cycle.yaml", "steps:\n  - {id: a, depends_on: [b], command: 'true'}\n  - {id: b, depends_on: [a], command: 'true'}\n")
	if _, err := run(t, addr, "pipeline", "submit", cyc); err == nil || !strings.Contains(err.Error(), "InvalidArgument: invalid pipeline: cycle: a → b → a") {
		t.Fatalf("cycle: %v", err)
	}
	if _, err := run(t, addr, "pipeline", "get", "nope"); err == nil || !strings.Contains(err.Error(), "InvalidArgument") {
		t.Fatalf("get nope: %v", err)
	}
	if _, err := run(t, addr, "pipeline", "get", "p0-999"); err == nil || !strings.Contains(err.Error(), "NotFound") {
		t.Fatalf("get p0-999: %v", err)
	}
}
