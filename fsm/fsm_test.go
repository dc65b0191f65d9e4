package fsm

import (
	"bytes"
	"errors"
	"fmt"
	"strings"
	"testing"

	"github.com/hashicorp/raft"

	"github.com/hodei-io/hodei/proto/hodeiv1"
	"github.com/hodei-io/hodei/proto/internalpb"
)

const (
	pending   = hodeiv1.JobState_JOB_STATE_PENDING
	running   = hodeiv1.JobState_JOB_STATE_RUNNING
	succeeded = hodeiv1.JobState_JOB_STATE_SUCCEEDED
	failed    = hodeiv1.JobState_JOB_STATE_FAILED
	cancelled = hodeiv1.JobState_JOB_STATE_CANCELLED
)

func TestConfig(t *testing.T) {
	if err := DefaultConfig().Validate(); err != nil {
		t.Fatal(err)
	}
	c := DefaultConfig()
	c.MaxLeaseTTLMs = 1
	c.DefaultMaxAttempts = 0
	err := c.Validate()
	if err == nil || !strings.Contains(err.Error(), "MaxLeaseTTLMs") || !strings.Contains(err.Error(), "DefaultMaxAttempts") {
		t.Fatalf("Validate = %v", err)
	}
	if _, err := New(c, Options{}); err == nil {
		t.Fatal("New accepted a bad config")
	}
}

func TestJobID(t *testing.T) {
	if got := FormatJobID(3, 42); got != "3-42" {
		t.Fatal(got)
	}
	sh, seq, err := ParseJobID("3-42")
	if err != nil || sh != 3 || seq != 42 {
		t.Fatal(sh, seq, err)
	}
	for _, bad := range []string{"", "-", "1-", "-1", "01-2", "1-02", "1-0", "a-1", "1-1-1", "+1-2", "4294967296-1", "1-18446744073709551616"} {
		if _, _, err := ParseJobID(bad); !errors.Is(err, ErrInvalidJobID) {
			t.Errorf("ParseJobID(%q) err = %v", bad, err)
		}
	}
}

func TestSubmit(t *testing.T) {
	h := newHarness(t)
	r := h.ok(submitCmd(spec("echo", "a"), &hodeiv1.JobSpec{Tenant: "t1", Command: []string{"ls"}, Priority: 5, Env: []*hodeiv1.KeyValue{kv("B", "2"), kv("A", "1")}}))
	if len(r.Submitted) != 2 {
		t.Fatalf("submitted %d", len(r.Submitted))
	}
	j0, j1 := r.Submitted[0].GetJob(), r.Submitted[1].GetJob()
	if j0.GetId() != "0-1" || j1.GetId() != "0-2" || j0.GetSeq() != 1 {
		t.Fatalf("ids %s %s", j0.GetId(), j1.GetId())
	}
	if j0.GetState() != pending || j0.GetCreatedAtMs() != h.now || j0.GetReadyAtMs() != h.now {
		t.Fatalf("job %v", j0)
	}
	sp := j0.GetSpec()
	if sp.GetTenant() != "default" || sp.GetMaxAttempts() != 3 || sp.GetBackoffBaseMs() != 1000 || sp.GetBackoffMaxMs() != 60000 {
		t.Fatalf("defaults not filled: %v", sp)
	}
	if env := j1.GetSpec().GetEnv(); env[0].GetKey() != "A" || env[1].GetKey() != "B" {
		t.Fatalf("env not sorted: %v", env)
	}
	st := h.f.Stats()
	if st.Jobs != 2 || st.Ready != 2 || st.Tenants != 2 || h.f.ReadyCount() != 2 || st.AppliedIndex != 1 {
		t.Fatalf("stats %+v", st)
	}
	// The returned job is a copy.
	j0.State = succeeded
	if h.job("0-1").GetState() != pending {
		t.Fatal("result aliases FSM state")
	}
}

