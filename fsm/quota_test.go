package fsm

import (
	"strings"
	"testing"

	"google.golang.org/protobuf/proto"

	"github.com/hodei-io/hodei/proto/hodeiv1"
	"github.com/hodei-io/hodei/proto/internalpb"
)

func limitsCmd(tenant string, l *hodeiv1.TenantLimits) *internalpb.Command {
	return &internalpb.Command{Kind: &internalpb.Command_SetTenantLimits{SetTenantLimits: &internalpb.SetTenantLimits{Tenant: tenant, Limits: l}}}
}

func tenantSpec(tenant string) *hodeiv1.JobSpec {
	return &hodeiv1.JobSpec{Tenant: tenant, Command: []string{"true"}}
}

// submitted returns the per-spec results of a submit, failing on a
// command-level error.
func (h *harness) submitted(specs ...*hodeiv1.JobSpec) []*hodeiv1.SubmitJobResponse {
	h.t.Helper()
	r := h.applyNew(submitCmd(specs...))[0]
	if err := ResultError(r); err != nil {
		h.t.Fatalf("submit: %v", err)
	}
	return r.GetSubmitted()
}

func refused(r *hodeiv1.SubmitJobResponse, part string) bool {
	return r.GetJob() == nil && r.GetCode() == "RESOURCE_EXHAUSTED" && strings.Contains(r.GetReason(), part)
}

func TestTenantLimitsValidated(t *testing.T) {
	h := newHarness(t)
	h.applyNew(limitsCmd("z", nil)) // the first entry sets replicated time
	before := h.digest()
	for name, tc := range map[string]struct {
		tenant string
		l      *hodeiv1.TenantLimits
		want   string
	}{
		"max-queued":       {"a", &hodeiv1.TenantLimits{MaxQueued: MaxQueuedLimit + 1}, "max-queued"},
		"max-running":      {"a", &hodeiv1.TenantLimits{MaxRunning: MaxRunningLimit + 1}, "max-running"},
		"rate":             {"a", &hodeiv1.TenantLimits{SubmitRateMilli: MaxSubmitRateMilli + 1, Burst: 1}, "submit-rate"},
		"burst range":      {"a", &hodeiv1.TenantLimits{SubmitRateMilli: 1000, Burst: MaxBurstLimit + 1}, "burst"},
		"rate no burst":    {"a", &hodeiv1.TenantLimits{SubmitRateMilli: 1000}, "burst must be"},
		"burst no rate":    {"a", &hodeiv1.TenantLimits{Burst: 3}, "needs a submit-rate"},
		"bad tenant":       {"a b", &hodeiv1.TenantLimits{MaxQueued: 1}, "tenant"},
		"empty tenant":     {"", &hodeiv1.TenantLimits{MaxQueued: 1}, "tenant is required"},
		"unlimited is set": {"a", nil, ""},
	} {
		r := h.applyNew(limitsCmd(tc.tenant, tc.l))[0]
		if tc.want == "" {
			if ResultError(r) != nil {
				t.Errorf("%s: %v", name, ResultError(r))
			}
			continue
		}
		wantCode(t, r, internalpb.Code_CODE_INVALID_ARGUMENT, tc.want)
	}
	if h.digest() != before {
		t.Fatal("a rejected (or empty) limit changed the state")
	}
	// In an entry of version 3 the command is what an older binary would
	// do with it: rejected.
	h.index++
	r := h.f.ApplyEntry(h.index, &internalpb.Entry{Version: EntryVersionDispatch, NowMs: h.now,
		Commands: []*internalpb.Command{limitsCmd("a", &hodeiv1.TenantLimits{MaxQueued: 1})}})[0]
	wantCode(t, r, internalpb.Code_CODE_INVALID_ARGUMENT, "needs an entry of version 4")
	if got := EntryVersionFor([]*internalpb.Command{limitsCmd("a", nil)}); got != EntryVersionSemantics {
		t.Fatalf("EntryVersionFor(SetTenantLimits) = %d", got)
	}
}

