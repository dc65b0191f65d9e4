package transport

import (
	"testing"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/hodei-io/hodei/proto/hodeiv1"
)

func TestResolveAttempt(t *testing.T) {
	running := &hodeiv1.Job{Id: "0-1", State: hodeiv1.JobState_JOB_STATE_RUNNING, Attempts: 2, LeaseToken: 9,
		LastResult: &hodeiv1.JobResult{Attempt: 1, LeaseToken: 4, Output: []byte("first")}}
	done := &hodeiv1.Job{Id: "0-1", State: hodeiv1.JobState_JOB_STATE_SUCCEEDED, Attempts: 2,
		LastResult: &hodeiv1.JobResult{Attempt: 2, LeaseToken: 9, Output: []byte("second")}}
	pending := &hodeiv1.Job{Id: "0-1", State: hodeiv1.JobState_JOB_STATE_PENDING}
	for _, tc := range []struct {
		name string
		job  *hodeiv1.Job
		n    int32
		want logAttempt
		code codes.Code
	}{
		{"latest running", running, 0, logAttempt{attempt: 2, token: 9}, codes.OK},
		{"older, with the result", running, 1, logAttempt{attempt: 1, token: 4, finished: true, tail: []byte("first"), hasTail: true}, codes.OK},
		{"latest ended", done, 0, logAttempt{attempt: 2, token: 9, finished: true, tail: []byte("second"), hasTail: true}, codes.OK},
		{"older ended: by number", done, 1, logAttempt{attempt: 1, finished: true}, codes.OK},
		{"not leased yet", pending, 0, logAttempt{}, codes.OK},
		{"beyond", done, 3, logAttempt{}, codes.OutOfRange},
		{"negative", done, -1, logAttempt{}, codes.InvalidArgument},
	} {
		got, err := resolveAttempt(tc.job, tc.n)
		if status.Code(err) != tc.code {
			t.Fatalf("%s: err %v, want %v", tc.name, err, tc.code)
		}
		if err == nil && (got.attempt != tc.want.attempt || got.token != tc.want.token || got.finished != tc.want.finished ||
			string(got.tail) != string(tc.want.tail) || got.hasTail != tc.want.hasTail) {
			t.Fatalf("%s: %+v, want %+v", tc.name, got, tc.want)
		}
	}
}

func TestContiguous(t *testing.T) {
	ls := func(seqs ...uint64) []*hodeiv1.LogLine {
		var out []*hodeiv1.LogLine
		for _, s := range seqs {
			out = append(out, &hodeiv1.LogLine{Seq: s})
		}
		return out
	}
	for _, tc := range []struct {
		lines []*hodeiv1.LogLine
		last  uint64
		want  int
	}{
		{ls(1, 2, 3), 0, 3},
		{ls(2, 3), 0, 0},
		{ls(5, 6, 8), 4, 2},
		{nil, 7, 0},
	} {
		if got := contiguous(tc.lines, tc.last); got != tc.want {
			t.Errorf("contiguous(%v after %d) = %d, want %d", tc.lines, tc.last, got, tc.want)
		}
	}
}

func TestValidLogLine(t *testing.T) {
	ok := &hodeiv1.LogLine{JobId: "0-1", Token: 1, Seq: 1, Stream: hodeiv1.LogStream_LOG_STREAM_STDOUT}
	if why := validLogLine(ok); why != "" {
		t.Fatalf("valid line refused: %s", why)
	}
	for why, l := range map[string]*hodeiv1.LogLine{
		LogDropMalformed: {JobId: "0-1", Token: 1, Seq: 1},
		LogDropOversized: {JobId: "0-1", Token: 1, Seq: 1, Stream: hodeiv1.LogStream_LOG_STREAM_STDERR, Data: make([]byte, MaxLogLineBytes+1)},
	} {
		if got := validLogLine(l); got != why {
			t.Errorf("validLogLine(%v) = %q, want %q", l, got, why)
		}
	}
}