func TestSubmitInvalidChangesNothing(t *testing.T) {
	h := newHarness(t)
	h.ok(submitCmd(spec("true")))
	before := h.digest()
	cases := []struct {
		name string
		spec *hodeiv1.JobSpec
		msg  string
	}{
		{"empty command", spec(), "command is empty"},
		{"shell two", &hodeiv1.JobSpec{Command: []string{"a", "b"}, Shell: true}, "shell=true"},
		{"shell empty", &hodeiv1.JobSpec{Command: []string{""}, Shell: true}, "shell=true"},
		{"priority", &hodeiv1.JobSpec{Command: []string{"a"}, Priority: 101}, "priority 101"},
		{"neg priority", &hodeiv1.JobSpec{Command: []string{"a"}, Priority: -1}, "priority -1"},
		{"timeout", &hodeiv1.JobSpec{Command: []string{"a"}, TimeoutMs: -1}, "timeout_ms is negative"},
		{"delay", &hodeiv1.JobSpec{Command: []string{"a"}, DelayMs: -1}, "delay_ms is negative"},
		{"backoff", &hodeiv1.JobSpec{Command: []string{"a"}, BackoffBaseMs: -1}, "backoff_base_ms is negative"},
		{"attempts", &hodeiv1.JobSpec{Command: []string{"a"}, MaxAttempts: -1}, "max_attempts is negative"},
		{"tenant chars", &hodeiv1.JobSpec{Command: []string{"a"}, Tenant: "a b"}, "must match"},
		{"tenant long", &hodeiv1.JobSpec{Command: []string{"a"}, Tenant: strings.Repeat("a", 129)}, "tenant is 129 bytes"},
		{"key long", &hodeiv1.JobSpec{Command: []string{"a"}, IdempotencyKey: strings.Repeat("k", 129)}, "idempotency_key is 129 bytes"},
		{"dup env", &hodeiv1.JobSpec{Command: []string{"a"}, Env: []*hodeiv1.KeyValue{kv("A", "1"), kv("A", "2")}}, "duplicate env key"},
		{"dup label", &hodeiv1.JobSpec{Command: []string{"a"}, Labels: []*hodeiv1.KeyValue{kv("gpu", "1"), kv("gpu", "1")}}, "duplicate label key"},
		{"empty env key", &hodeiv1.JobSpec{Command: []string{"a"}, Env: []*hodeiv1.KeyValue{kv("", "1")}}, "empty key"},
		{"env =", &hodeiv1.JobSpec{Command: []string{"a"}, Env: []*hodeiv1.KeyValue{kv("A=B", "1")}}, "contains '='"},
		{"payload", &hodeiv1.JobSpec{Command: []string{"a", strings.Repeat("x", 1<<20)}}, "spec is 1048577 bytes (payload, command, env and labels), limit is 1048576"},
		{"nil spec", nil, "spec is missing"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			_, err := NormalizeSpec(tc.spec, DefaultConfig())
			if !errors.Is(err, ErrInvalidSpec) || !strings.Contains(err.Error(), tc.msg) {
				t.Fatalf("NormalizeSpec err = %v, want %q", err, tc.msg)
			}
			// In a batch with a valid spec: the whole command is rejected.
			r := h.apply(submitCmd(spec("ok"), tc.spec))
			wantCode(t, r, internalpb.Code_CODE_INVALID_ARGUMENT, tc.msg)
			if len(r.GetSubmitted()) != 0 {
				t.Fatal("rejected batch returned jobs")
			}
			if h.digest() != before {
				t.Fatal("invalid submit changed the state")
			}
		})
	}
	wantCode(t, h.apply(&internalpb.Command{}), internalpb.Code_CODE_INVALID_ARGUMENT, "empty command")
	wantCode(t, h.apply(submitCmd()), internalpb.Code_CODE_INVALID_ARGUMENT, "no specs")
	if h.digest() != before {
		t.Fatal("state changed")
	}
}

func TestIdempotencyKey(t *testing.T) {
	h := newHarness(t)
	a := &hodeiv1.JobSpec{Command: []string{"a"}, IdempotencyKey: "k1"}
	r := h.ok(submitCmd(a, a, &hodeiv1.JobSpec{Command: []string{"a"}, IdempotencyKey: "k1", Tenant: "other"}))
	s := r.GetSubmitted()
	if s[0].GetDuplicate() || !s[1].GetDuplicate() || s[1].GetJob().GetId() != s[0].GetJob().GetId() || s[2].GetDuplicate() {
		t.Fatalf("submitted %v", s)
	}
	r = h.ok(submitCmd(a))
	if !r.GetSubmitted()[0].GetDuplicate() || r.GetSubmitted()[0].GetJob().GetId() != "0-1" {
		t.Fatalf("resubmit %v", r)
	}
	if h.f.Stats().Jobs != 2 {
		t.Fatal("duplicate created a job")
	}
}

