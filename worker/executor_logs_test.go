package worker

import (
	"bytes"
	"context"
	"strings"
	"sync"
	"testing"

	hodeiv1 "github.com/hodei-io/hodei/proto/hodeiv1"
)

type syncBuf struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuf) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuf) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

// RunLogged streams stdout and stderr apart while keeping the combined tail.
func TestShellExecutorStreamsOutput(t *testing.T) {
	var out, errw syncBuf
	e := &ShellExecutor{}
	job := &hodeiv1.Job{Id: "0-1", Spec: &hodeiv1.JobSpec{Shell: true, Command: []string{"echo out1; echo err1 >&2; echo out2"}}}
	res := e.RunLogged(context.Background(), job, &out, &errw)
	if !res.Success() {
		t.Fatalf("result %+v", res)
	}
	if out.String() != "out1\nout2\n" || errw.String() != "err1\n" {
		t.Fatalf("stdout %q stderr %q", out.String(), errw.String())
	}
	for _, want := range []string{"out1", "err1", "out2"} {
		if !strings.Contains(string(res.Output), want) {
			t.Fatalf("tail %q lacks %q", res.Output, want)
		}
	}
}