func TestMaxQueuedRefusesPerSpec(t *testing.T) {
	h := newHarness(t)
	h.applyNew(limitsCmd("a", &hodeiv1.TenantLimits{MaxQueued: 2}))
	res := h.submitted(tenantSpec("a"), tenantSpec("b"), tenantSpec("a"), tenantSpec("a"), tenantSpec("b"))
	for i, want := range []bool{false, false, false, true, false} {
		if got := refused(res[i], "max-queued limit of 2"); got != want {
			t.Errorf("spec %d: refused=%v, want %v (%v)", i, got, want, res[i])
		}
	}
	if n := h.f.TenantUsage("a").GetQueued(); n != 2 {
		t.Fatalf("tenant a has %d queued, want 2 (nothing stored for the refused spec)", n)
	}
	if n := h.f.TenantUsage("b").GetQueued(); n != 2 {
		t.Fatalf("tenant b has %d queued, want 2", n)
	}
	// A duplicate (idempotency key) is answered, never refused.
	h2 := newHarness(t)
	k := tenantSpec("a")
	k.IdempotencyKey = "k"
	h2.submitted(k)
	h2.applyNew(limitsCmd("a", &hodeiv1.TenantLimits{MaxQueued: 1}))
	if r := h2.submitted(k)[0]; !r.GetDuplicate() || r.GetCode() != "" {
		t.Fatalf("duplicate at the limit: %v", r)
	}
	// Leasing frees the queue: RUNNING jobs do not count as queued.
	h.ok(leaseCmd("w", 10))
	if r := h.submitted(tenantSpec("a"))[0]; r.GetCode() != "" {
		t.Fatalf("after lease: %v", r)
	}
	u := h.f.TenantUsage("a")
	if u.GetRefusedQueued() != 1 || u.GetRunning() != 2 || u.GetQueued() != 1 {
		t.Fatalf("usage %v", u)
	}
}

func TestSubmitRateTokenBucket(t *testing.T) {
	h := newHarness(t)
	// 2 jobs/s, burst 3: a full bucket of 3, then one token per 500 ms.
	h.applyNew(limitsCmd("a", &hodeiv1.TenantLimits{SubmitRateMilli: 2000, Burst: 3}))
	res := h.submitted(tenantSpec("a"), tenantSpec("a"), tenantSpec("a"), tenantSpec("a"), tenantSpec("b"))
	for i, want := range []bool{false, false, false, true, false} {
		if got := refused(res[i], "submit-rate limit of 2/s (burst 3)"); got != want {
			t.Errorf("spec %d: refused=%v, want %v (%v)", i, got, want, res[i])
		}
	}
	if !strings.Contains(res[3].GetReason(), "due in 500 ms") {
		t.Errorf("reason %q does not say when", res[3].GetReason())
	}
	h.now += 499
	if r := h.submitted(tenantSpec("a"))[0]; !refused(r, "due in 1 ms") {
		t.Fatalf("at 499 ms: %v", r)
	}
	h.now++
	if r := h.submitted(tenantSpec("a"))[0]; r.GetCode() != "" {
		t.Fatalf("at 500 ms: %v", r)
	}
	h.now += 10_000 // the bucket fills to its burst, no more
	res = h.submitted(tenantSpec("a"), tenantSpec("a"), tenantSpec("a"), tenantSpec("a"))
	if res[2].GetCode() != "" || !refused(res[3], "submit-rate") {
		t.Fatalf("after a long pause: %v", res)
	}
	if u := h.f.TenantUsage("a"); u.GetRefusedRate() != 3 || u.GetQueued() != 7 {
		t.Fatalf("usage %v", u)
	}
	// A fractional rate: 0.5/s is one token per 2 s.
	h.applyNew(limitsCmd("c", &hodeiv1.TenantLimits{SubmitRateMilli: 500, Burst: 1}))
	h.submitted(tenantSpec("c"))
	h.now += 1999
	if r := h.submitted(tenantSpec("c"))[0]; !refused(r, "0.5/s") {
		t.Fatalf("0.5/s after 1999 ms: %v", r)
	}
	h.now++
	if r := h.submitted(tenantSpec("c"))[0]; r.GetCode() != "" {
		t.Fatalf("0.5/s after 2000 ms: %v", r)
	}
}

