package fsm

import (
	"strings"
	"testing"

	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/reflect/protoreflect"

	"github.com/hodei-io/hodei/proto/hodeiv1"
	"github.com/hodei-io/hodei/proto/internalpb"
)

// applyNew applies cmds in an entry of the version the batcher would give it.
func (h *harness) applyNew(cmds ...*internalpb.Command) []*internalpb.CommandResult {
	h.index++
	e := &internalpb.Entry{Version: EntryVersionFor(cmds), NowMs: h.now, Commands: cmds}
	h.log = append(h.log, e)
	return h.f.ApplyEntry(h.index, e)
}

func kindSpec(kind string, payload string) *hodeiv1.JobSpec {
	return &hodeiv1.JobSpec{Kind: kind, Payload: []byte(payload)}
}

func leaseBatchCmd(ds ...*internalpb.LeaseJobs) *internalpb.Command {
	return &internalpb.Command{Kind: &internalpb.Command_LeaseBatch{LeaseBatch: &internalpb.LeaseBatch{Demands: ds}}}
}

func completeJobsCmd(items ...*hodeiv1.Completion) *internalpb.Command {
	return &internalpb.Command{Kind: &internalpb.Command_CompleteJobs{CompleteJobs: &internalpb.CompleteJobs{Items: items}}}
}

func TestKindsAndPayloadValidation(t *testing.T) {
	cfg := DefaultConfig()
	for _, tc := range []struct {
		spec *hodeiv1.JobSpec
		want string // "" = valid
	}{
		{kindSpec("email.send", "x"), ""},
		{&hodeiv1.JobSpec{Kind: "shell", Command: []string{"true"}}, ""},
		{&hodeiv1.JobSpec{Kind: "shell"}, "command is empty"},
		{&hodeiv1.JobSpec{Kind: "email", Command: []string{"true"}}, "only for command jobs"},
		{kindSpec("bad kind", ""), "must match"},
		{kindSpec(strings.Repeat("k", MaxNameBytes+1), ""), "1..128 bytes"},
		{kindSpec("big", strings.Repeat("p", cfg.MaxPayloadBytes+1)), "limit is"},
	} {
		n, err := NormalizeSpec(tc.spec, cfg)
		if tc.want == "" {
			if err != nil {
				t.Errorf("%v: %v", tc.spec, err)
			} else if n.GetKind() == ShellKind {
				t.Errorf("kind shell not normalized to \"\"")
			}
			continue
		}
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%v: err %v, want %q", tc.spec, err, tc.want)
		}
	}
}

func TestDispatchCommandsNeedVersion3(t *testing.T) {
	h := newHarness(t)
	h.ok(submitCmd(spec("true")))
	before := h.digest()
	// An entry of version 1 (what an older binary writes) refuses them all.
	for _, c := range []*internalpb.Command{
		submitCmd(kindSpec("k", "p")),
		leaseCmd("w", 1),
		leaseBatchCmd(&internalpb.LeaseJobs{WorkerId: "w", Capacity: 1}),
		completeJobsCmd(),
	} {
		if c.GetLease() != nil {
			c.GetLease().Kinds = []string{"k"}
		}
		if EntryVersionFor([]*internalpb.Command{c}) != EntryVersionDispatch {
			t.Fatalf("EntryVersionFor(%v) is not %d", c, EntryVersionDispatch)
		}
		wantCode(t, h.apply(c), internalpb.Code_CODE_INVALID_ARGUMENT, "version 3")
		if h.digest() != before {
			t.Fatalf("refused %v changed the state", c)
		}
	}
	if h.digest() != before {
		t.Fatal("refused commands changed the state")
	}
	if v := EntryVersionFor([]*internalpb.Command{submitCmd(spec("true")), leaseCmd("w", 1)}); v != EntryVersion {
		t.Fatalf("plain entry gets version %d", v)
	}
}

