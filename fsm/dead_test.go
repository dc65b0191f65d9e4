package fsm

import (
	"bytes"
	"io"
	"strings"
	"testing"

	"github.com/hodei-io/hodei/proto/hodeiv1"
	"github.com/hodei-io/hodei/proto/internalpb"
)

// deadHarness is a harness whose entries have version v (4 unless set).
type deadHarness struct {
	*harness
	v       uint32
	evicted []DeadEviction
	noCheck bool // skip checkInvariants after each command (benchmarks)
}

func newDeadHarness(t testing.TB, mod func(*Config)) *deadHarness {
	t.Helper()
	cfg := DefaultConfig()
	if mod != nil {
		mod(&cfg)
	}
	d := &deadHarness{v: EntryVersionSemantics}
	f, err := New(cfg, Options{OnDeadEvicted: func(_ uint64, ev []DeadEviction) { d.evicted = append(d.evicted, ev...) }})
	if err != nil {
		t.Fatal(err)
	}
	d.harness = &harness{t: t, f: f, now: 1_000_000}
	return d
}

func (d *deadHarness) run(c *internalpb.Command) *internalpb.CommandResult {
	d.index++
	e := &internalpb.Entry{Version: d.v, NowMs: d.now, Commands: []*internalpb.Command{c}}
	d.log = append(d.log, e)
	r := d.f.ApplyEntry(d.index, e)[0]
	if !d.noCheck {
		checkInvariants(d.t, d.f)
	}
	return r
}

func (d *deadHarness) must(c *internalpb.Command) *internalpb.CommandResult {
	d.t.Helper()
	r := d.run(c)
	if err := ResultError(r); err != nil {
		d.t.Fatalf("command %v: %v", c, err)
	}
	return r
}

// submit creates one job and returns its id.
func (d *deadHarness) submit(sp *hodeiv1.JobSpec) string {
	d.t.Helper()
	return d.must(submitCmd(sp)).GetSubmitted()[0].GetJob().GetId()
}

// leaseOne leases the next job to worker w and returns its id and token.
func (d *deadHarness) leaseOne(w string) (string, uint64) {
	d.t.Helper()
	ls := d.must(leaseCmd(w, 1)).GetLeases()
	if len(ls) != 1 {
		d.t.Fatalf("leased %d jobs, want 1", len(ls))
	}
	return ls[0].GetJob().GetId(), ls[0].GetToken()
}

// fail completes the job's current attempt as failed, with output.
func (d *deadHarness) fail(id string, token uint64, retryable bool, output string) {
	d.t.Helper()
	d.must(&internalpb.Command{Kind: &internalpb.Command_Complete{Complete: &internalpb.CompleteJob{
		JobId: id, Token: token, Retryable: retryable,
		Result: &hodeiv1.JobResult{ExitCode: 2, Error: "boom", Output: []byte(output), StartedAtMs: d.now - 5, FinishedAtMs: d.now},
	}}})
}

// promoteAfterBackoff moves the clock past any backoff and promotes.
func (d *deadHarness) promoteAfterBackoff() {
	d.now += 120_000
	d.must(promoteCmd())
}

func retryCmd(id string) *internalpb.Command {
	return &internalpb.Command{Kind: &internalpb.Command_RetryJobs{RetryJobs: &internalpb.RetryJobs{JobId: id}}}
}

func requeueCmd(tenant, kind string, since, until int64, limit uint32) *internalpb.Command {
	return &internalpb.Command{Kind: &internalpb.Command_RetryJobs{RetryJobs: &internalpb.RetryJobs{
		Tenant: tenant, Kind: kind, SinceMs: since, UntilMs: until, Limit: limit}}}
}

func specN(attempts int32) *hodeiv1.JobSpec {
	return &hodeiv1.JobSpec{Command: []string{"false"}, MaxAttempts: attempts}
}

// kill runs a job with one attempt to DEAD (handler said not to retry).
func (d *deadHarness) kill(sp *hodeiv1.JobSpec) string {
	d.t.Helper()
	id := d.submit(sp)
	lid, tok := d.leaseOne("w")
	if lid != id {
		d.t.Fatalf("leased %s, want %s", lid, id)
	}
	d.fail(id, tok, false, "out")
	return id
}