// TestQuotaSnapshotDeterminism: a replica restored from a snapshot taken
// mid-way continues the token bucket and the counters exactly as the
// replica that applied every entry; version 4 is written only with quota
// state.
func TestQuotaSnapshotDeterminism(t *testing.T) {
	a := newHarness(t)
	if v := snapshotVersionOf(snapshotBytes(t, a.f)); v != snapshotVersionNoWeights {
		t.Fatalf("empty state: version %d", v)
	}
	a.applyNew(limitsCmd("a", &hodeiv1.TenantLimits{SubmitRateMilli: 1500, Burst: 2, MaxQueued: 5, MaxRunning: 1}))
	step := func(h *harness, i int) []*hodeiv1.SubmitJobResponse {
		h.now += int64(137 * (i % 7))
		return h.submitted(tenantSpec("a"), tenantSpec("a"))
	}
	for i := 0; i < 5; i++ {
		step(a, i)
	}
	data := snapshotBytes(t, a.f)
	if v := snapshotVersionOf(data); v != snapshotVersionSemantics {
		t.Fatalf("with limits: version %d", v)
	}
	b := &harness{t: t, f: restoreInto(t, data), index: a.index, now: a.now}
	for i := 5; i < 20; i++ {
		ra, rb := step(a, i), step(b, i)
		for k := range ra {
			if !proto.Equal(ra[k], rb[k]) {
				t.Fatalf("step %d spec %d: %v vs %v", i, k, ra[k], rb[k])
			}
		}
		if i%4 == 0 {
			a.ok(leaseCmd("w", 5))
			b.ok(leaseCmd("w", 5))
		}
	}
	if a.digest() != b.digest() {
		t.Fatal("the restored replica diverged")
	}
	if !proto.Equal(a.f.TenantUsage("a"), b.f.TenantUsage("a")) {
		t.Fatalf("usage %v vs %v", a.f.TenantUsage("a"), b.f.TenantUsage("a"))
	}
	// Limits cleared: the refusal counters keep the quota state (and
	// version 4); a tenant never refused leaves none.
	a.applyNew(limitsCmd("a", nil))
	if a.f.TenantLimits("a") != nil || a.f.TenantUsage("a").GetRefusedRate() == 0 {
		t.Fatalf("after clearing: limits %v usage %v", a.f.TenantLimits("a"), a.f.TenantUsage("a"))
	}
	c := newHarness(t)
	c.applyNew(limitsCmd("x", &hodeiv1.TenantLimits{MaxQueued: 3}))
	c.applyNew(limitsCmd("x", nil))
	if v := snapshotVersionOf(snapshotBytes(t, c.f)); v != snapshotVersionNoWeights {
		t.Fatalf("limits set and cleared: version %d", v)
	}
}

