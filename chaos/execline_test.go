package chaos

import (
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// The exec line really runs under /bin/sh and parses back.
func TestExecLineRunsAndParses(t *testing.T) {
	log := filepath.Join(t.TempDir(), "exec's.log")
	cmd := exec.Command("/bin/sh", "-c", ExecLine("t01", "s1-c0-7-f", log, 300*time.Millisecond))
	cmd.Env = append(os.Environ(), "HODEI_JOB_ID=0-7", "HODEI_LEASE_TOKEN=42", "HODEI_ATTEMPT=2", "HODEI_WORKER_ID=w3")
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("%v: %s", err, out)
	}
	b, err := os.ReadFile(log)
	if err != nil {
		t.Fatal(err)
	}
	es, bad, err := ParseExecLog(strings.NewReader(string(b)))
	if err != nil || bad != 0 || len(es) != 1 {
		t.Fatalf("%q: %+v bad=%d err=%v", b, es, bad, err)
	}
	e := es[0]
	if e.JobID != "0-7" || e.Token != 42 || e.Attempt != 2 || e.Worker != "w3" || e.Tenant != "t01" || e.Key != "s1-c0-7-f" || e.PlannedMs != 300 {
		t.Fatalf("parsed %+v", e)
	}
	if d := time.Since(time.UnixMilli(e.AtMs)); d < 0 || d > time.Minute {
		t.Fatalf("start time %d is %v ago", e.AtMs, d)
	}
}