func TestLeaseBatchServesDemandsByKindAndLabel(t *testing.T) {
	h := newHarness(t)
	gpu := kindSpec("train", "1")
	gpu.Labels = []*hodeiv1.KeyValue{kv("gpu", "a100")}
	r := h.applyNew(submitCmd(kindSpec("email", "a"), kindSpec("email", "b"), spec("true"), gpu, kindSpec("sms", "c")))[0]
	if ResultError(r) != nil || len(r.GetSubmitted()) != 5 {
		t.Fatalf("submit: %v", r)
	}
	if !h.f.HasReadyFor(nil, []string{"sms"}) || h.f.HasReadyFor(nil, []string{"train"}) || !h.f.HasReadyFor([]*hodeiv1.KeyValue{kv("gpu", "a100")}, []string{"train"}) {
		t.Fatal("HasReadyFor by kind and label")
	}
	res := h.applyNew(leaseBatchCmd(
		&internalpb.LeaseJobs{WorkerId: "mail", Capacity: 10, Kinds: []string{"email"}},
		&internalpb.LeaseJobs{WorkerId: "shell", Capacity: 10, Kinds: []string{ShellKind}},
		&internalpb.LeaseJobs{WorkerId: "nogpu", Capacity: 10, Kinds: []string{"train"}},
		&internalpb.LeaseJobs{WorkerId: "any", Capacity: 10, Labels: []*hodeiv1.KeyValue{kv("gpu", "a100")}},
	))[0]
	if err := ResultError(res); err != nil {
		t.Fatal(err)
	}
	got := map[string][]string{}
	tokens := map[uint64]bool{}
	for _, g := range res.GetGrants() {
		for _, l := range g.GetLeases() {
			sp := l.GetJob().GetSpec()
			got[g.GetWorkerId()] = append(got[g.GetWorkerId()], string(sp.GetPayload())+sp.GetKind()+strings.Join(sp.GetCommand(), ""))
			if tokens[l.GetToken()] {
				t.Fatalf("token %d granted twice", l.GetToken())
			}
			tokens[l.GetToken()] = true
			if j := h.job(l.GetJob().GetId()); j.GetLeaseWorker() != g.GetWorkerId() || j.GetLeaseToken() != l.GetToken() {
				t.Fatalf("job %s leased to %s/%d, grant says %s/%d", j.GetId(), j.GetLeaseWorker(), j.GetLeaseToken(), g.GetWorkerId(), l.GetToken())
			}
		}
	}
	want := map[string]string{"mail": "[aemail bemail]", "shell": "[true]", "nogpu": "[]", "any": "[1train csms]"}
	if len(res.GetGrants()) != 4 {
		t.Fatalf("grants %v", res.GetGrants())
	}
	for w, exp := range want {
		if s := strings.Join(got[w], " "); "["+s+"]" != exp {
			t.Errorf("worker %s got %v, want %s", w, got[w], exp)
		}
	}
}

func TestLeaseBatchRejectsBadDemandAndChangesNothing(t *testing.T) {
	h := newHarness(t)
	h.applyNew(submitCmd(kindSpec("k", "1")))
	before := h.digest()
	for _, tc := range []struct {
		c    *internalpb.Command
		want string
	}{
		{leaseBatchCmd(), "0 demands"},
		{leaseBatchCmd(&internalpb.LeaseJobs{WorkerId: "a", Capacity: 1}, &internalpb.LeaseJobs{WorkerId: "", Capacity: 1}), "demand 1: lease: worker_id is empty"},
		{leaseBatchCmd(&internalpb.LeaseJobs{WorkerId: "a", Capacity: 0}), "capacity 0"},
		{leaseBatchCmd(&internalpb.LeaseJobs{WorkerId: "a", Capacity: 1, Kinds: []string{"no good"}}), "must match"},
	} {
		wantCode(t, h.applyNew(tc.c)[0], internalpb.Code_CODE_INVALID_ARGUMENT, tc.want)
	}
	if h.digest() != before {
		t.Fatal("a refused lease batch changed the state")
	}
}