func TestLeasePriorityFIFOAndLabels(t *testing.T) {
	h := newHarness(t)
	h.ok(submitCmd(
		&hodeiv1.JobSpec{Command: []string{"low"}, Priority: 1},                                                  // 0-1
		&hodeiv1.JobSpec{Command: []string{"high"}, Priority: 9},                                                 // 0-2
		&hodeiv1.JobSpec{Command: []string{"gpu"}, Priority: 50, Labels: []*hodeiv1.KeyValue{kv("gpu", "a100")}}, // 0-3
		&hodeiv1.JobSpec{Command: []string{"high2"}, Priority: 9},                                                // 0-4
	))
	if h.f.HasReadyFor(nil, nil) != true {
		t.Fatal("HasReadyFor(nil, nil)")
	}
	r := h.ok(leaseCmd("w1", 2))
	if ids := leaseIDs(r); ids != "0-2,0-4" {
		t.Fatalf("leased %s", ids)
	}
	l := r.GetLeases()[0]
	if l.GetToken() != 1 || r.GetLeases()[1].GetToken() != 2 || l.GetTtlMs() != 30000 || l.GetExpiresAtMs() != h.now+30000 {
		t.Fatalf("lease %v", l)
	}
	if l.GetJob().GetState() != running || l.GetJob().GetAttempts() != 1 || l.GetJob().GetLeaseWorker() != "w1" {
		t.Fatalf("job %v", l.GetJob())
	}
	// A worker with the wrong label value skips the gpu job.
	if !h.f.HasReadyFor([]*hodeiv1.KeyValue{kv("gpu", "t4")}, nil) {
		t.Fatal("low-priority unlabelled job is runnable")
	}
	r = h.ok(leaseCmd("w2", 5, kv("gpu", "t4")))
	if ids := leaseIDs(r); ids != "0-1" {
		t.Fatalf("leased %s", ids)
	}
	if h.f.HasReadyFor(nil, nil) || h.f.HasReadyFor([]*hodeiv1.KeyValue{kv("gpu", "t4")}, nil) {
		t.Fatal("only the gpu job is left")
	}
	if !h.f.HasReadyFor([]*hodeiv1.KeyValue{kv("zone", "x"), kv("gpu", "a100")}, nil) {
		t.Fatal("gpu worker can run it")
	}
	r = h.ok(leaseCmd("w3", 5, kv("zone", "x"), kv("gpu", "a100")))
	if ids := leaseIDs(r); ids != "0-3" {
		t.Fatalf("leased %s", ids)
	}
	// Empty queue: an OK empty lease.
	if r := h.ok(leaseCmd("w3", 5)); len(r.GetLeases()) != 0 {
		t.Fatal("leased from an empty queue")
	}
	// TTL clamp.
	h.ok(submitCmd(spec("x")))
	r = h.ok(&internalpb.Command{Kind: &internalpb.Command_Lease{Lease: &internalpb.LeaseJobs{WorkerId: "w", Capacity: 1, TtlMs: 1 << 40}}})
	if r.GetLeases()[0].GetTtlMs() != DefaultConfig().MaxLeaseTTLMs {
		t.Fatalf("ttl not clamped: %v", r.GetLeases()[0])
	}
	before := h.digest()
	wantCode(t, h.apply(leaseCmd("", 1)), internalpb.Code_CODE_INVALID_ARGUMENT, "worker_id")
	wantCode(t, h.apply(leaseCmd("w", 0)), internalpb.Code_CODE_INVALID_ARGUMENT, "capacity")
	wantCode(t, h.apply(leaseCmd("w", 1001)), internalpb.Code_CODE_INVALID_ARGUMENT, "capacity")
	if h.digest() != before {
		t.Fatal("invalid lease changed state")
	}
}

func leaseIDs(r *internalpb.CommandResult) string {
	var ids []string
	for _, l := range r.GetLeases() {
		ids = append(ids, l.GetJob().GetId())
	}
	return strings.Join(ids, ",")
}

func TestFairShareAcrossTenants(t *testing.T) {
	h := newHarness(t)
	var specs []*hodeiv1.JobSpec
	for i := 0; i < 10; i++ {
		specs = append(specs, &hodeiv1.JobSpec{Tenant: "noisy", Command: []string{"n"}, Priority: 100})
	}
	specs = append(specs, &hodeiv1.JobSpec{Tenant: "b", Command: []string{"b"}}, &hodeiv1.JobSpec{Tenant: "c", Command: []string{"c"}})
	h.ok(submitCmd(specs...))
	var tenants []string
	for i := 0; i < 5; i++ {
		r := h.ok(leaseCmd("w", 1))
		tenants = append(tenants, r.GetLeases()[0].GetJob().GetSpec().GetTenant())
	}
	// Name order round robin: b, c, noisy, then noisy (the only one left).
	if got := strings.Join(tenants, ","); got != "b,c,noisy,noisy,noisy" {
		t.Fatalf("order %s", got)
	}
	h.ok(submitCmd(&hodeiv1.JobSpec{Tenant: "a", Command: []string{"a"}}, &hodeiv1.JobSpec{Tenant: "z", Command: []string{"z"}}))
	r := h.ok(leaseCmd("w", 4))
	var got []string
	for _, l := range r.GetLeases() {
		got = append(got, l.GetJob().GetSpec().GetTenant())
	}
	// The cursor is after "noisy": z, then wrap to a, then noisy twice.
	if s := strings.Join(got, ","); s != "z,a,noisy,noisy" {
		t.Fatalf("order %s", s)
	}
}

