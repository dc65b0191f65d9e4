package fsm

import (
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"io"
	"strings"
	"testing"

	"github.com/hashicorp/raft"
	"google.golang.org/protobuf/proto"

	"github.com/hodei-io/hodei/proto/hodeiv1"
	"github.com/hodei-io/hodei/proto/internalpb"
)

// harness drives one FSM with increasing indexes and a settable clock.
type harness struct {
	t     testing.TB
	f     *FSM
	index uint64
	now   int64
	log   []*internalpb.Entry       // every entry applied, for replays
	held  map[string]*hodeiv1.Lease // pipeline tests: leases held by step id
}

func newHarness(t testing.TB) *harness {
	t.Helper()
	f, err := New(DefaultConfig(), Options{})
	if err != nil {
		t.Fatal(err)
	}
	return &harness{t: t, f: f, now: 1_000_000}
}

func (h *harness) applyAll(cmds ...*internalpb.Command) []*internalpb.CommandResult {
	h.index++
	e := &internalpb.Entry{Version: EntryVersion, NowMs: h.now, Commands: cmds}
	h.log = append(h.log, e)
	return h.f.ApplyEntry(h.index, e)
}

func (h *harness) apply(c *internalpb.Command) *internalpb.CommandResult {
	return h.applyAll(c)[0]
}

func (h *harness) ok(c *internalpb.Command) *internalpb.CommandResult {
	h.t.Helper()
	r := h.apply(c)
	if err := ResultError(r); err != nil {
		h.t.Fatalf("command %v: %v", c, err)
	}
	return r
}

// digest is the state digest without the applied index (which every entry
// advances), so "changes nothing" can be asserted across entries.
func (h *harness) digest() string {
	h.f.mu.Lock()
	defer h.f.mu.Unlock()
	idx := h.f.st.appliedIndex
	h.f.st.appliedIndex = 0
	data := h.f.st.encodeSnapshot()
	h.f.st.appliedIndex = idx
	sum := sha256.Sum256(data)
	return hex.EncodeToString(sum[:])
}

func (h *harness) job(id string) *hodeiv1.Job {
	h.t.Helper()
	j, ok := h.f.GetJob(id)
	if !ok {
		h.t.Fatalf("job %s not found", id)
	}
	return j
}

func spec(cmd ...string) *hodeiv1.JobSpec { return &hodeiv1.JobSpec{Command: cmd} }

func submitCmd(specs ...*hodeiv1.JobSpec) *internalpb.Command {
	return &internalpb.Command{Kind: &internalpb.Command_Submit{Submit: &internalpb.SubmitJobs{Specs: specs}}}
}

func leaseCmd(worker string, capacity int32, labels ...*hodeiv1.KeyValue) *internalpb.Command {
	return &internalpb.Command{Kind: &internalpb.Command_Lease{Lease: &internalpb.LeaseJobs{WorkerId: worker, Capacity: capacity, Labels: labels}}}
}

func extendCmd(worker string, ttl int64, refs ...*hodeiv1.LeaseRef) *internalpb.Command {
	return &internalpb.Command{Kind: &internalpb.Command_Extend{Extend: &internalpb.ExtendLeases{WorkerId: worker, Leases: refs, TtlMs: ttl}}}
}

func completeCmd(id string, token uint64, success, retryable bool) *internalpb.Command {
	return &internalpb.Command{Kind: &internalpb.Command_Complete{Complete: &internalpb.CompleteJob{
		JobId: id, Token: token, Success: success, Retryable: retryable,
		Result: &hodeiv1.JobResult{ExitCode: 1},
	}}}
}

func cancelCmd(id, reason string) *internalpb.Command {
	return &internalpb.Command{Kind: &internalpb.Command_Cancel{Cancel: &internalpb.CancelJob{JobId: id, Reason: reason}}}
}

func expireCmd(refs ...*hodeiv1.LeaseRef) *internalpb.Command {
	return &internalpb.Command{Kind: &internalpb.Command_Expire{Expire: &internalpb.ExpireLeases{Leases: refs}}}
}

func promoteCmd() *internalpb.Command {
	return &internalpb.Command{Kind: &internalpb.Command_Promote{Promote: &internalpb.PromoteDelayed{}}}
}

func gcCmd(before int64, max uint32) *internalpb.Command {
	return &internalpb.Command{Kind: &internalpb.Command_Gc{Gc: &internalpb.GCJobs{FinishedBeforeMs: before, Max: max}}}
}

func setWeightCmd(tenant string, weight uint32) *internalpb.Command {
	return &internalpb.Command{Kind: &internalpb.Command_SetTenantWeight{SetTenantWeight: &internalpb.SetTenantWeight{Tenant: tenant, Weight: weight}}}
}

// setWeights applies SetTenantWeight commands in one entry of the version
// that carries them.
func (h *harness) setWeights(cmds ...*internalpb.Command) []*internalpb.CommandResult {
	h.index++
	e := &internalpb.Entry{Version: EntryVersionTenantWeights, NowMs: h.now, Commands: cmds}
	h.log = append(h.log, e)
	return h.f.ApplyEntry(h.index, e)
}

func withRID(rid string, c *internalpb.Command) *internalpb.Command {
	c.RequestId = rid
	return c
}

func kv(k, v string) *hodeiv1.KeyValue { return &hodeiv1.KeyValue{Key: k, Value: v} }

// mustPanic runs fn and fails unless it panics with a message containing want.
func mustPanic(t testing.TB, want string, fn func()) {
	t.Helper()
	defer func() {
		t.Helper()
		r := recover()
		if r == nil {
			t.Fatalf("expected a panic containing %q", want)
		}
		if msg := fmt.Sprint(r); !strings.Contains(msg, want) {
			t.Fatalf("panic %q does not contain %q", msg, want)
		}
	}()
	fn()
}

func wantCode(t testing.TB, r *internalpb.CommandResult, code internalpb.Code, msgPart string) {
	t.Helper()
	if r.GetCode() != code {
		t.Fatalf("code = %v (%q), want %v", r.GetCode(), r.GetMessage(), code)
	}
	if !strings.Contains(r.GetMessage(), msgPart) {
		t.Fatalf("message %q does not contain %q", r.GetMessage(), msgPart)
	}
}

// memSink is an in-memory raft.SnapshotSink.
type memSink struct {
	bytes.Buffer
	cancelled, closed bool
}

func (s *memSink) ID() string                  { return "mem" }
func (s *memSink) Cancel() error               { s.cancelled = true; return nil }
func (s *memSink) Close() error                { s.closed = true; return nil }
func (s *memSink) Write(p []byte) (int, error) { return s.Buffer.Write(p) }

var _ raft.SnapshotSink = (*memSink)(nil)

func snapshotBytes(t testing.TB, f *FSM) []byte {
	t.Helper()
	snap, err := f.Snapshot()
	if err != nil {
		t.Fatal(err)
	}
	var sink memSink
	if err := snap.Persist(&sink); err != nil {
		t.Fatal(err)
	}
	snap.Release()
	return sink.Bytes()
}

func restoreInto(t testing.TB, data []byte) *FSM {
	t.Helper()
	f, err := New(DefaultConfig(), Options{})
	if err != nil {
		t.Fatal(err)
	}
	if err := f.Restore(io.NopCloser(bytes.NewReader(data))); err != nil {
		t.Fatal(err)
	}
	return f
}

func encodeEntry(t testing.TB, e *internalpb.Entry) []byte {
	t.Helper()
	b, err := proto.Marshal(e)
	if err != nil {
		t.Fatal(err)
	}
	return b
}
