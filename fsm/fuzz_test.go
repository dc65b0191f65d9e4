package fsm

import (
	"bytes"
	"fmt"
	"strings"
	"testing"

	"github.com/hashicorp/raft"
	"google.golang.org/protobuf/proto"

	"github.com/hodei-io/hodei/proto/hodeiv1"
	"github.com/hodei-io/hodei/proto/internalpb"
)

// fuzzBase is a small state the fuzzed entry is applied on top of, so
// that job ids and tokens in the input can hit real jobs.
func fuzzBase(t testing.TB) *FSM {
	f, err := New(DefaultConfig(), Options{})
	if err != nil {
		t.Fatal(err)
	}
	f.ApplyEntry(1, &internalpb.Entry{Version: EntryVersion, NowMs: 1000, Commands: []*internalpb.Command{
		submitCmd(spec("a"), &hodeiv1.JobSpec{Tenant: "t", Command: []string{"b"}, DelayMs: 10, IdempotencyKey: "k"}, spec("c")),
		leaseCmd("w", 1),
		withRID("r", cancelCmd("0-3", "")),
	}})
	return f
}

// applyRecovering applies data as log index 2 and reports the panic
// message, if any. Panics must be the FSM's own loud "fsm: ..." stops.
func applyRecovering(t *testing.T, f *FSM, data []byte) (res []*internalpb.CommandResult, panicked bool) {
	defer func() {
		if r := recover(); r != nil {
			if msg := fmt.Sprint(r); !strings.HasPrefix(msg, "fsm: ") {
				t.Fatalf("unexpected panic: %v", r)
			}
			panicked = true
		}
	}()
	out := f.Apply(&raft.Log{Index: 2, Type: raft.LogCommand, Data: data})
	return out.([]*internalpb.CommandResult), false
}

func FuzzApply(f *testing.F) {
	for _, e := range fuzzSeedEntries() {
		b, _ := proto.Marshal(e)
		f.Add(b)
	}
	f.Add([]byte{})
	f.Add([]byte{0xff, 0x01})
	f.Fuzz(func(t *testing.T, data []byte) {
		// NormalizeSpec never panics on any decodable spec.
		var sp hodeiv1.JobSpec
		if proto.Unmarshal(data, &sp) == nil {
			if n, err := NormalizeSpec(&sp, DefaultConfig()); err == nil {
				if _, err := NormalizeSpec(n, DefaultConfig()); err != nil {
					t.Fatalf("normalized spec does not validate: %v", err)
				}
			}
		}
		a, b := fuzzBase(t), fuzzBase(t)
		ra, pa := applyRecovering(t, a, data)
		rb, pb := applyRecovering(t, b, bytes.Clone(data))
		if pa != pb {
			t.Fatal("panic is not deterministic")
		}
		if pa {
			return
		}
		if len(ra) != len(rb) {
			t.Fatal("result count differs")
		}
		for i := range ra {
			if !proto.Equal(ra[i], rb[i]) {
				t.Fatalf("result %d differs", i)
			}
		}
		_, da := a.Digest()
		_, db := b.Digest()
		if da != db {
			t.Fatal("replicas diverged")
		}
		checkInvariants(t, a)
	})
}

func fuzzSeedEntries() []*internalpb.Entry {
	e := func(cmds ...*internalpb.Command) *internalpb.Entry {
		return &internalpb.Entry{Version: EntryVersion, NowMs: 5000, Commands: cmds}
	}
	return []*internalpb.Entry{
		e(submitCmd(&hodeiv1.JobSpec{Command: []string{"sh"}, Env: []*hodeiv1.KeyValue{kv("A", "1")}, Labels: []*hodeiv1.KeyValue{kv("gpu", "1")}})),
		e(leaseCmd("w2", 3), completeCmd("0-1", 1, true, false)),
		e(completeCmd("0-1", 1, false, true), promoteCmd(), leaseCmd("w", 2)),
		e(extendCmd("w", 100, &hodeiv1.LeaseRef{JobId: "0-1", Token: 1}), expireCmd(&hodeiv1.LeaseRef{JobId: "0-1", Token: 1})),
		e(cancelCmd("0-2", "why"), gcCmd(10000, 5), withRID("r", cancelCmd("0-3", ""))),
		{Version: EntryVersionTenantWeights, NowMs: 5000, Commands: []*internalpb.Command{
			setWeightCmd("t", 3), setWeightCmd("a", 1), setWeightCmd("", 2), leaseCmd("w", 4)}},
		// cron (issue 11)
		{Version: EntryVersionSemantics, NowMs: 5000, Commands: []*internalpb.Command{
			schedCmd(&hodeiv1.Schedule{Id: "s", Spec: "@every 1s", Template: spec("x"), Overlap: hodeiv1.OverlapPolicy_OVERLAP_POLICY_BUFFER_ONE, CatchUpWindowMs: 2000}),
			schedCmd(&hodeiv1.Schedule{Id: "b", Tenant: "t", Spec: "*/2 1-3 * * mon", TimeZone: "Europe/Berlin", Template: spec("y"), JitterMs: 500}),
			fireCmd("s", 5000), backfillCmd("s", 1000, 4000), pauseCmd("b", true, "n"),
			{Kind: &internalpb.Command_TriggerSchedule{TriggerSchedule: &internalpb.TriggerSchedule{Id: "s"}}},
			{Kind: &internalpb.Command_DeleteSchedule{DeleteSchedule: &internalpb.DeleteSchedule{Tenant: "t", Id: "b"}}}}},
		// dead letters (issue 11): deaths, history, retry and requeue, dead GC
		{Version: EntryVersionSemantics, NowMs: 6000, Commands: []*internalpb.Command{
			leaseCmd("w", 2), completeCmd("0-1", 2, false, false), retryCmd("0-1"), requeueCmd("", "", 0, 0, 5),
			withRID("rq", requeueCmd("default", "shell", 1, 7000, 1)), retryCmd("0-9"), gcCmd(0, 3)}},
		// pipelines (issue 13): submit, run, fail, cancel, retry
		{Version: EntryVersionPipelines, NowMs: 7000, Commands: []*internalpb.Command{
			withRID("pp", submitPipelineCmd(&hodeiv1.PipelineSpec{Steps: []*hodeiv1.PipelineStepSpec{
				pstep("a", 0), pstep("b", ruleOneFailed, "a"), {Id: "c", DependsOn: []string{"a"}, ForEach: []string{"x", "y"}, Job: spec("c", "{{item}}")}}})),
			leaseCmd("w", 5), completeCmd("0-4", 3, false, false), retryPipelineCmd("p0-1", "a"), cancelPipelineCmd("p0-1", "stop"),
			retryPipelineCmd("p0-1", ""), gcCmd(100000, 5)}},
		{Version: MaxEntryVersion + 1},
	}
}