func TestCompleteJobsFencesEachItem(t *testing.T) {
	h := newHarness(t)
	h.applyNew(submitCmd(kindSpec("k", "1"), kindSpec("k", "2"), kindSpec("k", "3")))
	g := h.applyNew(leaseBatchCmd(&internalpb.LeaseJobs{WorkerId: "w", Capacity: 3}))[0].GetGrants()[0].GetLeases()
	if len(g) != 3 {
		t.Fatalf("leases %v", g)
	}
	ok := func(i int, success bool) *hodeiv1.Completion {
		return &hodeiv1.Completion{JobId: g[i].GetJob().GetId(), Token: g[i].GetToken(), Success: success, Retryable: true}
	}
	stale := ok(1, true)
	stale.Token++ // not the job's token
	res := h.applyNew(completeJobsCmd(ok(0, true), stale, ok(2, false),
		&hodeiv1.Completion{JobId: "0-99", Token: 5}, &hodeiv1.Completion{JobId: "0-1"}))[0]
	c := res.GetCompleted()
	if len(c) != 5 {
		t.Fatalf("results %v", c)
	}
	if !c[0].GetOk() || c[0].GetState() != hodeiv1.JobState_JOB_STATE_SUCCEEDED {
		t.Errorf("item 0: %v", c[0])
	}
	if c[1].GetOk() || c[1].GetCode() != "FAILED_PRECONDITION" || !strings.Contains(c[1].GetReason(), "stale lease token") {
		t.Errorf("item 1 (stale): %v", c[1])
	}
	if !c[2].GetOk() || c[2].GetState() != hodeiv1.JobState_JOB_STATE_PENDING {
		t.Errorf("item 2 (failed, retried): %v", c[2])
	}
	if c[3].GetOk() || c[3].GetCode() != "NOT_FOUND" || c[4].GetOk() || c[4].GetCode() != "INVALID_ARGUMENT" {
		t.Errorf("items 3, 4: %v %v", c[3], c[4])
	}
	if h.job(g[1].GetJob().GetId()).GetState() != hodeiv1.JobState_JOB_STATE_RUNNING {
		t.Error("the stale completion changed its job")
	}
	// A repeat of accepted completions (a retry after a lost reply) is
	// answered ok and changes nothing.
	before := h.digest()
	again := h.applyNew(completeJobsCmd(ok(0, true), ok(2, false)))[0].GetCompleted()
	if !again[0].GetOk() || again[0].GetState() != hodeiv1.JobState_JOB_STATE_SUCCEEDED || !again[1].GetOk() {
		t.Errorf("repeat: %v", again)
	}
	if h.digest() != before {
		t.Error("a repeated completion changed the state")
	}
}

func TestCloneJobCopiesEveryField(t *testing.T) {
	j := &hodeiv1.Job{Id: "0-1", Spec: spec("true"), State: hodeiv1.JobState_JOB_STATE_RUNNING, Attempts: 2, Shard: 3, Seq: 4,
		CreatedAtMs: 5, UpdatedAtMs: 6, ReadyAtMs: 7, LeaseToken: 8, LeaseWorker: "w", LeaseExpiresAtMs: 9,
		LastResult: &hodeiv1.JobResult{ExitCode: 1}, FinishedAtMs: 10, CancelReason: "r",
		ScheduleId: "s", ScheduleSlotMs: 11, Unmatched: "u",
		History: []*hodeiv1.AttemptSummary{{Attempt: 1}}, DeadAtMs: 11, DeadReason: "d", Retries: 12,
		PipelineId: "p0-1", PipelineStep: "a"}
	fields := j.ProtoReflect().Descriptor().Fields()
	set := 0
	j.ProtoReflect().Range(func(protoreflect.FieldDescriptor, protoreflect.Value) bool { set++; return true })
	if set != fields.Len() {
		t.Fatalf("the test sets %d of Job's %d fields: set the new one", set, fields.Len())
	}
	if c := cloneJob(j); !proto.Equal(c, j) || c == j {
		t.Fatalf("clone %v differs from %v", c, j)
	}
}
