package fsm

import (
	"bytes"
	"fmt"
	"testing"

	"google.golang.org/protobuf/proto"
	"pgregory.net/rapid"

	"github.com/hodei-io/hodei/proto/hodeiv1"
	"github.com/hodei-io/hodei/proto/internalpb"
)

// checkInvariants walks the whole state and checks every index against the
// jobs: each job is in exactly the structures its state implies, counts are
// exact, the delayed/ready split agrees with isDelayed (what Restore uses).
func checkInvariants(t testing.TB, f *FSM) {
	t.Helper()
	f.mu.RLock()
	defer f.mu.RUnlock()
	s := f.st
	fail := func(format string, args ...any) {
		t.Helper()
		t.Fatalf("invariant: "+format, args...)
	}
	checkScheduleInvariants(t, s) // cron (issue 11)
	checkPipelineInvariants(t, s) // pipelines (issue 13)
	var perState [numStates]int
	perTenant := map[string]int{}
	ready := 0
	for seq, j := range s.jobs {
		if j.GetSeq() != seq || seq >= s.nextSeq {
			fail("seq %d", seq)
		}
		st := j.GetState()
		perState[st]++
		tn := j.GetSpec().GetTenant()
		perTenant[tn]++
		t := s.tenants[tn]
		if t == nil || !t.byState[st].Has(seq) || !s.byState[st].Has(seq) {
			fail("job %s missing from state index", j.GetId())
		}
		if j.GetAttempts() > j.GetSpec().GetMaxAttempts() || j.GetAttempts() < 0 {
			fail("job %s attempts %d", j.GetId(), j.GetAttempts())
		}
		inDelayed := s.delayed.Has(timeKey{j.GetReadyAtMs(), seq})
		inReady := t.ready.Has(readyKeyOf(j))
		inLeases := s.leases.Has(timeKey{j.GetLeaseExpiresAtMs(), seq})
		inFinished := s.finished.Has(timeKey{j.GetFinishedAtMs(), seq})
		switch {
		case st == pending:
			if inDelayed == inReady || inLeases || inFinished {
				fail("pending job %s: delayed=%v ready=%v leases=%v finished=%v", j.GetId(), inDelayed, inReady, inLeases, inFinished)
			}
			if inDelayed != isDelayed(j, s.lastPromoteMs) {
				fail("pending job %s: delayed=%v but isDelayed says %v", j.GetId(), inDelayed, !inDelayed)
			}
			if inReady {
				ready++
			}
			if j.GetLeaseToken() != 0 || j.GetLeaseWorker() != "" {
				fail("pending job %s keeps lease fields", j.GetId())
			}
		case st == running:
			if inDelayed || inReady || !inLeases || inFinished || j.GetLeaseToken() == 0 || j.GetLeaseToken() > s.nextToken {
				fail("running job %s misplaced", j.GetId())
			}
		case st == hodeiv1.JobState_JOB_STATE_DEAD:
			k := timeKey{j.GetDeadAtMs(), seq}
			if inDelayed || inReady || inLeases || inFinished || j.GetLeaseToken() != 0 || !s.dead.Has(k) || t.dead == nil || !t.dead.Has(k) {
				fail("dead job %s misplaced", j.GetId())
			}
		default:
			if inDelayed || inReady || inLeases || !inFinished || j.GetLeaseToken() != 0 {
				fail("terminal job %s misplaced", j.GetId())
			}
		}
		if len(j.GetHistory()) > MaxHistoryAttempts {
			fail("job %s keeps %d attempts of history", j.GetId(), len(j.GetHistory()))
		}
		if k := j.GetSpec().GetIdempotencyKey(); k != "" && s.idem[idemKey(tn, k)] != seq {
			fail("job %s idempotency key not indexed", j.GetId())
		}
	}
	for i := 1; i < numStates; i++ {
		if s.byState[i].Len() != perState[i] {
			fail("byState[%d] = %d, recount %d", i, s.byState[i].Len(), perState[i])
		}
	}
	if s.sched.ready != ready || s.delayed.Len()+ready != perState[pending] ||
		s.leases.Len() != perState[running] ||
		s.finished.Len() != perState[succeeded]+perState[failed]+perState[cancelled] ||
		s.dead.Len() != perState[hodeiv1.JobState_JOB_STATE_DEAD] {
		fail("counts: ready %d/%d delayed %d pending %d", s.sched.ready, ready, s.delayed.Len(), perState[pending])
	}
	if len(s.tenants) != len(perTenant) {
		fail("tenants %d, recount %d", len(s.tenants), len(perTenant))
	}
	active := 0
	for name, t := range s.tenants {
		if t.jobs != perTenant[name] {
			fail("tenant %s jobs %d recount %d", name, t.jobs, perTenant[name])
		}
		if (t.ready.Len() > 0) != s.sched.active.Has(name) {
			fail("tenant %s active set", name)
		}
		if t.ready.Len() > 0 {
			active++
		}
		if t.dead != nil && (t.dead.Len() == 0 || t.dead.Len() > s.cfg.MaxDeadPerTenant) {
			fail("tenant %s holds %d dead jobs (bound %d)", name, t.dead.Len(), s.cfg.MaxDeadPerTenant)
		}
	}
	if active != s.sched.active.Len() {
		fail("active set size")
	}
	for ik, seq := range s.idem {
		if _, ok := s.jobs[seq]; !ok {
			fail("idempotency key %q points at removed job", ik)
		}
	}
	for name, w := range s.sched.weights {
		if w < 2 || w > MaxTenantWeight || !validTenant(name) {
			fail("stored weight %q=%d", name, w)
		}
	}
	for name, t := range s.tenants {
		if t.deficit < 0 || t.deficit > s.sched.quantum(t) {
			fail("tenant %s deficit %d outside 0..%d", name, t.deficit, s.sched.quantum(t))
		}
	}
}