func TestDeadWhenAttemptsExhausted(t *testing.T) {
	d := newDeadHarness(t, nil)
	id := d.submit(specN(2))
	_, tok := d.leaseOne("w1")
	d.fail(id, tok, true, "first output")
	if st := d.job(id).GetState(); st != hodeiv1.JobState_JOB_STATE_PENDING {
		t.Fatalf("after attempt 1: %v", st)
	}
	d.promoteAfterBackoff()
	_, tok2 := d.leaseOne("w2")
	d.fail(id, tok2, true, "second output")
	j := d.job(id)
	if j.GetState() != hodeiv1.JobState_JOB_STATE_DEAD || j.GetDeadReason() != DeadExhausted || j.GetDeadAtMs() != d.now {
		t.Fatalf("job %v: want DEAD (%s) at %d", j, DeadExhausted, d.now)
	}
	h := j.GetHistory()
	if len(h) != 1 || h[0].GetAttempt() != 1 || h[0].GetWorkerId() != "w1" || h[0].GetLeaseToken() != tok ||
		string(h[0].GetOutputTail()) != "first output" || h[0].GetError() != "boom" || h[0].GetExitCode() != 2 || h[0].GetStartedAtMs() == 0 {
		t.Fatalf("history %v", h)
	}
	if r := j.GetLastResult(); r.GetAttempt() != 2 || r.GetWorkerId() != "w2" || string(r.GetOutput()) != "second output" {
		t.Fatalf("last result %v", r)
	}
	if s := d.f.Stats(); s.Dead != 1 || s.Failed != 0 {
		t.Fatalf("stats %+v", s)
	}
	// The finished-job GC does not touch it, whatever its cutoff.
	d.must(gcCmd(d.now+1, 100))
	if _, ok := d.f.GetJob(id); !ok {
		t.Fatal("finished-job GC removed a DEAD job")
	}
	// Nor can it be cancelled.
	wantCode(t, d.run(cancelCmd(id, "x")), internalpb.Code_CODE_FAILED_PRECONDITION, "already DEAD")
}

func TestDeadWhenHandlerSaysNoRetry(t *testing.T) {
	d := newDeadHarness(t, nil)
	id := d.submit(specN(5))
	_, tok := d.leaseOne("w")
	d.fail(id, tok, false, "")
	j := d.job(id)
	if j.GetState() != hodeiv1.JobState_JOB_STATE_DEAD || j.GetDeadReason() != DeadNotRetryable || j.GetAttempts() != 1 {
		t.Fatalf("job %v", j)
	}
	// Through CompleteJobs too (the dispatcher's batched path).
	id2 := d.submit(specN(5))
	_, tok2 := d.leaseOne("w")
	r := d.must(completeJobsCmd(&hodeiv1.Completion{JobId: id2, Token: tok2, Retryable: false, Result: &hodeiv1.JobResult{Error: "no retry"}}))
	if c := r.GetCompleted()[0]; !c.GetOk() || c.GetState() != hodeiv1.JobState_JOB_STATE_DEAD {
		t.Fatalf("completion %v", c)
	}
}

func TestDeadWhenLeaseExpiresOnLastAttempt(t *testing.T) {
	d := newDeadHarness(t, nil)
	id := d.submit(specN(1))
	_, tok := d.leaseOne("w")
	d.now += DefaultConfig().DefaultLeaseTTLMs + 1
	if n := d.must(expireCmd(&hodeiv1.LeaseRef{JobId: id, Token: tok})).GetCount(); n != 1 {
		t.Fatalf("expired %d", n)
	}
	j := d.job(id)
	if j.GetState() != hodeiv1.JobState_JOB_STATE_DEAD || j.GetDeadReason() != DeadLeaseExpired || !j.GetLastResult().GetLeaseExpired() {
		t.Fatalf("job %v", j)
	}
}

// TestOldEntryVersionsStillFail: in entries of versions 1-3 nothing of the
// issue 11 rules applies: FAILED, no history, a snapshot of version <= 3.
func TestOldEntryVersionsStillFail(t *testing.T) {
	for _, v := range []uint32{EntryVersion, EntryVersionTenantWeights, EntryVersionDispatch} {
		d := newDeadHarness(t, nil)
		d.v = v
		id := d.submit(specN(2))
		_, tok := d.leaseOne("w")
		d.fail(id, tok, true, "a")
		d.promoteAfterBackoff()
		_, tok = d.leaseOne("w")
		d.fail(id, tok, true, "b")
		j := d.job(id)
		if j.GetState() != hodeiv1.JobState_JOB_STATE_FAILED || len(j.GetHistory()) != 0 || j.GetDeadAtMs() != 0 {
			t.Fatalf("v%d: job %v", v, j)
		}
		// Not retryable in an old entry.
		wantCode(t, d.run(retryCmd(id)), internalpb.Code_CODE_INVALID_ARGUMENT, "needs an entry of version 4")
		if got := snapshotVersionOf(snapshotBytes(t, d.f)); got >= snapshotVersionSemantics {
			t.Fatalf("v%d: snapshot version %d", v, got)
		}
	}
}