func TestExtendLeases(t *testing.T) {
	h := newHarness(t)
	h.ok(submitCmd(spec("a"), spec("b"), spec("c")))
	r := h.ok(leaseCmd("w1", 3))
	l1, l2, l3 := r.GetLeases()[0], r.GetLeases()[1], r.GetLeases()[2]
	h.ok(cancelCmd(l2.GetJob().GetId(), "bye"))
	h.ok(completeCmd(l3.GetJob().GetId(), l3.GetToken(), true, false))
	h.now += 1000
	r = h.ok(extendCmd("w1", 5000,
		&hodeiv1.LeaseRef{JobId: l1.GetJob().GetId(), Token: l1.GetToken()},
		&hodeiv1.LeaseRef{JobId: l1.GetJob().GetId(), Token: l1.GetToken() + 100},
		&hodeiv1.LeaseRef{JobId: l2.GetJob().GetId(), Token: l2.GetToken()},
		&hodeiv1.LeaseRef{JobId: l3.GetJob().GetId(), Token: l3.GetToken()},
		&hodeiv1.LeaseRef{JobId: "0-99", Token: 1},
		&hodeiv1.LeaseRef{JobId: "garbage", Token: 1},
	))
	want := []struct {
		ok     bool
		reason string
	}{{true, ""}, {false, "stale token"}, {false, "job cancelled"}, {false, "not running"}, {false, "not found"}, {false, "not found"}}
	for i, w := range want {
		e := r.GetExtended()[i]
		if e.GetOk() != w.ok || e.GetReason() != w.reason {
			t.Errorf("extend %d = %v, want %v", i, e, w)
		}
	}
	if e := r.GetExtended()[0]; e.GetExpiresAtMs() != h.now+5000 {
		t.Fatalf("expires %d", e.GetExpiresAtMs())
	}
	if got, _ := h.f.NextLeaseExpiry(); got != h.now+5000 {
		t.Fatalf("lease timeline not updated: %d", got)
	}
	r = h.ok(extendCmd("w2", 0, &hodeiv1.LeaseRef{JobId: l1.GetJob().GetId(), Token: l1.GetToken()}))
	if e := r.GetExtended()[0]; e.GetOk() || e.GetReason() != "leased by another worker" {
		t.Fatalf("other worker: %v", e)
	}
}

func TestCompleteAndRetry(t *testing.T) {
	h := newHarness(t)
	h.ok(submitCmd(&hodeiv1.JobSpec{Command: []string{"a"}, MaxAttempts: 3, BackoffBaseMs: 100, BackoffMaxMs: 150}))
	var tokens []uint64
	for attempt := 1; attempt <= 3; attempt++ {
		r := h.ok(leaseCmd("w", 1))
		if len(r.GetLeases()) != 1 {
			t.Fatalf("attempt %d: nothing leased (ready=%d)", attempt, h.f.ReadyCount())
		}
		l := r.GetLeases()[0]
		tokens = append(tokens, l.GetToken())
		if l.GetJob().GetAttempts() != int32(attempt) {
			t.Fatalf("attempts %d", l.GetJob().GetAttempts())
		}
		// A stale token from a previous attempt is refused.
		if attempt > 1 {
			wantCode(t, h.apply(completeCmd("0-1", tokens[0], true, false)), internalpb.Code_CODE_FAILED_PRECONDITION,
				"stale lease token: job 0-1 has token")
		}
		r = h.ok(completeCmd("0-1", l.GetToken(), false, true))
		j := r.GetJob()
		if attempt < 3 {
			wantBackoff := []int64{100, 150}[attempt-1]
			if j.GetState() != pending || j.GetReadyAtMs() != h.now+wantBackoff || j.GetLeaseToken() != 0 || j.GetLeaseWorker() != "" {
				t.Fatalf("retry job %v", j)
			}
			if h.f.ReadyCount() != 0 || h.f.Stats().Delayed != 1 {
				t.Fatal("retry is not delayed")
			}
			if at, ok := h.f.NextDelayedAt(); !ok || at != j.GetReadyAtMs() {
				t.Fatal("NextDelayedAt")
			}
			// Not yet: promote before ready_at does nothing.
			if r := h.ok(promoteCmd()); r.GetCount() != 0 {
				t.Fatal("promoted early")
			}
			h.now = j.GetReadyAtMs()
			if r := h.ok(promoteCmd()); r.GetCount() != 1 {
				t.Fatal("not promoted")
			}
		} else if j.GetState() != failed || j.GetFinishedAtMs() != h.now {
			t.Fatalf("final job %v", j)
		}
	}
	if !(tokens[0] < tokens[1] && tokens[1] < tokens[2]) {
		t.Fatalf("tokens %v", tokens)
	}
	wantCode(t, h.apply(completeCmd("0-1", tokens[2], true, false)), internalpb.Code_CODE_FAILED_PRECONDITION, "job 0-1 is FAILED")
	wantCode(t, h.apply(completeCmd("0-9", 1, true, false)), internalpb.Code_CODE_NOT_FOUND, "0-9")

	// Success, and a non-retryable failure.
	h.ok(submitCmd(spec("ok"), spec("bad")))
	r := h.ok(leaseCmd("w", 2))
	out := bytes.Repeat([]byte("x"), 70<<10)
	out[len(out)-1] = 'E'
	c := completeCmd(r.GetLeases()[0].GetJob().GetId(), r.GetLeases()[0].GetToken(), true, false)
	c.GetComplete().Result.Output = out
	j := h.ok(c).GetJob()
	if lr := j.GetLastResult(); lr.GetLeaseToken() != r.GetLeases()[0].GetToken() || lr.GetAttempt() != 1 {
		t.Fatalf("last_result token/attempt %v", lr)
	}
	if j.GetState() != succeeded || len(j.GetLastResult().GetOutput()) != 64<<10 || j.GetLastResult().GetOutput()[64<<10-1] != 'E' || j.GetLastResult().GetWorkerId() != "w" {
		t.Fatalf("success job state=%v output=%d", j.GetState(), len(j.GetLastResult().GetOutput()))
	}
	j = h.ok(completeCmd(r.GetLeases()[1].GetJob().GetId(), r.GetLeases()[1].GetToken(), false, false)).GetJob()
	if j.GetState() != failed || j.GetAttempts() != 1 {
		t.Fatalf("non-retryable %v", j)
	}
	wantCode(t, h.apply(completeCmd(j.GetId(), 0, true, false)), internalpb.Code_CODE_FAILED_PRECONDITION, "is FAILED")
}

