package fsm

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"testing"

	"github.com/hashicorp/raft"
	"google.golang.org/protobuf/proto"
	"pgregory.net/rapid"

	"github.com/hodei-io/hodei/proto/hodeiv1"
	"github.com/hodei-io/hodei/proto/internalpb"
)

// reqStep is one command with a request id and its first answer.
type reqStep struct {
	cmd   *internalpb.Command
	first *internalpb.CommandResult
	at    int64 // now of the entry that applied it first
}

// requestScenario applies, each under its own request id, a command of
// every kind (and the errors of most), retrying each at once: the retry
// must give the first answer and change nothing. It returns the steps in
// order (the order of the request records).
func requestScenario(t *testing.T, h *harness) []reqStep {
	t.Helper()
	var steps []reqStep
	do := func(rid string, c *internalpb.Command) *internalpb.CommandResult {
		t.Helper()
		c.RequestId = rid
		first := h.applyNew(proto.Clone(c).(*internalpb.Command))[0]
		d := h.digest()
		again := h.applyNew(proto.Clone(c).(*internalpb.Command))[0]
		if !bytes.Equal(mustMarshal(t, first), mustMarshal(t, again)) {
			t.Fatalf("%s: retry answered\n%v\nwant the first answer\n%v", rid, again, first)
		}
		if h.digest() != d {
			t.Fatalf("%s: the retry changed the state", rid)
		}
		steps = append(steps, reqStep{cmd: c, first: first, at: h.now})
		return first
	}
	ok := func(rid string, c *internalpb.Command) *internalpb.CommandResult {
		t.Helper()
		r := do(rid, c)
		if err := ResultError(r); err != nil {
			t.Fatalf("%s: %v", rid, err)
		}
		return r
	}
	fails := func(rid string, c *internalpb.Command, code internalpb.Code) {
		t.Helper()
		if r := do(rid, c); r.GetCode() != code {
			t.Fatalf("%s: code %v (%s), want %v", rid, r.GetCode(), r.GetMessage(), code)
		}
	}

	ok("submit", submitCmd(&hodeiv1.JobSpec{Command: []string{"a"}, IdempotencyKey: "k1"}, spec("b"), kindSpec("k", "p"))) // 0-1..0-3
	if r := ok("submit-dup", submitCmd(&hodeiv1.JobSpec{Command: []string{"a"}, IdempotencyKey: "k1"}, spec("c"))); !r.GetSubmitted()[0].GetDuplicate() || r.GetSubmitted()[1].GetJob().GetId() != "0-4" {
		t.Fatalf("submit-dup: %v", r)
	}
	fails("submit-bad", submitCmd(spec()), internalpb.Code_CODE_INVALID_ARGUMENT)
	lease := ok("lease", leaseCmd("w1", 2)).GetLeases() // 0-1, 0-2
	if len(lease) != 2 {
		t.Fatalf("lease: %v", lease)
	}
	batch := ok("batch", leaseBatchCmd(
		&internalpb.LeaseJobs{WorkerId: "w2", Capacity: 1},
		&internalpb.LeaseJobs{WorkerId: "w3", Capacity: 1, Kinds: []string{"nope"}},
		&internalpb.LeaseJobs{WorkerId: "w4", Capacity: 5},
	)).GetGrants()
	if len(batch) != 3 || len(batch[0].GetLeases()) != 1 || len(batch[1].GetLeases()) != 0 || len(batch[2].GetLeases()) != 1 {
		t.Fatalf("batch: %v", batch)
	}
	ok("lease-none", leaseCmd("w1", 2))
	fails("batch-bad", leaseBatchCmd(), internalpb.Code_CODE_INVALID_ARGUMENT)
	h.now += 100
	ext := ok("extend", extendCmd("w1", 5000,
		&hodeiv1.LeaseRef{JobId: "0-1", Token: lease[0].GetToken()},
		&hodeiv1.LeaseRef{JobId: "0-2", Token: 999},
		&hodeiv1.LeaseRef{JobId: "9-1", Token: 1},
		&hodeiv1.LeaseRef{JobId: "x", Token: 1},
	)).GetExtended()
	if !ext[0].GetOk() || ext[1].GetOk() || ext[2].GetReason() == "" {
		t.Fatalf("extend: %v", ext)
	}
	fails("extend-bad", extendCmd("w1", -1), internalpb.Code_CODE_INVALID_ARGUMENT)
	ok("complete", completeCmd("0-1", lease[0].GetToken(), true, false))
	fails("complete-bad", completeCmd("0-1", lease[0].GetToken(), true, false), internalpb.Code_CODE_FAILED_PRECONDITION)
	h.ok(submitCmd(spec("d"), spec("e"))) // 0-5, 0-6
	ok("cancel", cancelCmd("0-5", "no"))
	fails("cancel-bad", cancelCmd("0-99", ""), internalpb.Code_CODE_NOT_FOUND)
	b0, b2 := batch[0].GetLeases()[0], batch[2].GetLeases()[0]
	cj := ok("complete-jobs", completeJobsCmd(
		&hodeiv1.Completion{JobId: "0-2", Token: lease[1].GetToken(), Success: false, Retryable: true},
		&hodeiv1.Completion{JobId: b0.GetJob().GetId()},
		&hodeiv1.Completion{JobId: "0-77", Token: 5},
		&hodeiv1.Completion{JobId: b2.GetJob().GetId(), Token: b2.GetToken() + 100},
		&hodeiv1.Completion{JobId: "0-1", Token: lease[0].GetToken(), Success: true},
		&hodeiv1.Completion{JobId: "nope", Token: 1},
	)).GetCompleted()
	if !cj[0].GetOk() || cj[1].GetOk() || cj[2].GetOk() || cj[3].GetOk() || !cj[4].GetOk() || cj[5].GetOk() || cj[1].GetCode() == "" {
		t.Fatalf("complete-jobs: %v", cj)
	}
	fails("complete-jobs-bad", completeJobsCmd(make([]*hodeiv1.Completion, MaxCompletions+1)...), internalpb.Code_CODE_INVALID_ARGUMENT)
	exp := h.ok(&internalpb.Command{Kind: &internalpb.Command_Lease{Lease: &internalpb.LeaseJobs{WorkerId: "w5", Capacity: 1, TtlMs: 10}}}).GetLeases()[0]
	h.now += 20
	if r := ok("expire", expireCmd(&hodeiv1.LeaseRef{JobId: exp.GetJob().GetId(), Token: exp.GetToken()})); r.GetCount() != 1 {
		t.Fatalf("expire: %v", r)
	}
	ok("expire-none", expireCmd(&hodeiv1.LeaseRef{JobId: exp.GetJob().GetId(), Token: exp.GetToken()}))
	h.now += 5000
	if r := ok("promote", promoteCmd()); r.GetCount() == 0 {
		t.Fatalf("promote: %v", r)
	}
	if r := ok("gc", gcCmd(h.now+1, 1)); r.GetCount() != 1 {
		t.Fatalf("gc: %v", r)
	}
	fails("gc-bad", gcCmd(0, 0), internalpb.Code_CODE_INVALID_ARGUMENT)
	ok("checkpoint", &internalpb.Command{Kind: &internalpb.Command_Checkpoint{Checkpoint: &internalpb.Checkpoint{Index: 1}}})
	ok("weight", setWeightCmd("default", 2))
	fails("weight-bad", setWeightCmd("", 2), internalpb.Code_CODE_INVALID_ARGUMENT)
	fails("empty", &internalpb.Command{}, internalpb.Code_CODE_INVALID_ARGUMENT)
	return steps
}