type propModel struct {
	attempts  map[string]int32
	lastToken map[string]uint64
	terminal  map[string]hodeiv1.JobState
}

func TestPropertyRandomCommands(t *testing.T) {
	rapid.Check(t, func(rt *rapid.T) {
		h := newHarness(t)
		twin, _ := New(DefaultConfig(), Options{}) // never restored
		m := propModel{attempts: map[string]int32{}, lastToken: map[string]uint64{}, terminal: map[string]hodeiv1.JobState{}}
		tenants := []string{"a", "b", "c"}
		steps := rapid.IntRange(1, 50).Draw(rt, "steps")
		for step := 0; step < steps; step++ {
			h.now += rapid.Int64Range(0, 1500).Draw(rt, "dt")
			randomID := func() string {
				return FormatJobID(0, rapid.Uint64Range(1, h.f.st.nextSeq).Draw(rt, "seq"))
			}
			var cmd *internalpb.Command
			var completeRef *hodeiv1.LeaseRef
			var tokenBefore uint64
			version := uint32(EntryVersion)
			switch op := rapid.IntRange(0, 10).Draw(rt, "op"); op {
			case 0, 1:
				n := rapid.IntRange(1, 3).Draw(rt, "n")
				var specs []*hodeiv1.JobSpec
				for i := 0; i < n; i++ {
					sp := &hodeiv1.JobSpec{
						Tenant:        rapid.SampledFrom(tenants).Draw(rt, "tenant"),
						Command:       []string{"x"},
						Priority:      rapid.Int32Range(0, 3).Draw(rt, "prio"),
						MaxAttempts:   rapid.Int32Range(0, 3).Draw(rt, "max"),
						DelayMs:       rapid.SampledFrom([]int64{0, 0, 100, 3000}).Draw(rt, "delay"),
						BackoffBaseMs: rapid.SampledFrom([]int64{0, 1, 50}).Draw(rt, "base"),
					}
					if rapid.Bool().Draw(rt, "labelled") {
						sp.Labels = []*hodeiv1.KeyValue{kv("gpu", "1")}
					}
					if rapid.IntRange(0, 3).Draw(rt, "keyed") == 0 {
						sp.IdempotencyKey = fmt.Sprint("k", rapid.IntRange(0, 3).Draw(rt, "key"))
					}
					if rapid.IntRange(0, 15).Draw(rt, "bad") == 0 {
						sp.Priority = 1000
					}
					specs = append(specs, sp)
				}
				cmd = submitCmd(specs...)
			case 2, 3:
				var labels []*hodeiv1.KeyValue
				if rapid.Bool().Draw(rt, "gpuWorker") {
					labels = []*hodeiv1.KeyValue{kv("gpu", "1")}
				}
				cmd = leaseCmd("w", rapid.Int32Range(1, 4).Draw(rt, "cap"), labels...)
			case 4:
				id := randomID()
				j, _ := h.f.GetJob(id)
				token := j.GetLeaseToken()
				switch rapid.IntRange(0, 2).Draw(rt, "tokenKind") {
				case 1:
					token = m.lastToken[id] - 1
				case 2:
					token = rapid.Uint64Range(0, h.f.st.nextToken+1).Draw(rt, "token")
				}
				completeRef = &hodeiv1.LeaseRef{JobId: id, Token: token}
				tokenBefore = j.GetLeaseToken()
				cmd = completeCmd(id, token, rapid.Bool().Draw(rt, "success"), rapid.Bool().Draw(rt, "retryable"))
			case 5:
				id := randomID()
				j, _ := h.f.GetJob(id)
				cmd = extendCmd("w", rapid.Int64Range(0, 5000).Draw(rt, "ttl"), &hodeiv1.LeaseRef{JobId: id, Token: j.GetLeaseToken()})
			case 6:
				cmd = cancelCmd(randomID(), "r")
			case 7:
				cmd = expireCmd(h.f.ExpiredLeases(h.now, 5)...)
			case 8:
				cmd = promoteCmd()
			case 9:
				cmd = gcCmd(h.now-rapid.Int64Range(0, 3000).Draw(rt, "age"), rapid.Uint32Range(1, 3).Draw(rt, "gcmax"))
			case 10:
				cmd = setWeightCmd(rapid.SampledFrom(append(tenants, "d", "")).Draw(rt, "wtenant"), rapid.Uint32Range(0, 4).Draw(rt, "weight"))
				if rapid.IntRange(0, 7).Draw(rt, "oldEntry") != 0 {
					version = EntryVersionTenantWeights
				}
			}
			if rapid.IntRange(0, 4).Draw(rt, "rid") == 0 {
				cmd.RequestId = fmt.Sprint("r", rapid.IntRange(0, 5).Draw(rt, "ridn"))
			}
			var jobBefore *hodeiv1.Job
			if completeRef != nil {
				jobBefore, _ = h.f.GetJob(completeRef.GetJobId())
			}
			e := &internalpb.Entry{Version: version, NowMs: h.now, Commands: []*internalpb.Command{cmd}}
			h.index++
			res := h.f.ApplyEntry(h.index, e)[0]
			twin.ApplyEntry(h.index, proto.Clone(e).(*internalpb.Entry))

			if completeRef != nil && completeRef.GetToken() != tokenBefore && cmd.GetRequestId() == "" {
				jobAfter, _ := h.f.GetJob(completeRef.GetJobId())
				if res.GetCode() == internalpb.Code_CODE_OK || !proto.Equal(jobBefore, jobAfter) {
					rt.Fatalf("completion with token %d (current %d) accepted", completeRef.GetToken(), tokenBefore)
				}
			}
			for _, l := range res.GetLeases() {
				id := l.GetJob().GetId()
				if cmd.GetRequestId() == "" && l.GetToken() <= m.lastToken[id] {
					rt.Fatalf("token of %s went %d -> %d", id, m.lastToken[id], l.GetToken())
				}
				if l.GetToken() > m.lastToken[id] {
					m.lastToken[id] = l.GetToken()
				}
			}
			// Per-job invariants over every job.
			jobs, _ := h.f.ListJobs("", hodeiv1.JobState_JOB_STATE_UNSPECIFIED, 0, MaxListLimit)
			for _, j := range jobs {
				id := j.GetId()
				if j.GetAttempts() < m.attempts[id] || j.GetAttempts() > j.GetSpec().GetMaxAttempts() {
					rt.Fatalf("job %s attempts %d (was %d, max %d)", id, j.GetAttempts(), m.attempts[id], j.GetSpec().GetMaxAttempts())
				}
				m.attempts[id] = j.GetAttempts()
				if st, ok := m.terminal[id]; ok && st != j.GetState() {
					rt.Fatalf("terminal job %s went %v -> %v", id, st, j.GetState())
				}
				if isTerminal(j.GetState()) {
					m.terminal[id] = j.GetState()
				}
			}
			checkInvariants(t, h.f)
			st := h.f.Stats()
			if st.Ready != h.f.ReadyCount() || st.Jobs != len(jobs) {
				rt.Fatalf("stats %+v vs %d jobs", st, len(jobs))
			}
			// Snapshot/restore at any point: swap in the restored copy.
			if rapid.IntRange(0, 5).Draw(rt, "restore") == 0 {
				data := snapshotBytes(t, h.f)
				h.f = restoreInto(t, data)
				if !bytes.Equal(snapshotBytes(t, h.f), data) {
					rt.Fatal("restore+snapshot changed the bytes")
				}
				checkInvariants(t, h.f)
			}
		}
		if !bytes.Equal(snapshotBytes(t, h.f), snapshotBytes(t, twin)) {
			rt.Fatal("restored replica diverged from the never-restored twin")
		}
	})
}