func TestCancel(t *testing.T) {
	h := newHarness(t)
	h.ok(submitCmd(spec("a"), spec("b"), &hodeiv1.JobSpec{Command: []string{"c"}, DelayMs: 500}))
	r := h.ok(leaseCmd("w", 1))
	l := r.GetLeases()[0]
	j := h.ok(cancelCmd("0-1", "user")).GetJob()
	if j.GetState() != cancelled || j.GetCancelReason() != "user" || j.GetLeaseToken() != 0 || j.GetFinishedAtMs() != h.now {
		t.Fatalf("cancelled %v", j)
	}
	wantCode(t, h.apply(completeCmd("0-1", l.GetToken(), true, false)), internalpb.Code_CODE_FAILED_PRECONDITION, "job 0-1 is CANCELLED")
	h.ok(cancelCmd("0-2", ""))
	h.ok(cancelCmd("0-3", ""))
	st := h.f.Stats()
	if st.Ready != 0 || st.Delayed != 0 || st.Running != 0 || st.Cancelled != 3 || h.f.ReadyCount() != 0 {
		t.Fatalf("stats %+v", st)
	}
	if _, ok := h.f.NextLeaseExpiry(); ok {
		t.Fatal("cancelled lease still on the timeline")
	}
	before := h.digest()
	wantCode(t, h.apply(cancelCmd("0-2", "")), internalpb.Code_CODE_FAILED_PRECONDITION, "job 0-2 is already CANCELLED")
	wantCode(t, h.apply(cancelCmd("0-77", "")), internalpb.Code_CODE_NOT_FOUND, "0-77")
	wantCode(t, h.apply(cancelCmd("7-1", "")), internalpb.Code_CODE_NOT_FOUND, "7-1")
	// Indexes stay exact: nothing left to lease.
	if r := h.ok(leaseCmd("w", 10)); len(r.GetLeases()) != 0 {
		t.Fatal("leased a cancelled job")
	}
	if h.digest() == before {
		// The lease command above is a no-op on jobs but still a command;
		// the digest covers jobs only, so it must be equal.
	} else {
		t.Fatal("refused commands changed the state")
	}
}