func TestMaxRunningTwoTenants(t *testing.T) {
	h := newHarness(t)
	h.applyNew(limitsCmd("a", &hodeiv1.TenantLimits{MaxRunning: 2}))
	var specs []*hodeiv1.JobSpec
	for i := 0; i < 5; i++ {
		specs = append(specs, tenantSpec("a"), tenantSpec("b"))
	}
	h.submitted(specs...)
	count := func(ls []*hodeiv1.Lease) (a, b int) {
		for _, l := range ls {
			if l.GetJob().GetSpec().GetTenant() == "a" {
				a++
			} else {
				b++
			}
		}
		return
	}
	ls := h.ok(leaseCmd("w1", 100)).GetLeases()
	if a, b := count(ls); a != 2 || b != 5 {
		t.Fatalf("first lease: a=%d b=%d, want 2 and 5", a, b)
	}
	if ls2 := h.ok(leaseCmd("w2", 100)).GetLeases(); len(ls2) != 0 {
		t.Fatalf("tenant a at its max-running got %d more", len(ls2))
	}
	if h.f.HasReadyFor(nil, nil) {
		t.Fatal("HasReadyFor says yes while only a capped tenant has ready jobs")
	}
	// One of a's jobs finishes: exactly one more is leased.
	var first *hodeiv1.Lease
	for _, l := range ls {
		if l.GetJob().GetSpec().GetTenant() == "a" {
			first = l
			break
		}
	}
	h.ok(completeCmd(first.GetJob().GetId(), first.GetToken(), true, false))
	if !h.f.HasReadyFor(nil, nil) {
		t.Fatal("HasReadyFor says no with room under the cap")
	}
	if ls3 := h.ok(leaseCmd("w2", 100)).GetLeases(); len(ls3) != 1 {
		t.Fatalf("after a completion: %d leases, want 1", len(ls3))
	}
	// In one LeaseBatch the cap holds across demands.
	g := newHarness(t)
	g.applyNew(limitsCmd("a", &hodeiv1.TenantLimits{MaxRunning: 3}))
	g.submitted(specs...)
	r := g.applyNew(&internalpb.Command{Kind: &internalpb.Command_LeaseBatch{LeaseBatch: &internalpb.LeaseBatch{Demands: []*internalpb.LeaseJobs{
		{WorkerId: "x", Capacity: 2}, {WorkerId: "y", Capacity: 2}, {WorkerId: "z", Capacity: 10}}}}})[0]
	ta := 0
	for _, gr := range r.GetGrants() {
		n, _ := count(gr.GetLeases())
		ta += n
	}
	if ta != 3 {
		t.Fatalf("lease batch leased %d of tenant a, cap 3", ta)
	}
}

func TestSubmitRefusalReplayedByRequestID(t *testing.T) {
	h := newHarness(t)
	h.applyNew(limitsCmd("a", &hodeiv1.TenantLimits{MaxQueued: 1}))
	cmd := withRID("r1", submitCmd(tenantSpec("a"), tenantSpec("a"), tenantSpec("b")))
	first := h.applyNew(cmd)[0]
	before := h.digest()
	again := h.applyNew(withRID("r1", submitCmd(tenantSpec("a"), tenantSpec("a"), tenantSpec("b"))))[0]
	if len(again.GetSubmitted()) != 3 || !refused(again.GetSubmitted()[1], "max-queued") ||
		again.GetSubmitted()[0].GetJob().GetId() != first.GetSubmitted()[0].GetJob().GetId() ||
		again.GetSubmitted()[2].GetJob().GetId() != first.GetSubmitted()[2].GetJob().GetId() {
		t.Fatalf("replay %v, first %v", again, first)
	}
	if h.digest() != before {
		t.Fatal("a replay changed the state")
	}
	// The record survives a snapshot (compact form).
	f := restoreInto(t, snapshotBytes(t, h.f))
	h2 := &harness{t: t, f: f, index: h.index, now: h.now}
	if r := h2.applyNew(withRID("r1", submitCmd(tenantSpec("a"), tenantSpec("a"), tenantSpec("b"))))[0]; !proto.Equal(r, again) {
		t.Fatalf("after restore %v, want %v", r, again)
	}
	// Every spec refused: still a record.
	h.now++
	all := h.applyNew(withRID("r2", submitCmd(tenantSpec("a"))))[0]
	if !refused(all.GetSubmitted()[0], "max-queued") {
		t.Fatalf("%v", all)
	}
	if r := h.applyNew(withRID("r2", submitCmd(tenantSpec("a"))))[0]; !proto.Equal(r, all) {
		t.Fatalf("replay of an all-refused submit: %v", r)
	}
}
