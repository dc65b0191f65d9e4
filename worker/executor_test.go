package worker

import (
	"bytes"
	"context"
	"strings"
	"testing"
	"time"

	hodeiv1 "github.com/hodei-io/hodei/proto/hodeiv1"
)

func job(shell bool, timeout time.Duration, argv ...string) *hodeiv1.Job {
	return &hodeiv1.Job{Id: "j1", Spec: &hodeiv1.JobSpec{Command: argv, Shell: shell, TimeoutMs: timeout.Milliseconds()}}
}

func run(t *testing.T, j *hodeiv1.Job) Result {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	r := (&ShellExecutor{}).Run(ctx, j)
	t.Logf("result: exit=%d err=%q retryable=%v out=%.200q", r.ExitCode, r.Err, r.Retryable, r.Output)
	if r.Started.IsZero() || r.Finished.Before(r.Started) {
		t.Fatalf("bad times %v %v", r.Started, r.Finished)
	}
	return r
}

func TestShellTrueFalse(t *testing.T) {
	r := run(t, job(false, 0, "true"))
	if !r.Success() || r.ExitCode != 0 || r.Err != "" {
		t.Fatalf("true: %+v", r)
	}
	r = run(t, job(false, 0, "false"))
	if r.Success() || r.ExitCode != 1 || !r.Retryable || r.Err != "" {
		t.Fatalf("false: %+v", r)
	}
}

func TestShellExitCodeAndOutput(t *testing.T) {
	r := run(t, job(true, 0, "echo hi; echo err >&2; exit 3"))
	if r.ExitCode != 3 || !r.Retryable || r.Success() {
		t.Fatalf("%+v", r)
	}
	if string(r.Output) != "hi\nerr\n" {
		t.Fatalf("output %q", r.Output)
	}
	// argv form, no shell involved
	r = run(t, job(false, 0, "sh", "-c", "echo hi; exit 3"))
	if r.ExitCode != 3 || string(r.Output) != "hi\n" {
		t.Fatalf("%+v", r)
	}
}

func TestShellEnv(t *testing.T) {
	j := job(true, 0, `echo "$HODEI_X-$PATH"`)
	j.Spec.Env = []*hodeiv1.KeyValue{{Key: "HODEI_X", Value: "42"}}
	r := run(t, j)
	if !r.Success() || !strings.HasPrefix(string(r.Output), "42-") || len(r.Output) < 5 {
		t.Fatalf("env not passed / inherited: %q", r.Output)
	}
}

func TestShellTimeoutKillsGroup(t *testing.T) {
	start := time.Now()
	// A background grandchild holds the output pipe: only a group kill
	// returns quickly (WaitDelay would otherwise wait 2s).
	r := run(t, job(true, 150*time.Millisecond, "sleep 30 & sleep 30"))
	if d := time.Since(start); d > 1500*time.Millisecond {
		t.Fatalf("took %v", d)
	}
	if r.Err != "timeout after 150ms" || !r.Retryable || r.Success() {
		t.Fatalf("%+v", r)
	}
}

func TestShellCancelKills(t *testing.T) {
	ctx, cancel := context.WithCancelCause(context.Background())
	done := make(chan Result, 1)
	go func() { done <- (&ShellExecutor{}).Run(ctx, job(false, 0, "sleep", "30")) }()
	cancel(ErrLeaseLost)
	select {
	case r := <-done:
		if r.Success() || !strings.Contains(r.Err, "lease lost") {
			t.Fatalf("%+v", r)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("not killed")
	}
}

func TestShellOutputKeepsTail(t *testing.T) {
	r := run(t, job(true, 0, "i=0; while [ $i -lt 3000 ]; do echo line-$i-xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx; i=$((i+1)); done; echo END"))
	if !r.Success() {
		t.Fatalf("%+v", r)
	}
	if len(r.Output) != MaxOutput {
		t.Fatalf("kept %d bytes, want %d", len(r.Output), MaxOutput)
	}
	if !bytes.HasSuffix(r.Output, []byte("line-2999-xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx\nEND\n")) {
		t.Fatalf("tail lost: %q", r.Output[len(r.Output)-100:])
	}
	if bytes.Contains(r.Output, []byte("line-0-")) {
		t.Fatal("head kept")
	}
}

func TestShellMissingBinary(t *testing.T) {
	r := run(t, job(false, 0, "/nonexistent/hodei-no-such-binary"))
	if r.ExitCode != -1 || r.Err == "" || r.Retryable || r.Success() {
		t.Fatalf("%+v", r)
	}
	r = run(t, job(false, 0))
	if r.Err != "empty command" || r.Retryable {
		t.Fatalf("%+v", r)
	}
}

func TestRing(t *testing.T) {
	for _, size := range []int{1, 7, 16} {
		r := newRing(size)
		var all []byte
		for i, n := range []int{0, 3, 5, 1, 16, 2, 20, 7, 9} {
			p := bytes.Repeat([]byte{byte('a' + i)}, n)
			for k := range p {
				p[k] += byte(k % 3)
			}
			_, _ = r.Write(p)
			all = append(all, p...)
			want := all
			if len(want) > size {
				want = want[len(want)-size:]
			}
			if got := r.Bytes(); !bytes.Equal(got, want) {
				t.Fatalf("size %d after %d writes: %q want %q", size, i+1, got, want)
			}
		}
	}
}