func TestExpireLeases(t *testing.T) {
	h := newHarness(t)
	h.ok(submitCmd(&hodeiv1.JobSpec{Command: []string{"a"}, MaxAttempts: 1}, spec("b"), spec("c")))
	r := h.ok(&internalpb.Command{Kind: &internalpb.Command_Lease{Lease: &internalpb.LeaseJobs{WorkerId: "w", Capacity: 3, TtlMs: 100}}})
	refs := make([]*hodeiv1.LeaseRef, 3)
	for i, l := range r.GetLeases() {
		refs[i] = &hodeiv1.LeaseRef{JobId: l.GetJob().GetId(), Token: l.GetToken()}
	}
	// Job c gets extended, so it is not due.
	h.now += 50
	h.ok(extendCmd("w", 1000, refs[2]))
	if got := h.f.ExpiredLeases(h.now+50, 10); len(got) != 2 || got[0].GetJobId() != "0-1" || got[1].GetJobId() != "0-2" {
		t.Fatalf("ExpiredLeases %v", got)
	}
	if got := h.f.ExpiredLeases(h.now+50, 1); len(got) != 1 {
		t.Fatal("max ignored")
	}
	// Too early: nothing expires.
	if r := h.ok(expireCmd(refs...)); r.GetCount() != 0 {
		t.Fatal("expired early")
	}
	h.now += 50
	stale := &hodeiv1.LeaseRef{JobId: refs[1].GetJobId(), Token: refs[1].GetToken() + 1}
	r = h.ok(expireCmd(append(refs, stale, &hodeiv1.LeaseRef{JobId: "0-50"})...))
	if r.GetCount() != 2 {
		t.Fatalf("count %d", r.GetCount())
	}
	a, b := h.job("0-1"), h.job("0-2")
	if a.GetState() != failed || a.GetLastResult().GetError() != "lease expired" || !a.GetLastResult().GetLeaseExpired() {
		t.Fatalf("a %v", a)
	}
	if b.GetState() != pending || b.GetReadyAtMs() != h.now+1000 || b.GetLastResult().GetWorkerId() != "w" {
		t.Fatalf("b %v", b)
	}
	if h.job("0-3").GetState() != running {
		t.Fatal("extended lease expired")
	}
	// Expiring again is a no-op.
	if r := h.ok(expireCmd(refs...)); r.GetCount() != 0 {
		t.Fatal("double expiry")
	}
}

func TestDelayedAndPromote(t *testing.T) {
	h := newHarness(t)
	h.ok(submitCmd(
		&hodeiv1.JobSpec{Command: []string{"a"}, DelayMs: 300},
		&hodeiv1.JobSpec{Command: []string{"b"}, DelayMs: 100},
		&hodeiv1.JobSpec{Command: []string{"c"}, DelayMs: 100},
	))
	if h.f.ReadyCount() != 0 || h.f.HasReadyFor(nil, nil) {
		t.Fatal("delayed job is ready")
	}
	if r := h.ok(leaseCmd("w", 5)); len(r.GetLeases()) != 0 {
		t.Fatal("leased a delayed job")
	}
	if at, _ := h.f.NextDelayedAt(); at != h.now+100 {
		t.Fatalf("NextDelayedAt %d", at)
	}
	h.now += 100
	if r := h.ok(promoteCmd()); r.GetCount() != 2 {
		t.Fatalf("promoted %d", r.GetCount())
	}
	if ids := leaseIDs(h.ok(leaseCmd("w", 5))); ids != "0-2,0-3" {
		t.Fatalf("leased %s", ids)
	}
	h.now += 1000
	h.ok(promoteCmd())
	if ids := leaseIDs(h.ok(leaseCmd("w", 5))); ids != "0-1" {
		t.Fatalf("leased %s", ids)
	}
}

func TestGC(t *testing.T) {
	h := newHarness(t)
	h.ok(submitCmd(&hodeiv1.JobSpec{Command: []string{"a"}, IdempotencyKey: "k"}, spec("b"), spec("c"), spec("d")))
	t0 := h.now
	h.ok(cancelCmd("0-2", ""))
	h.now += 10
	h.ok(cancelCmd("0-1", ""))
	h.now += 10
	h.ok(cancelCmd("0-3", ""))
	if at, _ := h.f.OldestFinishedAt(); at != t0 {
		t.Fatal("OldestFinishedAt")
	}
	wantCode(t, h.apply(gcCmd(h.now, 0)), internalpb.Code_CODE_INVALID_ARGUMENT, "max")
	var events []Event
	h.f.opts.OnApply = func(_ uint64, ev []Event) { events = append(events, ev...) }
	// Cutoff excludes 0-3 (finished at h.now); max 1 takes the oldest (0-2).
	if r := h.ok(gcCmd(h.now, 1)); r.GetCount() != 1 {
		t.Fatal("count")
	}
	if _, ok := h.f.GetJob("0-2"); ok {
		t.Fatal("0-2 not removed")
	}
	if r := h.ok(gcCmd(h.now, 10)); r.GetCount() != 1 {
		t.Fatal("count 2")
	}
	if len(events) != 2 || events[0].JobID != "0-2" || events[0].To != hodeiv1.JobState_JOB_STATE_UNSPECIFIED || events[0].From != cancelled {
		t.Fatalf("events %v", events)
	}
	// The idempotency key is free again.
	r := h.ok(submitCmd(&hodeiv1.JobSpec{Command: []string{"a"}, IdempotencyKey: "k"}))
	if r.GetSubmitted()[0].GetDuplicate() || r.GetSubmitted()[0].GetJob().GetId() != "0-5" {
		t.Fatalf("resubmit %v", r)
	}
	st := h.f.Stats()
	if st.Jobs != 3 || st.Cancelled != 1 || st.Ready != 2 {
		t.Fatalf("stats %+v", st)
	}
	if jobs, _ := h.f.ListJobs("", cancelled, 0, 10); len(jobs) != 1 || jobs[0].GetId() != "0-3" {
		t.Fatalf("list %v", jobs)
	}
}