func mustMarshal(t testing.TB, m proto.Message) []byte {
	t.Helper()
	b, err := marshalOpts.Marshal(m)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func stepByID(t testing.TB, steps []reqStep, rid string) reqStep {
	t.Helper()
	for _, s := range steps {
		if s.cmd.GetRequestId() == rid {
			return s
		}
	}
	t.Fatalf("no step %q", rid)
	return reqStep{}
}

// TestRequestRetryEveryKind: an immediate retry of every command kind
// answers the first answer byte for byte (requestScenario checks); a later
// retry keeps what made the outcome (jobs, tokens, duplicate flags, codes,
// refusals) and shows the jobs as they are now.
func TestRequestRetryEveryKind(t *testing.T) {
	h := newHarness(t)
	steps := requestScenario(t, h)
	h.now += 1000
	h.applyNew(&internalpb.Command{Kind: &internalpb.Command_Checkpoint{Checkpoint: &internalpb.Checkpoint{}}}) // time passes
	retry := func(rid string) *internalpb.CommandResult {
		t.Helper()
		s := stepByID(t, steps, rid)
		d := h.digest()
		r := h.applyNew(proto.Clone(s.cmd).(*internalpb.Command))[0]
		if h.digest() != d {
			t.Fatalf("%s: the retry changed the state", rid)
		}
		return r
	}
	// Errors: byte-identical, whatever happened since.
	for _, s := range steps {
		if s.first.GetCode() != internalpb.Code_CODE_OK {
			if r := retry(s.cmd.GetRequestId()); !bytes.Equal(mustMarshal(t, r), mustMarshal(t, s.first)) {
				t.Fatalf("%s: %v, want %v", s.cmd.GetRequestId(), r, s.first)
			}
		}
	}
	// Submit: the same jobs and flags, as they are now; a collected job
	// is its id.
	sub := retry("submit").GetSubmitted()
	if len(sub) != 3 || sub[0].GetJob().GetId() != "0-1" || sub[0].GetDuplicate() || sub[2].GetJob().GetSpec().GetKind() != "k" {
		t.Fatalf("submit retry: %v", sub)
	}
	if !proto.Equal(sub[1].GetJob(), h.job("0-2")) {
		t.Fatalf("submit retry: job %v, want it as it is now %v", sub[1].GetJob(), h.job("0-2"))
	}
	if _, alive := h.f.GetJob("0-1"); alive || !proto.Equal(sub[0].GetJob(), &hodeiv1.Job{Id: "0-1"}) {
		t.Fatalf("submit retry of a collected job: %v (still there: %v)", sub[0].GetJob(), alive)
	}
	if d := retry("submit-dup").GetSubmitted(); !d[0].GetDuplicate() || d[1].GetDuplicate() || d[1].GetJob().GetId() != "0-4" {
		t.Fatalf("submit-dup retry: %v", d)
	}
	// Lease: 0-1 completed, 0-2 failed back to PENDING: no valid lease.
	if l := retry("lease").GetLeases(); len(l) != 0 {
		t.Fatalf("lease retry: %v", l)
	}
	// Batch: both leases are still valid (their completions were refused),
	// with the time left on them; the worker ids of every demand.
	first := stepByID(t, steps, "batch").first.GetGrants()
	g := retry("batch").GetGrants()
	if len(g) != 3 || g[0].GetWorkerId() != "w2" || g[1].GetWorkerId() != "w3" || g[2].GetWorkerId() != "w4" || len(g[1].GetLeases()) != 0 {
		t.Fatalf("batch retry: %v", g)
	}
	for _, i := range []int{0, 2} {
		a, b := g[i].GetLeases()[0], first[i].GetLeases()[0]
		if a.GetToken() != b.GetToken() || a.GetJob().GetId() != b.GetJob().GetId() || a.GetExpiresAtMs() != b.GetExpiresAtMs() ||
			a.GetTtlMs() != b.GetExpiresAtMs()-h.now {
			t.Fatalf("batch retry lease %v, first %v (now %d)", a, b, h.now)
		}
	}
	// Extend: ok and reasons as first answered; the lease has ended since.
	e, ef := retry("extend").GetExtended(), stepByID(t, steps, "extend").first.GetExtended()
	for i := range ef {
		want := proto.Clone(ef[i]).(*hodeiv1.ExtendResult)
		if i == 0 {
			want.ExpiresAtMs = 0 // 0-1 is no longer RUNNING
		}
		if !proto.Equal(e[i], want) {
			t.Fatalf("extend retry item %d: %v, want %v", i, e[i], want)
		}
	}
	// Complete and cancel: the job as it is now.
	if j := retry("complete").GetJob(); !proto.Equal(j, &hodeiv1.Job{Id: "0-1"}) {
		t.Fatalf("complete retry of a collected job: %v", j)
	}
	if j := retry("cancel").GetJob(); !proto.Equal(j, h.job("0-5")) {
		t.Fatalf("cancel retry: %v", j)
	}
	// CompleteJobs: ok, code and reason as first answered; states now.
	c, cf := retry("complete-jobs").GetCompleted(), stepByID(t, steps, "complete-jobs").first.GetCompleted()
	for i := range cf {
		want := proto.Clone(cf[i]).(*hodeiv1.CompletionResult)
		switch i {
		case 0:
			want.State = h.job("0-2").GetState()
		case 4:
			want.State = hodeiv1.JobState_JOB_STATE_UNSPECIFIED // collected
		}
		if !proto.Equal(c[i], want) {
			t.Fatalf("complete-jobs retry item %d: %v, want %v", i, c[i], want)
		}
	}
	for _, rid := range []string{"expire", "promote", "gc", "lease-none", "expire-none", "checkpoint", "weight"} {
		if r := retry(rid); !proto.Equal(r, stepByID(t, steps, rid).first) {
			t.Fatalf("%s retry: %v", rid, r)
		}
	}
	checkInvariants(t, h.f)
}

// TestRequestRetryAfterRestore: a replica restored from a snapshot answers
// every retry as the one that applied the commands, and both keep
// producing the same bytes.
func TestRequestRetryAfterRestore(t *testing.T) {
	h := newHarness(t)
	steps := requestScenario(t, h)
	data := snapshotBytes(t, h.f)
	if v := snapshotVersionOf(data); v != SnapshotVersion {
		t.Fatalf("snapshot version %d", v)
	}
	g := restoreInto(t, data)
	if !bytes.Equal(snapshotBytes(t, g), data) {
		t.Fatal("restore+snapshot does not reproduce the bytes")
	}
	h2 := &harness{t: t, f: g, index: h.index, now: h.now}
	for _, s := range steps {
		a := h.applyNew(proto.Clone(s.cmd).(*internalpb.Command))[0]
		b := h2.applyNew(proto.Clone(s.cmd).(*internalpb.Command))[0]
		if !bytes.Equal(mustMarshal(t, a), mustMarshal(t, b)) {
			t.Fatalf("%s: restored replica answered\n%v\nwant\n%v", s.cmd.GetRequestId(), b, a)
		}
		if s.first.GetCode() != internalpb.Code_CODE_OK && !proto.Equal(a, s.first) {
			t.Fatalf("%s: %v, want %v", s.cmd.GetRequestId(), a, s.first)
		}
	}
	if !bytes.Equal(snapshotBytes(t, g), snapshotBytes(t, h.f)) {
		t.Fatal("replicas diverged after the retries")
	}
}

// encodeOldSnapshot writes a snapshot as versions 1 and 2 did: the header,
// the jobs, and each request record with the command's whole result.
// The header and jobs are taken from cur (a snapshot of this binary).
func encodeOldSnapshot(t *testing.T, cur []byte, steps []reqStep) []byte {
	t.Helper()
	rest := cur[len(snapshotMagic)+4 : len(cur)-4]
	next := func() []byte {
		n, k := binary.Uvarint(rest)
		if k <= 0 {
			t.Fatal("bad record")
		}
		b := rest[k : k+int(n)]
		rest = rest[k+int(n):]
		return b
	}
	hdr := &internalpb.SnapshotHeader{}
	if err := proto.Unmarshal(next(), hdr); err != nil {
		t.Fatal(err)
	}
	version := uint32(snapshotVersionNoWeights)
	if len(hdr.GetWeights()) > 0 {
		version = snapshotVersionWeights
	}
	hdr.Version = version
	hdr.RequestCount = uint64(len(steps))
	out := []byte(snapshotMagic)
	out = binary.BigEndian.AppendUint32(out, version)
	add := func(b []byte) {
		out = binary.AppendUvarint(out, uint64(len(b)))
		out = append(out, b...)
	}
	add(mustMarshal(t, hdr))
	for i := uint64(0); i < hdr.GetJobCount(); i++ {
		add(next())
	}
	for _, s := range steps {
		add(mustMarshal(t, &internalpb.RequestRecord{RequestId: s.cmd.GetRequestId(), AtMs: s.at, Result: s.first}))
	}
	return appendCRC(out)
}

// TestRequestRecordsFromOldSnapshot: whole results of a version 2 (and 1)
// snapshot become the compact records the live path made — the restored
// replica writes the same version 3 bytes — and answer retries.
func TestRequestRecordsFromOldSnapshot(t *testing.T) {
	for _, weights := range []bool{true, false} {
		h := newHarness(t)
		steps := requestScenario(t, h)
		if !weights {
			h.setWeights(setWeightCmd("default", 1)) // no request id: no record
		}
		cur := snapshotBytes(t, h.f)
		old := encodeOldSnapshot(t, cur, steps)
		if v, want := snapshotVersionOf(old), map[bool]uint32{true: 2, false: 1}[weights]; v != want {
			t.Fatalf("old snapshot version %d, want %d", v, want)
		}
		g := restoreInto(t, old)
		if !bytes.Equal(snapshotBytes(t, g), cur) {
			t.Fatalf("weights %v: the converted records differ from the live ones", weights)
		}
		h2 := &harness{t: t, f: g, index: h.index, now: h.now}
		for _, s := range steps {
			a := h.applyNew(proto.Clone(s.cmd).(*internalpb.Command))[0]
			b := h2.applyNew(proto.Clone(s.cmd).(*internalpb.Command))[0]
			if !proto.Equal(a, b) {
				t.Fatalf("%s: %v, want %v", s.cmd.GetRequestId(), b, a)
			}
		}
	}
}

// TestSnapshotRequestRecordsValidated: bad request records are corrupt
// snapshots, and a failed restore changes nothing.
func TestSnapshotRequestRecordsValidated(t *testing.T) {
	other := newHarness(t)
	other.ok(submitCmd(spec("keep me")))
	_, before := other.f.Digest()
	hdr := func(version uint32, n int) *internalpb.SnapshotHeader {
		return &internalpb.SnapshotHeader{Version: version, NextSeq: 3, NextToken: 5, RequestCount: uint64(n), LastNowMs: 100}
	}
	seqs := func(v ...uint64) []byte {
		c := compactRecord{seqs: v}
		return []byte(encodeCompact("", &c))[2:] // skip the seqs field's tag and length
	}
	submit := internalpb.RequestKind_REQUEST_KIND_SUBMIT
	lease := internalpb.RequestKind_REQUEST_KIND_LEASE
	for name, tc := range map[string]struct {
		version uint32
		recs    []*internalpb.RequestRecord
	}{
		"no id":             {3, []*internalpb.RequestRecord{{AtMs: 1, Kind: internalpb.RequestKind_REQUEST_KIND_EMPTY}}},
		"duplicate id":      {3, []*internalpb.RequestRecord{{RequestId: "a", Kind: internalpb.RequestKind_REQUEST_KIND_EMPTY}, {RequestId: "a", Kind: internalpb.RequestKind_REQUEST_KIND_EMPTY}}},
		"out of time order": {3, []*internalpb.RequestRecord{{RequestId: "a", AtMs: 5, Kind: internalpb.RequestKind_REQUEST_KIND_EMPTY}, {RequestId: "b", AtMs: 4, Kind: internalpb.RequestKind_REQUEST_KIND_EMPTY}}},
		"after last now":    {3, []*internalpb.RequestRecord{{RequestId: "a", AtMs: 101, Kind: internalpb.RequestKind_REQUEST_KIND_EMPTY}}},
		"whole result in 3": {3, []*internalpb.RequestRecord{{RequestId: "a", Result: &internalpb.CommandResult{}}}},
		"compact in 2":      {2, []*internalpb.RequestRecord{{RequestId: "a", Kind: internalpb.RequestKind_REQUEST_KIND_EMPTY}}},
		"no result in 1":    {1, []*internalpb.RequestRecord{{RequestId: "a"}}},
		"no kind":           {3, []*internalpb.RequestRecord{{RequestId: "a"}}},
		"unknown kind":      {3, []*internalpb.RequestRecord{{RequestId: "a", Kind: 99}}},
		"seq past next":     {3, []*internalpb.RequestRecord{{RequestId: "a", Kind: submit, Seqs: seqs(3)}}},
		"seq 0":             {3, []*internalpb.RequestRecord{{RequestId: "a", Kind: submit, Seqs: seqs(0)}}},
		"bad seqs":          {3, []*internalpb.RequestRecord{{RequestId: "a", Kind: submit, Seqs: []byte{0x80}}}},
		"bitmap too long":   {3, []*internalpb.RequestRecord{{RequestId: "a", Kind: submit, Seqs: seqs(1), Duplicates: []byte{1, 1}}}},
		"bit past jobs":     {3, []*internalpb.RequestRecord{{RequestId: "a", Kind: submit, Seqs: seqs(1, 2), Duplicates: []byte{4}}}},
		"bitmap zeros":      {3, []*internalpb.RequestRecord{{RequestId: "a", Kind: submit, Seqs: seqs(1), Duplicates: []byte{0}}}},
		"token past next":   {3, []*internalpb.RequestRecord{{RequestId: "a", Kind: lease, Seqs: seqs(1, 2), FirstToken: 5}}},
		"lease no token":    {3, []*internalpb.RequestRecord{{RequestId: "a", Kind: lease, Seqs: seqs(1)}}},
		"sizes mismatch": {3, []*internalpb.RequestRecord{{RequestId: "a", Kind: internalpb.RequestKind_REQUEST_KIND_LEASE_BATCH,
			Seqs: seqs(1), FirstToken: 1, GrantSizes: []uint32{2}}}},
		"job without seq": {3, []*internalpb.RequestRecord{{RequestId: "a", Kind: internalpb.RequestKind_REQUEST_KIND_JOB}}},
		"count 0":         {3, []*internalpb.RequestRecord{{RequestId: "a", Kind: internalpb.RequestKind_REQUEST_KIND_COUNT}}},
		"error with jobs": {3, []*internalpb.RequestRecord{{RequestId: "a", Code: internalpb.Code_CODE_NOT_FOUND, Seqs: seqs(1)}}},
		"error with kind": {3, []*internalpb.RequestRecord{{RequestId: "a", Code: internalpb.Code_CODE_NOT_FOUND, Kind: submit}}},
		"message on ok":   {3, []*internalpb.RequestRecord{{RequestId: "a", Kind: internalpb.RequestKind_REQUEST_KIND_EMPTY, Message: "x"}}},
		"bad refusals": {3, []*internalpb.RequestRecord{{RequestId: "a", Kind: internalpb.RequestKind_REQUEST_KIND_COMPLETE_JOBS,
			Message: "0,1:x9:short"}}},
		"refusal past items": {3, []*internalpb.RequestRecord{{RequestId: "a", Kind: internalpb.RequestKind_REQUEST_KIND_EXTEND,
			Seqs: seqs(1), Message: "2,0:1:x"}}},
		"old lease tokens not consecutive": {2, []*internalpb.RequestRecord{{RequestId: "a", Result: &internalpb.CommandResult{Leases: []*hodeiv1.Lease{
			{Job: &hodeiv1.Job{Seq: 1}, Token: 1}, {Job: &hodeiv1.Job{Seq: 2}, Token: 3}}}}}},
		"old error with content": {1, []*internalpb.RequestRecord{{RequestId: "a", Result: &internalpb.CommandResult{
			Code: internalpb.Code_CODE_NOT_FOUND, Job: &hodeiv1.Job{Seq: 1}}}}},
	} {
		err := other.f.Restore(io.NopCloser(bytes.NewReader(frameRecords(t, hdr(tc.version, len(tc.recs)), tc.recs))))
		if !errors.Is(err, ErrCorruptSnapshot) {
			t.Errorf("%s: %v", name, err)
		}
	}
	if _, after := other.f.Digest(); after != before {
		t.Fatal("failed restore changed the state")
	}
	// The same kinds of records, well formed, are accepted.
	good := []*internalpb.RequestRecord{
		{RequestId: "a", AtMs: 1, Kind: submit, Seqs: seqs(2, 1, 2), Duplicates: []byte{6}},
		{RequestId: "b", AtMs: 1, Kind: lease, Seqs: seqs(1, 2), FirstToken: 4},
		{RequestId: "c", AtMs: 2, Kind: internalpb.RequestKind_REQUEST_KIND_LEASE_BATCH, Seqs: seqs(2), FirstToken: 5, GrantSizes: []uint32{0, 1}},
		{RequestId: "d", AtMs: 3, Kind: internalpb.RequestKind_REQUEST_KIND_COMPLETE_JOBS, Seqs: seqs(1), Message: "1,9:NOT_FOUND3:why"},
		{RequestId: "e", AtMs: 3, Code: internalpb.Code_CODE_NOT_FOUND, Message: "gone"},
	}
	data := frameRecords(t, hdr(3, len(good)), good)
	g := restoreInto(t, data)
	if g.st.reqs.len() != len(good) {
		t.Fatalf("%d records restored", g.st.reqs.len())
	}
	if !bytes.Equal(snapshotBytes(t, g), data) {
		t.Fatal("restore+snapshot does not reproduce hand-made canonical records")
	}
	h := &harness{t: t, f: g, index: 1, now: 100}
	r := h.applyNew(withRID("d", completeJobsCmd(&hodeiv1.Completion{JobId: "0-1", Token: 7}, &hodeiv1.Completion{JobId: "0-9", Token: 8})))[0]
	want := &internalpb.CommandResult{Completed: []*hodeiv1.CompletionResult{
		{JobId: "0-1", Token: 7, Ok: true}, {JobId: "0-9", Token: 8, Code: "NOT_FOUND", Reason: "why"}}}
	if !proto.Equal(r, want) {
		t.Fatalf("replay of a hand-made record: %v, want %v", r, want)
	}
	if r := h.applyNew(withRID("e", cancelCmd("0-1", "")))[0]; r.GetCode() != internalpb.Code_CODE_NOT_FOUND || r.GetMessage() != "gone" {
		t.Fatalf("replay of an error record: %v", r)
	}
}

// frameRecords encodes a snapshot of hdr.version with the header and the
// request records (no jobs) and a valid checksum.
func frameRecords(t testing.TB, hdr *internalpb.SnapshotHeader, recs []*internalpb.RequestRecord) []byte {
	t.Helper()
	out := []byte(snapshotMagic)
	out = binary.BigEndian.AppendUint32(out, hdr.GetVersion())
	for _, m := range append([]proto.Message{hdr}, func() (ms []proto.Message) {
		for _, r := range recs {
			ms = append(ms, r)
		}
		return ms
	}()...) {
		b := mustMarshal(t, m)
		out = binary.AppendUvarint(out, uint64(len(b)))
		out = append(out, b...)
	}
	return appendCRC(out)
}

// TestRequestRecordInvalidUTF8: a command built in memory may quote
// invalid UTF-8 in an error message; its record still replays and
// survives a snapshot.
func TestRequestRecordInvalidUTF8(t *testing.T) {
	h := newHarness(t)
	first := h.apply(withRID("r", cancelCmd("bad\xff", "")))
	if first.GetCode() != internalpb.Code_CODE_NOT_FOUND {
		t.Fatalf("%v", first)
	}
	again := h.apply(withRID("r", cancelCmd("bad\xff", "")))
	if again.GetCode() != first.GetCode() || again.GetMessage() != "job bad\uFFFD not found" {
		t.Fatalf("retry: %v", again)
	}
	g := restoreInto(t, snapshotBytes(t, h.f))
	if r := (&harness{t: t, f: g, index: h.index, now: h.now}).apply(withRID("r", cancelCmd("x", ""))); !proto.Equal(r, again) {
		t.Fatalf("after restore: %v", r)
	}
}

// TestSnapshotVersionChoice: the lowest version that represents the state.
func TestSnapshotVersionChoice(t *testing.T) {
	h := newHarness(t)
	h.ok(submitCmd(spec("a")))
	version := func() uint32 { return snapshotVersionOf(snapshotBytes(t, h.f)) }
	if v := version(); v != 1 {
		t.Fatalf("no weights, no records: version %d", v)
	}
	h.setWeights(setWeightCmd("t", 3))
	if v := version(); v != 2 {
		t.Fatalf("weights, no records: version %d", v)
	}
	h.ok(withRID("r", submitCmd(spec("b"))))
	if v := version(); v != 3 {
		t.Fatalf("weights and records: version %d", v)
	}
	h.setWeights(setWeightCmd("t", 1))
	if v := version(); v != 3 {
		t.Fatalf("records: version %d", v)
	}
	h.now += DefaultConfig().RequestRetentionMs + 1
	h.ok(promoteCmd())
	if v := version(); v != 1 {
		t.Fatalf("records forgotten, no weights: version %d", v)
	}
	// What a version 1 binary would have written is what this one writes.
	g := restoreInto(t, snapshotBytes(t, h.f))
	if !bytes.Equal(snapshotBytes(t, g), snapshotBytes(t, h.f)) {
		t.Fatal("version 1 round trip")
	}
}

// TestRequestRecordEncoding: the snapshot's request records are exactly
// what proto.Marshal writes for the same RequestRecord, and decode back.
func TestRequestRecordEncoding(t *testing.T) {
	h := newHarness(t)
	requestScenario(t, h)
	n := 0
	h.f.st.reqs.each(func(r *reqRecord) {
		n++
		m := &internalpb.RequestRecord{}
		if err := proto.Unmarshal([]byte(r.data()), m); err != nil {
			t.Fatal(err)
		}
		m.RequestId, m.AtMs = r.id(), r.at
		if got, want := appendRecord(nil, r), mustMarshal(t, m); !bytes.Equal(got, want) {
			t.Fatalf("%s: record bytes\n%x\nproto.Marshal\n%x", r.id(), got, want)
		}
		c, err := compactFromProto(m)
		if err != nil {
			t.Fatalf("%s: %v", r.id(), err)
		}
		if got := encodeCompact("", &c); got != r.data() {
			t.Fatalf("%s: re-encoding differs", r.id())
		}
	})
	if n == 0 || n != h.f.st.reqs.len() {
		t.Fatalf("%d records", n)
	}
}

// TestTwoReplicasIdenticalBytesWithRequestIDs: two FSMs fed the same log
// (through Apply, decoding the entries) with request ids on every command
// kind produce byte-identical snapshots, as does a restored one.
func TestTwoReplicasIdenticalBytesWithRequestIDs(t *testing.T) {
	h := newHarness(t)
	requestScenario(t, h)
	var fsms [2]*FSM
	for k := range fsms {
		fsms[k], _ = New(DefaultConfig(), Options{})
		for i, e := range h.log {
			fsms[k].Apply(&raft.Log{Index: uint64(i + 1), Term: 1, Type: raft.LogCommand, Data: encodeEntry(t, e)})
		}
	}
	a := snapshotBytes(t, fsms[0])
	if !bytes.Equal(a, snapshotBytes(t, fsms[1])) {
		t.Fatal("two FSMs fed the same log differ")
	}
	if fsms[0].st.reqs.len() != h.f.st.reqs.len() || fsms[0].st.reqs.len() < 20 {
		t.Fatalf("%d request records", fsms[0].st.reqs.len())
	}
	if !bytes.Equal(a, snapshotBytes(t, restoreInto(t, a))) {
		t.Fatal("a restored FSM differs")
	}
}

// TestRequestEviction: records are forgotten after the retention window
// (by replicated time) and beyond MaxRequests (oldest first); a forgotten
// id applies its command afresh.
func TestRequestEviction(t *testing.T) {
	h := newHarness(t)
	t0 := h.now
	first := h.ok(withRID("a", submitCmd(spec("x")))).GetSubmitted()[0].GetJob().GetId()
	h.now = t0 + DefaultConfig().RequestRetentionMs // at the edge: still remembered
	if got := h.ok(withRID("a", submitCmd(spec("x")))).GetSubmitted()[0].GetJob().GetId(); got != first || h.f.Stats().Jobs != 1 {
		t.Fatalf("at the window's edge: %s, want %s", got, first)
	}
	h.now++
	if got := h.ok(withRID("a", submitCmd(spec("x")))).GetSubmitted()[0].GetJob().GetId(); got == first {
		t.Fatal("remembered after the window")
	}
	if h.f.st.reqs.len() != 1 {
		t.Fatalf("%d records, want the new one", h.f.st.reqs.len())
	}

	cfg := DefaultConfig()
	cfg.MaxRequests = 3
	f, _ := New(cfg, Options{})
	idx := uint64(0)
	sub := func(rid string) string {
		idx++
		return f.ApplyEntry(idx, &internalpb.Entry{Version: 1, NowMs: 5, Commands: []*internalpb.Command{withRID(rid, submitCmd(spec("x")))}})[0].GetSubmitted()[0].GetJob().GetId()
	}
	for _, rid := range []string{"a", "b", "c", "d"} { // d evicts a
		sub(rid)
	}
	if got := sub("b"); got != "0-2" {
		t.Fatalf("b: %s, want 0-2", got)
	}
	if got := sub("a"); got != "0-5" { // evicts b
		t.Fatalf("a should be forgotten, got %s", got)
	}
	if got := sub("b"); got != "0-6" {
		t.Fatalf("b should be forgotten, got %s", got)
	}
	if f.st.reqs.len() != 3 {
		t.Fatalf("%d records", f.st.reqs.len())
	}
}

// TestRequestTableModel checks the ring and the map against a plain list:
// puts, eviction by time and count, growth and shrinking.
func TestRequestTableModel(t *testing.T) {
	rapid.Check(t, func(rt *rapid.T) {
		limit := rapid.IntRange(1, 5000).Draw(rt, "limit")
		cfg := Config{RequestRetentionMs: rapid.Int64Range(0, 1000).Draw(rt, "retention"), MaxRequests: limit}
		tab := newRequestTable()
		type rec struct {
			id string
			at int64
		}
		var model []rec
		now, serial := int64(0), 0
		for step, steps := 0, rapid.IntRange(1, 60).Draw(rt, "steps"); step < steps; step++ {
			switch rapid.IntRange(0, 2).Draw(rt, "op") {
			case 0: // a burst of puts
				for k := rapid.IntRange(1, 3000).Draw(rt, "n"); k > 0; k-- {
					serial++
					id := fmt.Sprintf("r%d", serial)
					c := compactRecord{kind: internalpb.RequestKind_REQUEST_KIND_COUNT, count: uint32(serial)}
					tab.put(newReqRecord(id, now, &c), limit)
					model = append(model, rec{id, now})
					if len(model) > limit {
						model = model[len(model)-limit:]
					}
				}
			case 1: // time passes
				now += rapid.Int64Range(0, 400).Draw(rt, "dt")
				tab.evict(now, cfg)
				for len(model) > 0 && model[0].at < now-cfg.RequestRetentionMs {
					model = model[1:]
				}
			case 2: // lookups
				for k := 0; k < 20; k++ {
					id := fmt.Sprintf("r%d", rapid.IntRange(1, serial+1).Draw(rt, "id"))
					_, got := tab.get(id)
					want := false
					for _, m := range model {
						want = want || m.id == id
					}
					if got != want {
						rt.Fatalf("get(%s) = %v, want %v", id, got, want)
					}
				}
			}
			if tab.len() != len(model) || len(tab.byID) != len(model) {
				rt.Fatalf("%d records (%d ids), want %d", tab.len(), len(tab.byID), len(model))
			}
			i := 0
			tab.each(func(r *reqRecord) {
				if r.id() != model[i].id || r.at != model[i].at {
					rt.Fatalf("record %d is %s@%d, want %s@%d", i, r.id(), r.at, model[i].id, model[i].at)
				}
				if g, ok := tab.get(r.id()); !ok || g != r {
					rt.Fatalf("get(%s) does not find its record", r.id())
				}
				i++
			})
			if len(tab.ring) > minRing && tab.n < len(tab.ring)/4 {
				rt.Fatalf("ring of %d for %d records", len(tab.ring), tab.n)
			}
		}
	})
}

// FuzzRequestRecord: decoding any compact record never panics, and what
// it accepts re-encodes canonically.
func FuzzRequestRecord(f *testing.F) {
	for _, c := range []compactRecord{
		{kind: internalpb.RequestKind_REQUEST_KIND_SUBMIT, seqs: []uint64{5, 3, 9}, dups: []byte{2}},
		{kind: internalpb.RequestKind_REQUEST_KIND_LEASE_BATCH, seqs: []uint64{1, 2}, firstToken: 7, sizes: []uint32{1, 0, 1}},
		{kind: internalpb.RequestKind_REQUEST_KIND_COMPLETE_JOBS, seqs: []uint64{4}, refused: []refusal{{item: 0, code: "NOT_FOUND", reason: "job 0-9 not found"}}},
		{kind: internalpb.RequestKind_REQUEST_KIND_EXTEND, seqs: []uint64{4}, refused: []refusal{{item: 1, reason: "stale token"}}},
		{code: internalpb.Code_CODE_NOT_FOUND, msg: "job 0-9 not found"},
		{kind: internalpb.RequestKind_REQUEST_KIND_COUNT, count: 3},
	} {
		f.Add([]byte(encodeCompact("", &c)))
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		m := &internalpb.RequestRecord{}
		if proto.Unmarshal(data, m) != nil {
			return
		}
		m.RequestId, m.AtMs, m.Result = "", 0, nil
		c, err := compactFromProto(m)
		if err != nil {
			return
		}
		enc := encodeCompact("", &c)
		m2 := &internalpb.RequestRecord{}
		if err := proto.Unmarshal([]byte(enc), m2); err != nil {
			t.Fatalf("re-encoding does not decode: %v", err)
		}
		c2, err := compactFromProto(m2)
		if err != nil {
			t.Fatalf("re-encoding does not validate: %v", err)
		}
		if enc2 := encodeCompact("", &c2); enc2 != enc {
			t.Fatal("encoding is not canonical")
		}
	})
}