func TestRetryJobGivesFreshAttemptsAndKeepsHistory(t *testing.T) {
	d := newDeadHarness(t, nil)
	id := d.kill(specN(1))
	r := d.must(retryCmd(id))
	j := r.GetJob()
	if j.GetState() != hodeiv1.JobState_JOB_STATE_PENDING || j.GetAttempts() != 0 || j.GetRetries() != 1 || j.GetDeadAtMs() != 0 || j.GetDeadReason() != "" {
		t.Fatalf("retried job %v", j)
	}
	if j.GetLastResult().GetAttempt() != 1 {
		t.Fatalf("last result lost: %v", j.GetLastResult())
	}
	_, tok := d.leaseOne("w9") // ready at once, no promote needed
	d.must(&internalpb.Command{Kind: &internalpb.Command_Complete{Complete: &internalpb.CompleteJob{JobId: id, Token: tok, Success: true, Result: &hodeiv1.JobResult{}}}})
	j = d.job(id)
	if j.GetState() != hodeiv1.JobState_JOB_STATE_SUCCEEDED || len(j.GetHistory()) != 1 || j.GetHistory()[0].GetWorkerId() != "w" || j.GetLastResult().GetWorkerId() != "w9" {
		t.Fatalf("job after the retry %v", j)
	}
	if s := d.f.Stats(); s.Dead != 0 || s.Succeeded != 1 {
		t.Fatalf("stats %+v", s)
	}
}

func TestRetryJobStatesAndErrors(t *testing.T) {
	d := newDeadHarness(t, nil)
	// FAILED (from an old entry) and CANCELLED can be retried too.
	d.v = EntryVersionDispatch
	failed := d.submit(specN(1))
	_, tok := d.leaseOne("w")
	d.fail(failed, tok, true, "")
	d.v = EntryVersionSemantics
	cancelled := d.submit(specN(1))
	d.must(cancelCmd(cancelled, "oops"))
	for _, id := range []string{failed, cancelled} {
		if j := d.must(retryCmd(id)).GetJob(); j.GetState() != hodeiv1.JobState_JOB_STATE_PENDING || j.GetCancelReason() != "" {
			t.Fatalf("retry of %s: %v", id, j)
		}
	}
	ok := d.submit(specN(1))
	d.must(cancelCmd(failed, ""))
	d.must(cancelCmd(cancelled, ""))
	lid, tok := d.leaseOne("w")
	d.must(&internalpb.Command{Kind: &internalpb.Command_Complete{Complete: &internalpb.CompleteJob{JobId: lid, Token: tok, Success: true}}})
	pending := d.submit(specN(1))

	before := d.digest()
	wantCode(t, d.run(retryCmd("0-999")), internalpb.Code_CODE_NOT_FOUND, "not found")
	wantCode(t, d.run(retryCmd(pending)), internalpb.Code_CODE_FAILED_PRECONDITION, "is PENDING")
	wantCode(t, d.run(retryCmd(ok)), internalpb.Code_CODE_FAILED_PRECONDITION, "is SUCCEEDED")
	wantCode(t, d.run(&internalpb.Command{Kind: &internalpb.Command_RetryJobs{RetryJobs: &internalpb.RetryJobs{JobId: ok, Tenant: "x"}}}),
		internalpb.Code_CODE_INVALID_ARGUMENT, "exclusive")
	if d.digest() != before {
		t.Fatal("a refused retry changed the state")
	}
}