func TestRequestIDs(t *testing.T) {
	h := newHarness(t)
	r1 := h.ok(withRID("r1", submitCmd(spec("a"))))
	d := h.digest()
	r2 := h.ok(withRID("r1", submitCmd(spec("a"))))
	if r2.GetSubmitted()[0].GetJob().GetId() != r1.GetSubmitted()[0].GetJob().GetId() || h.f.Stats().Jobs != 1 || h.digest() != d {
		t.Fatal("retry re-applied")
	}
	// Errors are remembered too.
	e1 := h.apply(withRID("r2", cancelCmd("0-9", "")))
	h.ok(submitCmd(spec("b"), spec("c"), spec("d"), spec("e"), spec("f"), spec("g"), spec("h"), spec("i"))) // 0-2..0-9
	e2 := h.apply(withRID("r2", cancelCmd("0-9", "")))
	if e1.GetCode() != internalpb.Code_CODE_NOT_FOUND || e2.GetCode() != internalpb.Code_CODE_NOT_FOUND {
		t.Fatal("error result not replayed")
	}
	// Retention: after the window the id is forgotten.
	h.now += DefaultConfig().RequestRetentionMs + 1
	r3 := h.ok(withRID("r1", submitCmd(spec("a"))))
	if r3.GetSubmitted()[0].GetJob().GetId() == r1.GetSubmitted()[0].GetJob().GetId() {
		t.Fatal("expired request id still remembered")
	}

	// MaxRequests: oldest evicted first.
	cfg := DefaultConfig()
	cfg.MaxRequests = 2
	f, _ := New(cfg, Options{})
	e := func(idx uint64, rid string) *internalpb.CommandResult {
		return f.ApplyEntry(idx, &internalpb.Entry{Version: 1, NowMs: 5, Commands: []*internalpb.Command{withRID(rid, submitCmd(spec("x")))}})[0]
	}
	e(1, "a")
	e(2, "b")
	e(3, "c") // evicts a
	if got := e(4, "b").GetSubmitted()[0].GetJob().GetId(); got != "0-2" {
		t.Fatalf("b replay = %s", got)
	}
	if got := e(5, "a").GetSubmitted()[0].GetJob().GetId(); got != "0-4" {
		t.Fatalf("a should be forgotten, got %s", got)
	}
}

func TestApplyRaftLog(t *testing.T) {
	var gotEvents []Event
	f, _ := New(DefaultConfig(), Options{OnApply: func(idx uint64, ev []Event) {
		gotEvents = append(gotEvents, ev...)
	}})
	e := &internalpb.Entry{Version: EntryVersion, NowMs: 10, Commands: []*internalpb.Command{submitCmd(spec("a")), leaseCmd("w", 1)}}
	res := f.Apply(&raft.Log{Index: 1, Type: raft.LogCommand, Data: encodeEntry(t, e)})
	rs, ok := res.([]*internalpb.CommandResult)
	if !ok || len(rs) != 2 || len(rs[1].GetLeases()) != 1 {
		t.Fatalf("Apply returned %T %v", res, res)
	}
	if len(gotEvents) != 2 || gotEvents[0].From != hodeiv1.JobState_JOB_STATE_UNSPECIFIED || gotEvents[0].To != pending ||
		gotEvents[1].From != pending || gotEvents[1].To != running || gotEvents[1].Index != 1 || gotEvents[1].Tenant != "default" {
		t.Fatalf("events %+v", gotEvents)
	}
	if f.Apply(&raft.Log{Index: 2, Type: raft.LogNoop}) != nil || f.AppliedIndex() != 2 {
		t.Fatal("noop")
	}
	mustPanic(t, "fsm: malformed log entry at index 3", func() {
		f.Apply(&raft.Log{Index: 3, Type: raft.LogCommand, Data: []byte{0xff, 0xff, 0xff}})
	})
	newer := encodeEntry(t, &internalpb.Entry{Version: MaxEntryVersion + 1, NowMs: 10})
	mustPanic(t, fmt.Sprintf("has version %d; this binary understands versions up to %d", MaxEntryVersion+1, MaxEntryVersion), func() {
		f.Apply(&raft.Log{Index: 3, Type: raft.LogCommand, Data: newer})
	})
	mustPanic(t, "has version 0", func() {
		f.ApplyEntry(3, &internalpb.Entry{NowMs: 10})
	})
	mustPanic(t, "is not after applied index", func() {
		f.ApplyEntry(2, &internalpb.Entry{Version: 1})
	})
}