// TestPropertyWeightedShare: tenants of random weights, all backlogged,
// leased by workers of random capacities: after k full rounds every tenant
// got exactly k times its weight, whatever the capacities (deficit round
// robin's pick order does not depend on how the picks are cut into leases).
func TestPropertyWeightedShare(t *testing.T) {
	rapid.Check(t, func(rt *rapid.T) {
		h := newHarness(t)
		names := []string{"a", "b", "c", "d"}[:rapid.IntRange(1, 4).Draw(rt, "tenants")]
		weights := map[string]int{}
		sum := 0
		var cmds []*internalpb.Command
		for _, tn := range names {
			w := rapid.IntRange(1, 6).Draw(rt, "w")
			weights[tn] = w
			sum += w
			cmds = append(cmds, setWeightCmd(tn, uint32(w)))
		}
		h.setWeights(cmds...)
		rounds := rapid.IntRange(1, 4).Draw(rt, "rounds")
		h.backlog(rounds*6+1, names...)
		got := map[string]int{}
		for left := rounds * sum; left > 0; {
			c := min(rapid.IntRange(1, 7).Draw(rt, "cap"), left)
			for _, l := range h.ok(leaseCmd("w", int32(c))).GetLeases() {
				got[l.GetJob().GetSpec().GetTenant()]++
				left--
			}
		}
		for _, tn := range names {
			if got[tn] != rounds*weights[tn] {
				rt.Fatalf("weights %v, %d rounds: leased %v", weights, rounds, got)
			}
		}
		checkInvariants(t, h.f)
	})
}

func TestPropertyBackoff(t *testing.T) {
	rapid.Check(t, func(rt *rapid.T) {
		base := rapid.Int64Range(1, 1<<40).Draw(rt, "base")
		max := base + rapid.Int64Range(0, 1<<50).Draw(rt, "extra")
		prev := int64(0)
		for a := int32(1); a < 80; a++ {
			d := backoffMs(base, max, a)
			if d < prev || d > max || d < base {
				rt.Fatalf("backoff(%d) = %d (prev %d, base %d, max %d)", a, d, prev, base, max)
			}
			prev = d
		}
		if backoffMs(base, max, 79) != max {
			rt.Fatal("backoff never reaches the cap")
		}
	})
}