func TestRequeueByFilter(t *testing.T) {
	d := newDeadHarness(t, nil)
	t0 := d.now
	a1 := d.kill(&hodeiv1.JobSpec{Tenant: "a", Kind: "mail", MaxAttempts: 1})
	d.now += 1000
	a2 := d.kill(&hodeiv1.JobSpec{Tenant: "a", Kind: "mail", MaxAttempts: 1})
	d.now += 1000
	a3 := d.kill(&hodeiv1.JobSpec{Tenant: "a", Command: []string{"x"}, MaxAttempts: 1})
	b1 := d.kill(&hodeiv1.JobSpec{Tenant: "b", Kind: "mail", MaxAttempts: 1})

	before := d.digest()
	for _, c := range []struct {
		cmd  *internalpb.Command
		want string
	}{
		{requeueCmd("a", "", 0, 0, 0), "limit 0"},
		{requeueCmd("a", "", 0, 0, MaxRequeue+1), "limit"},
		{requeueCmd("a b", "", 0, 0, 10), "tenant"},
		{requeueCmd("a", "bad kind!", 0, 0, 10), "kind"},
		{requeueCmd("a", "", 10, 5, 10), "until (5) must be after since (10)"},
		{requeueCmd("a", "", -1, 0, 10), "since is negative"},
	} {
		wantCode(t, d.run(c.cmd), internalpb.Code_CODE_INVALID_ARGUMENT, c.want)
	}
	if d.digest() != before {
		t.Fatal("a refused requeue changed the state")
	}

	// Time range [t0+1000, t0+2000): only a2 of tenant a's mail jobs.
	if n := d.must(requeueCmd("a", "mail", t0+1000, t0+2000, 10)).GetCount(); n != 1 {
		t.Fatalf("requeued %d, want 1", n)
	}
	if d.job(a2).GetState() != hodeiv1.JobState_JOB_STATE_PENDING || d.job(a1).GetState() != hodeiv1.JobState_JOB_STATE_DEAD {
		t.Fatal("wrong job requeued")
	}
	// The kind "shell" names command jobs.
	if n := d.must(requeueCmd("", ShellKind, 0, 0, 10)).GetCount(); n != 1 || d.job(a3).GetState() != hodeiv1.JobState_JOB_STATE_PENDING {
		t.Fatalf("shell requeue: %d", n)
	}
	// All tenants, bounded by limit, oldest death first.
	if n := d.must(requeueCmd("", "", 0, 0, 1)).GetCount(); n != 1 || d.job(a1).GetState() != hodeiv1.JobState_JOB_STATE_PENDING {
		t.Fatalf("limited requeue: %d", n)
	}
	if n := d.must(requeueCmd("", "", 0, 0, 10)).GetCount(); n != 1 || d.job(b1).GetState() != hodeiv1.JobState_JOB_STATE_PENDING {
		t.Fatalf("rest: %d", n)
	}
	if n := d.must(requeueCmd("", "", 0, 0, 10)).GetCount(); n != 0 {
		t.Fatalf("nothing left, requeued %d", n)
	}
	if n := d.must(requeueCmd("nobody", "", 0, 0, 10)).GetCount(); n != 0 {
		t.Fatalf("unknown tenant: %d", n)
	}
}

func TestDeadBoundEvictsOldestAndReportsIt(t *testing.T) {
	d := newDeadHarness(t, func(c *Config) { c.MaxDeadPerTenant = 2 })
	a1 := d.kill(&hodeiv1.JobSpec{Tenant: "a", Command: []string{"x"}, MaxAttempts: 1})
	d.now++
	a2 := d.kill(&hodeiv1.JobSpec{Tenant: "a", Command: []string{"x"}, MaxAttempts: 1})
	d.now++
	b1 := d.kill(&hodeiv1.JobSpec{Tenant: "b", Command: []string{"x"}, MaxAttempts: 1})
	if len(d.evicted) != 0 {
		t.Fatalf("evicted %v under the bound", d.evicted)
	}
	d.now++
	a3 := d.kill(&hodeiv1.JobSpec{Tenant: "a", Command: []string{"x"}, MaxAttempts: 1})
	if len(d.evicted) != 1 || d.evicted[0] != (DeadEviction{Tenant: "a", JobID: a1, Cause: EvictBound}) {
		t.Fatalf("evicted %v, want %s by the bound", d.evicted, a1)
	}
	if _, ok := d.f.GetJob(a1); ok {
		t.Fatal("evicted job still there")
	}
	for _, id := range []string{a2, a3, b1} {
		if d.job(id).GetState() != hodeiv1.JobState_JOB_STATE_DEAD {
			t.Fatalf("%s is not DEAD", id)
		}
	}
	if c := d.f.DeadCounts(); c["a"] != 2 || c["b"] != 1 || len(c) != 2 {
		t.Fatalf("dead counts %v", c)
	}
}