func TestTimeIsMonotone(t *testing.T) {
	h := newHarness(t)
	h.ok(submitCmd(spec("a")))
	h.now -= 5000 // a new leader with a slower clock
	j := h.ok(submitCmd(spec("b"))).GetSubmitted()[0].GetJob()
	if j.GetCreatedAtMs() != 1_000_000 || h.f.Stats().LastNowMs != 1_000_000 {
		t.Fatalf("time went backwards: %d", j.GetCreatedAtMs())
	}
}

func TestListJobs(t *testing.T) {
	h := newHarness(t)
	for i := 0; i < 10; i++ {
		tn := "a"
		if i%2 == 1 {
			tn = "b"
		}
		h.ok(submitCmd(&hodeiv1.JobSpec{Tenant: tn, Command: []string{"x"}}))
	}
	h.ok(leaseCmd("w", 3)) // round robin: a(0-1), b(0-2), a(0-3)
	h.ok(cancelCmd("0-4", ""))

	collect := func(tenant string, st hodeiv1.JobState, limit int) string {
		var ids []string
		var after uint64
		for pages := 0; pages < 20; pages++ {
			jobs, next := h.f.ListJobs(tenant, st, after, limit)
			for _, j := range jobs {
				ids = append(ids, j.GetId())
			}
			if next == 0 {
				break
			}
			after = next
		}
		return strings.Join(ids, ",")
	}
	cases := []struct {
		tenant string
		st     hodeiv1.JobState
		want   string
	}{
		{"", hodeiv1.JobState_JOB_STATE_UNSPECIFIED, "0-1,0-2,0-3,0-4,0-5,0-6,0-7,0-8,0-9,0-10"},
		{"a", hodeiv1.JobState_JOB_STATE_UNSPECIFIED, "0-1,0-3,0-5,0-7,0-9"},
		{"b", pending, "0-6,0-8,0-10"},
		{"", running, "0-1,0-2,0-3"},
		{"", cancelled, "0-4"},
		{"nobody", hodeiv1.JobState_JOB_STATE_UNSPECIFIED, ""},
		{"a", succeeded, ""},
	}
	for _, tc := range cases {
		for _, limit := range []int{1, 2, 3, 100} {
			if got := collect(tc.tenant, tc.st, limit); got != tc.want {
				t.Errorf("ListJobs(%q,%v,limit %d) = %s, want %s", tc.tenant, tc.st, limit, got, tc.want)
			}
		}
	}
	if _, next := h.f.ListJobs("", hodeiv1.JobState_JOB_STATE_UNSPECIFIED, 0, 10); next != 0 {
		t.Fatal("next should be 0 on the last page")
	}
}

func TestResultError(t *testing.T) {
	if ResultError(&internalpb.CommandResult{}) != nil || ResultError(nil) != nil {
		t.Fatal("OK is not an error")
	}
	err := ResultError(&internalpb.CommandResult{Code: internalpb.Code_CODE_NOT_FOUND, Message: "job 0-1 not found"})
	var ce *CodeError
	if !errors.As(err, &ce) || ce.Code() != internalpb.Code_CODE_NOT_FOUND || !strings.Contains(err.Error(), "job 0-1 not found") {
		t.Fatalf("err %v", err)
	}
}

func TestBackoff(t *testing.T) {
	cases := []struct {
		base, max int64
		attempts  int32
		want      int64
	}{
		{1000, 60000, 0, 1000}, {1000, 60000, 1, 1000}, {1000, 60000, 2, 2000}, {1000, 60000, 6, 32000},
		{1000, 60000, 7, 60000}, {1000, 60000, 1 << 30, 60000}, {1 << 62, 1 << 62, 5, 1 << 62}, {3, 5, 2, 5},
	}
	for _, c := range cases {
		if got := backoffMs(c.base, c.max, c.attempts); got != c.want {
			t.Errorf("backoffMs(%d,%d,%d) = %d, want %d", c.base, c.max, c.attempts, got, c.want)
		}
	}
}

// lease_expired is the server's record of an expiry; a worker's completion
// cannot claim it.
func TestCompletionCannotClaimLeaseExpired(t *testing.T) {
	h := newHarness(t)
	h.ok(submitCmd(spec("a")))
	l := h.ok(leaseCmd("w1", 1)).GetLeases()[0]
	c := completeCmd(l.GetJob().GetId(), l.GetToken(), true, false)
	c.GetComplete().Result.LeaseExpired = true
	h.ok(c)
	if j := h.job(l.GetJob().GetId()); j.GetLastResult().GetLeaseExpired() {
		t.Fatalf("a worker's completion recorded as a lease expiry: %v", j.GetLastResult())
	}
}
