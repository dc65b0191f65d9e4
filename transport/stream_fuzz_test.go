package transport

import (
	"context"
	"testing"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"

	"github.com/hodei-io/hodei/proto/hodeiv1"
)

// recordingSession is a WorkerSession that records what reached it.
type recordingSession struct {
	slots       []int
	completions [][]*hodeiv1.Completion
}

func (r *recordingSession) TTL() time.Duration   { return time.Second }
func (r *recordingSession) AddSlots(n int) error { r.slots = append(r.slots, n); return nil }
func (r *recordingSession) Complete(items []*hodeiv1.Completion) {
	r.completions = append(r.completions, items)
}
func (r *recordingSession) Extend(context.Context, []*hodeiv1.LeaseRef)                 {}
func (r *recordingSession) Refuse([]*hodeiv1.CompletionResult, []*hodeiv1.ExtendResult) {}
func (r *recordingSession) Ready() <-chan struct{}                                      { return nil }
func (r *recordingSession) Done() <-chan struct{}                                       { return nil }
func (r *recordingSession) Messages() []*hodeiv1.ServerMessage                          { return nil }
func (r *recordingSession) Pending() int                                                { return 0 }
func (r *recordingSession) Close()                                                      {}

// recordingLogs is a LogBackend that records the lines handed to it.
type recordingLogs struct {
	lines   []*hodeiv1.LogLine
	dropped int
}

func (r *recordingLogs) AppendLogs(lines []*hodeiv1.LogLine, dropped map[string]int) {
	r.lines = append(r.lines, lines...)
	for _, n := range dropped {
		r.dropped += n
	}
}
func (r *recordingLogs) ReadLogs(LogQuery) LogRead       { return LogRead{} }
func (r *recordingLogs) WaitLogs(string) <-chan struct{} { return nil }
func (r *recordingLogs) LogPeers() map[string]string     { return nil }

// FuzzWorkerMessage feeds arbitrary stream messages to the handler: it never
// panics, a refusal is InvalidArgument and hands nothing on, and what it
// hands on is valid (slots in range, non-empty completions with job ids,
// extends with ids and tokens). Log lines never end the stream: the valid
// ones are handed on, the others counted, none lost without a count.
func FuzzWorkerMessage(f *testing.F) {
	for _, m := range []*hodeiv1.WorkerMessage{
		{Msg: &hodeiv1.WorkerMessage_Slots{Slots: &hodeiv1.WorkerSlots{Slots: 3}}},
		{Msg: &hodeiv1.WorkerMessage_Slots{Slots: &hodeiv1.WorkerSlots{Slots: -1}}},
		{Msg: &hodeiv1.WorkerMessage_Completions{Completions: &hodeiv1.WorkerCompletions{Completions: []*hodeiv1.Completion{{JobId: "0-1", Token: 2, Success: true}}}}},
		{Msg: &hodeiv1.WorkerMessage_Completions{Completions: &hodeiv1.WorkerCompletions{}}},
		{Msg: &hodeiv1.WorkerMessage_Extend{Extend: &hodeiv1.WorkerExtend{Leases: []*hodeiv1.LeaseRef{{JobId: "0-1", Token: 2}}}}},
		{Msg: &hodeiv1.WorkerMessage_Hello{Hello: &hodeiv1.WorkerHello{WorkerId: "w"}}},
		{Msg: &hodeiv1.WorkerMessage_Logs{Logs: &hodeiv1.WorkerLogs{Lines: []*hodeiv1.LogLine{
			{JobId: "0-1", Token: 2, Seq: 1, Stream: hodeiv1.LogStream_LOG_STREAM_STDOUT, Data: []byte("hi")},
			{JobId: "0-1", Token: 2, Seq: 2, Stream: hodeiv1.LogStream_LOG_STREAM_STDERR, Data: []byte("x"), Attempt: 9, NodeId: "forged"},
			{JobId: "", Token: 2, Seq: 3, Stream: 9},
		}}}},
		{Msg: &hodeiv1.WorkerMessage_Logs{Logs: &hodeiv1.WorkerLogs{}}},
		{},
	} {
		b, err := proto.Marshal(m)
		if err != nil {
			f.Fatal(err)
		}
		f.Add(b)
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		m := &hodeiv1.WorkerMessage{}
		if proto.Unmarshal(data, m) != nil {
			return // gRPC refuses undecodable messages before the handler
		}
		logs := &recordingLogs{}
		s := &workerService{a: &API{logs: logs}}
		sent := len(m.GetLogs().GetLines())
		sess := &recordingSession{}
		extends := make(chan []*hodeiv1.LeaseRef, 1)
		err := s.handleWorkerMessage(context.Background(), sess, m, extends)
		var ext []*hodeiv1.LeaseRef
		select {
		case ext = <-extends:
		default:
		}
		if err != nil {
			if status.Code(err) != codes.InvalidArgument {
				t.Fatalf("refusal %v is not InvalidArgument", err)
			}
			if m.GetLogs() != nil {
				t.Fatalf("log lines ended the stream: %v", err)
			}
			if len(sess.slots)+len(sess.completions)+len(ext)+len(logs.lines) > 0 {
				t.Fatalf("a refused message was handed on: %v", m)
			}
			return
		}
		for _, n := range sess.slots {
			if n < 1 || n > maxStreamItems {
				t.Fatalf("slots %d handed on", n)
			}
		}
		for _, cs := range sess.completions {
			if len(cs) == 0 || len(cs) > maxStreamItems {
				t.Fatalf("%d completions handed on", len(cs))
			}
			for _, c := range cs {
				if c.GetJobId() == "" {
					t.Fatal("a completion without a job id handed on")
				}
			}
		}
		for _, r := range ext {
			if r.GetJobId() == "" || r.GetToken() == 0 {
				t.Fatal("an extend without id or token handed on")
			}
		}
		for _, l := range logs.lines {
			if why := validLogLine(l); why != "" || l.GetNodeId() != "" {
				t.Fatalf("an invalid log line handed on (%s): %v", why, l)
			}
		}
		if len(logs.lines)+logs.dropped != sent {
			t.Fatalf("%d log lines sent, %d handed on, %d counted as dropped", sent, len(logs.lines), logs.dropped)
		}
	})
}