func TestDeadRetention(t *testing.T) {
	d := newDeadHarness(t, func(c *Config) { c.DeadRetentionMs = 10_000 })
	id := d.kill(specN(1))
	died := d.now
	if at, ok := d.f.OldestDeadAt(); !ok || at != died {
		t.Fatalf("OldestDeadAt %d %v", at, ok)
	}
	// Not yet due at died+retention exactly.
	d.now = died + 10_000
	d.must(gcCmd(0, 100))
	if _, ok := d.f.GetJob(id); !ok {
		t.Fatal("removed before its retention")
	}
	// GC in an old entry: the finished-job GC only.
	d.now = died + 20_000
	d.v = EntryVersion
	d.must(gcCmd(d.now, 100))
	if _, ok := d.f.GetJob(id); !ok || len(d.evicted) != 0 {
		t.Fatal("a version 1 GC removed a DEAD job")
	}
	d.v = EntryVersionSemantics
	if n := d.must(gcCmd(0, 100)).GetCount(); n != 1 {
		t.Fatalf("gc count %d", n)
	}
	if _, ok := d.f.GetJob(id); ok {
		t.Fatal("still there after its retention")
	}
	if len(d.evicted) != 1 || d.evicted[0].Cause != EvictRetention || d.evicted[0].JobID != id {
		t.Fatalf("evicted %v", d.evicted)
	}
}

func TestAttemptHistoryIsBounded(t *testing.T) {
	d := newDeadHarness(t, nil)
	n := int32(MaxHistoryAttempts + 8)
	id := d.submit(specN(n))
	big := strings.Repeat("x", 10_000) + "TAIL"
	longErr := strings.Repeat("é", 600) // 1200 bytes, cut at a rune boundary
	for i := int32(1); i <= n; i++ {
		_, tok := d.leaseOne("w")
		d.must(&internalpb.Command{Kind: &internalpb.Command_Complete{Complete: &internalpb.CompleteJob{JobId: id, Token: tok, Retryable: true,
			Result: &hodeiv1.JobResult{Output: []byte(big), Error: longErr}}}})
		if i < n {
			d.promoteAfterBackoff()
		}
	}
	j := d.job(id)
	h := j.GetHistory()
	if j.GetState() != hodeiv1.JobState_JOB_STATE_DEAD || len(h) != MaxHistoryAttempts {
		t.Fatalf("state %v, history %d", j.GetState(), len(h))
	}
	if h[0].GetAttempt() != n-MaxHistoryAttempts || h[len(h)-1].GetAttempt() != n-1 {
		t.Fatalf("history attempts %d..%d", h[0].GetAttempt(), h[len(h)-1].GetAttempt())
	}
	for _, a := range h {
		if len(a.GetOutputTail()) != maxSummaryOutput || !bytes.HasSuffix(a.GetOutputTail(), []byte("TAIL")) || len(a.GetError()) > maxSummaryError || !strings.HasPrefix(longErr, a.GetError()) {
			t.Fatalf("summary not bounded: %d output bytes, %d error bytes", len(a.GetOutputTail()), len(a.GetError()))
		}
	}
	// Snapshots of it are valid (UTF-8 of the cut errors included).
	restoreInto(t, snapshotBytes(t, d.f))
}

func TestDeadSnapshotRoundTrip(t *testing.T) {
	d := newDeadHarness(t, func(c *Config) { c.MaxDeadPerTenant = 3 })
	var dead []string
	for i := 0; i < 3; i++ {
		dead = append(dead, d.kill(&hodeiv1.JobSpec{Tenant: "a", Command: []string{"x"}, MaxAttempts: 1}))
		d.now++
	}
	d.must(retryCmd(dead[0]))
	_, tok := d.leaseOne("w")
	d.fail(dead[0], tok, false, "again") // dead again, with one earlier attempt in its history
	data := snapshotBytes(t, d.f)
	if v := snapshotVersionOf(data); v != snapshotVersionSemantics {
		t.Fatalf("snapshot version %d, want %d", v, snapshotVersionSemantics)
	}
	r := newDeadHarness(t, func(c *Config) { c.MaxDeadPerTenant = 3 })
	if err := r.f.Restore(io.NopCloser(bytes.NewReader(data))); err != nil {
		t.Fatal(err)
	}
	r.index, r.now = d.index, d.now
	if r.digest() != d.digest() {
		t.Fatal("restored state differs")
	}
	if j := r.job(dead[0]); len(j.GetHistory()) != 1 || j.GetRetries() != 1 || j.GetDeadReason() != DeadNotRetryable {
		t.Fatalf("restored job %v", j)
	}
	// Both go on identically: the bound evicts the same oldest dead job,
	// a requeue picks the same ones.
	for _, h := range []*deadHarness{d, r} {
		h.now++
		h.kill(&hodeiv1.JobSpec{Tenant: "a", Command: []string{"x"}, MaxAttempts: 1})
		h.must(requeueCmd("a", "", 0, 0, 2))
	}
	if r.digest() != d.digest() || len(r.evicted) != 1 || r.evicted[0] != d.evicted[len(d.evicted)-1] {
		t.Fatalf("diverged after restore: evicted %v vs %v", r.evicted, d.evicted)
	}
	// A version 3 snapshot must not carry dead-letter state.
	f, _ := New(DefaultConfig(), Options{})
	bad := append([]byte(nil), data...)
	copy(bad[len(snapshotMagic):], []byte{0, 0, 0, 3})
	if err := f.Restore(io.NopCloser(bytes.NewReader(bad))); err == nil {
		t.Fatal("a version 3 snapshot with DEAD jobs was restored")
	}
}

