package fsm

import (
	"testing"

	"github.com/hashicorp/raft"

	"github.com/hodei-io/hodei/proto/internalpb"
)

// raftLog wraps commands in an encoded entry at index/term, as Raft delivers it.
func raftLog(t testing.TB, index, term uint64, now int64, cmds ...*internalpb.Command) *raft.Log {
	t.Helper()
	return &raft.Log{Index: index, Term: term, Type: raft.LogCommand,
		Data: encodeEntry(t, &internalpb.Entry{Version: EntryVersion, NowMs: now, Commands: cmds})}
}

func checkpointCmd(index, chain uint64) *internalpb.Command {
	return &internalpb.Command{Kind: &internalpb.Command_Checkpoint{Checkpoint: &internalpb.Checkpoint{Index: index, Chain: chain}}}
}

func newChainFSM(t testing.TB, divs *[]Divergence) *FSM {
	t.Helper()
	f, err := New(DefaultConfig(), Options{OnDivergence: func(d Divergence) { *divs = append(*divs, d) }})
	if err != nil {
		t.Fatal(err)
	}
	return f
}

func TestChainCheckpointVerifiesOnIdenticalReplicas(t *testing.T) {
	var divA, divB []Divergence
	a, b := newChainFSM(t, &divA), newChainFSM(t, &divB)
	for i := uint64(1); i <= 20; i++ {
		l := raftLog(t, i, 1, 1000, submitCmd(spec("echo", string(rune('a'+i)))))
		a.Apply(l)
		b.Apply(l)
	}
	idx, chain, ok := a.LastChain()
	if !ok || idx != 20 || chain == 0 {
		t.Fatalf("LastChain = %d, %x, %v; want index 20 and a chain", idx, chain, ok)
	}
	before := snapshotBytes(t, a)
	cp := raftLog(t, 21, 1, 1000, checkpointCmd(idx, chain))
	for _, f := range []*FSM{a, b} {
		res := f.Apply(cp).([]*internalpb.CommandResult)
		if err := ResultError(res[0]); err != nil {
			t.Fatalf("checkpoint result: %v", err)
		}
	}
	if len(divA)+len(divB) != 0 {
		t.Fatalf("divergence reported on identical replicas: %v %v", divA, divB)
	}
	if st := b.ChainStats(); st != (ChainStats{Verified: 1}) {
		t.Fatalf("stats = %+v, want one verified", st)
	}
	// The checkpoint changed no job state: only the applied index and chain.
	_, da := a.Digest()
	_, db := b.Digest()
	if da != db {
		t.Fatal("identical replicas have different digests after a checkpoint")
	}
	ra := restoreInto(t, before)
	sa, sr := a.Stats(), ra.Stats()
	sa.AppliedIndex, sr.AppliedIndex = 0, 0
	if sa != sr {
		t.Fatalf("state before checkpoint %+v, after %+v", sr, sa)
	}
}

func TestChainCheckpointDetectsADifferentEntry(t *testing.T) {
	var divA, divB []Divergence
	a, b := newChainFSM(t, &divA), newChainFSM(t, &divB)
	for i := uint64(1); i <= 10; i++ {
		l := raftLog(t, i, 1, 1000, submitCmd(spec("echo", "same")))
		a.Apply(l)
		b.Apply(l)
	}
	// Index 11: b applies a stale entry of an older term with other bytes,
	// the way a replica that applied an uncommitted tail would.
	a.Apply(raftLog(t, 11, 3, 1000, submitCmd(spec("echo", "committed"))))
	b.Apply(raftLog(t, 11, 2, 1000, submitCmd(spec("echo", "stale"))))
	for i := uint64(12); i <= 14; i++ {
		l := raftLog(t, i, 3, 1000, submitCmd(spec("echo", "after")))
		a.Apply(l)
		b.Apply(l)
	}
	idx, chain, _ := a.LastChain()
	cp := raftLog(t, 15, 3, 1000, checkpointCmd(idx, chain))
	a.Apply(cp)
	b.Apply(cp)
	if len(divA) != 0 {
		t.Fatalf("the proposer reported divergence with itself: %v", divA)
	}
	if len(divB) != 1 {
		t.Fatalf("divergences on the stale replica = %v, want 1", divB)
	}
	d := divB[0]
	if d.At != 15 || d.Index != 14 || d.Want != chain || d.Got == chain {
		t.Fatalf("divergence = %+v, want At 15 Index 14 Want %x and another Got", d, chain)
	}
	if st := b.ChainStats(); st.Mismatched != 1 || st.Verified != 0 {
		t.Fatalf("stats = %+v", st)
	}
	// A same-bytes entry under another term is also a different log.
	c, d2 := newChainFSM(t, &divA), newChainFSM(t, &divB)
	c.Apply(raftLog(t, 1, 1, 1000, submitCmd(spec("x"))))
	d2.Apply(raftLog(t, 1, 2, 1000, submitCmd(spec("x"))))
	_, cc, _ := c.LastChain()
	_, dc, _ := d2.LastChain()
	if cc == dc {
		t.Fatal("the chain ignores the term")
	}
}

func TestChainSurvivesSnapshotRestore(t *testing.T) {
	var divs []Divergence
	a := newChainFSM(t, &divs)
	for i := uint64(1); i <= 30; i++ {
		a.Apply(raftLog(t, i, 1, 1000, submitCmd(spec("echo", "x"))))
	}
	snap := snapshotBytes(t, a)
	b := restoreInto(t, snap)
	b.opts.OnDivergence = func(d Divergence) { divs = append(divs, d) }
	ia, ca, _ := a.LastChain()
	ib, cb, ok := b.LastChain()
	if !ok || ia != ib || ca != cb {
		t.Fatalf("restored chain (%d, %x, %v) != original (%d, %x)", ib, cb, ok, ia, ca)
	}
	// A checkpoint naming the snapshot index verifies; one naming an
	// index before it cannot be verified, and is not a divergence.
	for _, f := range []*FSM{a, b} {
		f.Apply(raftLog(t, 31, 1, 1000, checkpointCmd(30, ca), checkpointCmd(12, 0xdead)))
	}
	if st := b.ChainStats(); st.Verified != 1 || st.Unverifiable != 1 || st.Mismatched != 0 {
		t.Fatalf("restored replica stats = %+v, want 1 verified, 1 unverifiable", st)
	}
	if st := a.ChainStats(); st.Mismatched != 1 {
		t.Fatalf("original replica stats = %+v: index 12 is in its ring and 0xdead is wrong", st)
	}
	if len(divs) != 1 || divs[0].Index != 12 {
		t.Fatalf("divergences = %+v", divs)
	}
	// Both continue the same chain.
	a.Apply(raftLog(t, 32, 1, 1000, submitCmd(spec("y"))))
	b.Apply(raftLog(t, 32, 1, 1000, submitCmd(spec("y"))))
	_, ca, _ = a.LastChain()
	_, cb, _ = b.LastChain()
	if ca != cb {
		t.Fatal("chains differ after restore and one more entry")
	}
}