func TestEntryVersionForCluster(t *testing.T) {
	complete := completeCmd("0-1", 1, false, true)
	if v := EntryVersionForCluster([]*internalpb.Command{complete}, false); v != EntryVersion {
		t.Fatalf("completion without semantics: %d", v)
	}
	for _, c := range []*internalpb.Command{complete, completeJobsCmd(), expireCmd(), gcCmd(1, 1)} {
		if v := EntryVersionForCluster([]*internalpb.Command{submitCmd(spec("x")), c}, true); v != EntryVersionSemantics {
			t.Fatalf("%v with semantics: %d", c, v)
		}
	}
	if v := EntryVersionForCluster([]*internalpb.Command{submitCmd(spec("x")), leaseCmd("w", 1)}, true); v != EntryVersion {
		t.Fatalf("submit and lease with semantics: %d", v)
	}
	if v := EntryVersionFor([]*internalpb.Command{retryCmd("0-1")}); v != EntryVersionSemantics {
		t.Fatalf("retry_jobs: %d", v)
	}
}

// BenchmarkFailedCompletion is the cost of a failed, retried completion
// with a 64 KiB output, in entries of version 3 (no history) and 4 (the
// previous result summarized into the history).
func BenchmarkFailedCompletion(b *testing.B) {
	out := bytes.Repeat([]byte("x"), 64<<10)
	for _, v := range []uint32{EntryVersionDispatch, EntryVersionSemantics} {
		b.Run("v"+string(rune('0'+v)), func(b *testing.B) {
			d := newDeadHarness(b, nil)
			d.v, d.noCheck = v, true
			id := d.submit(&hodeiv1.JobSpec{Command: []string{"x"}, MaxAttempts: 1 << 30, BackoffBaseMs: 1, BackoffMaxMs: 1})
			b.ReportAllocs()
			b.ResetTimer()
			for i := 0; i < b.N; i++ {
				_, tok := d.leaseOne("w")
				d.must(completeJobsCmd(&hodeiv1.Completion{JobId: id, Token: tok, Retryable: true, Result: &hodeiv1.JobResult{Output: out, Error: "e"}}))
				d.now += 2
				d.must(promoteCmd())
			}
		})
	}
}

// A RetryJobs with a request id answers a repeat with the first result
// (a client retrying after a lost reply), changing nothing.
func TestRetryJobsRequestIDReplays(t *testing.T) {
	d := newDeadHarness(t, nil)
	id := d.kill(specN(1))
	other := d.kill(specN(1))
	first := d.must(withRID("r1", retryCmd(id)))
	before := d.digest()
	again := d.must(withRID("r1", retryCmd(id)))
	if again.GetJob().GetId() != id || again.GetJob().GetRetries() != 1 || first.GetJob().GetRetries() != 1 {
		t.Fatalf("replay %v, first %v", again.GetJob(), first.GetJob())
	}
	if d.digest() != before {
		t.Fatal("a replayed retry changed the state")
	}
	if n := d.must(withRID("r2", requeueCmd("", "", 0, 0, 10))).GetCount(); n != 1 {
		t.Fatalf("requeued %d", n)
	}
	d.must(cancelCmd(other, ""))
	before = d.digest()
	if n := d.must(withRID("r2", requeueCmd("", "", 0, 0, 10))).GetCount(); n != 1 {
		t.Fatalf("replayed requeue count %d, want the first answer 1", n)
	}
	if d.digest() != before {
		t.Fatal("a replayed requeue changed the state")
	}
}
