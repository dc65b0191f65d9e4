package fsm

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"strings"
	"testing"

	"github.com/hodei-io/hodei/proto/hodeiv1"
	"github.com/hodei-io/hodei/proto/internalpb"
)

// backlog submits n ready jobs of each tenant, interleaved.
func (h *harness) backlog(n int, tenants ...string) {
	h.t.Helper()
	var specs []*hodeiv1.JobSpec
	for i := 0; i < n; i++ {
		for _, tn := range tenants {
			specs = append(specs, &hodeiv1.JobSpec{Tenant: tn, Command: []string{"x"}})
		}
	}
	h.ok(submitCmd(specs...))
}

// leaseOrder leases n jobs, capacity at a time, and returns their tenants
// in lease order.
func (h *harness) leaseOrder(n int, capacity int32) []string {
	h.t.Helper()
	var out []string
	for len(out) < n {
		c := min(capacity, int32(n-len(out)))
		ls := h.ok(leaseCmd("w", c)).GetLeases()
		if len(ls) == 0 {
			h.t.Fatalf("nothing leased after %d jobs", len(out))
		}
		for _, l := range ls {
			out = append(out, l.GetJob().GetSpec().GetTenant())
		}
	}
	return out
}

func count(order []string) map[string]int {
	m := map[string]int{}
	for _, tn := range order {
		m[tn]++
	}
	return m
}

// TestWeightedFairShare: with weights 3 and 1 and both tenants backlogged,
// deficit round robin leases exactly three of one per one of the other, in
// runs of three, however the leases are cut (capacity 1, 3, 5, 40).
func TestWeightedFairShare(t *testing.T) {
	for _, capacity := range []int32{1, 3, 5, 40} {
		h := newHarness(t)
		for _, r := range h.setWeights(setWeightCmd("heavy", 3), setWeightCmd("light", 1)) {
			if err := ResultError(r); err != nil {
				t.Fatal(err)
			}
		}
		if h.f.TenantWeight("heavy") != 3 || h.f.TenantWeight("light") != 1 || h.f.TenantWeight("other") != 1 {
			t.Fatalf("weights %v", h.f.TenantWeights())
		}
		h.backlog(50, "heavy", "light")
		order := h.leaseOrder(40, capacity)
		if c := count(order); c["heavy"] != 30 || c["light"] != 10 {
			t.Fatalf("capacity %d: leased %v, want heavy 30 light 10", capacity, c)
		}
		want := strings.Repeat("heavy heavy heavy light ", 10)
		if got := strings.Join(order, " ") + " "; got != want {
			t.Fatalf("capacity %d: lease order\n%s\nwant\n%s", capacity, got, want)
		}
	}
	// Unweighted, the same backlog alternates.
	h := newHarness(t)
	h.backlog(10, "heavy", "light")
	if got := strings.Join(h.leaseOrder(6, 2), " "); got != "heavy light heavy light heavy light" {
		t.Fatalf("unweighted order %s", got)
	}
}

func TestSetTenantWeightRejectsBadInput(t *testing.T) {
	h := newHarness(t)
	h.backlog(3, "a", "b")
	h.setWeights(setWeightCmd("a", 2))
	before := h.digest()
	for _, tc := range []struct {
		cmd  *internalpb.Command
		want string
	}{
		{setWeightCmd("", 2), "tenant is required"},
		{setWeightCmd("a", 0), "outside 1..1000"},
		{setWeightCmd("a", 1001), "outside 1..1000"},
		{setWeightCmd("no spaces", 2), "must match"},
		{setWeightCmd(strings.Repeat("x", MaxNameBytes+1), 2), "limit is 128"},
	} {
		wantCode(t, h.setWeights(tc.cmd)[0], internalpb.Code_CODE_INVALID_ARGUMENT, tc.want)
	}
	// In a version 1 entry (what an older node would ignore) it is refused.
	wantCode(t, h.apply(setWeightCmd("a", 5)), internalpb.Code_CODE_INVALID_ARGUMENT, "needs an entry of version 2")
	if h.digest() != before || h.f.TenantWeight("a") != 2 {
		t.Fatalf("rejected commands changed the state (weight of a: %d)", h.f.TenantWeight("a"))
	}
}

// A weight is a setting of the tenant, not of its jobs: it stays when the
// tenant has no jobs (or never had any), and weight 1 removes it.
func TestTenantWeightOutlivesJobs(t *testing.T) {
	h := newHarness(t)
	h.setWeights(setWeightCmd("ghost", 4))
	id := h.ok(submitCmd(&hodeiv1.JobSpec{Tenant: "ghost", Command: []string{"x"}})).GetSubmitted()[0].GetJob().GetId()
	h.ok(cancelCmd(id, ""))
	h.now += 10
	if n := h.ok(gcCmd(h.now, 10)).GetCount(); n != 1 || h.f.Stats().Tenants != 0 {
		t.Fatalf("gc removed %d, tenants %d", n, h.f.Stats().Tenants)
	}
	if w := h.f.TenantWeight("ghost"); w != 4 {
		t.Fatalf("weight after the tenant's jobs are gone: %d", w)
	}
	h.setWeights(setWeightCmd("ghost", 1))
	if len(h.f.TenantWeights()) != 0 {
		t.Fatalf("weight 1 is kept: %v", h.f.TenantWeights())
	}
}

// Lowering a weight mid-turn: the tenant keeps at most its new quantum.
func TestLowerWeightMidTurn(t *testing.T) {
	h := newHarness(t)
	h.setWeights(setWeightCmd("a", 5))
	h.backlog(20, "a", "b")
	if got := strings.Join(h.leaseOrder(1, 1), " "); got != "a" {
		t.Fatalf("first lease %s", got)
	}
	// a has 4 credits left; with weight 2 it keeps 2.
	h.setWeights(setWeightCmd("a", 2))
	if got := strings.Join(h.leaseOrder(7, 1), " "); got != "a a b a a b a" {
		t.Fatalf("order after lowering the weight: %s", got)
	}
}

func snapshotVersionOf(data []byte) uint32 {
	return binary.BigEndian.Uint32(data[len(snapshotMagic):])
}

// TestWeightsSnapshotRoundTrip: weights survive snapshot and restore (and
// are in the digest); the restored replica leases in the same order; a
// state without weights is written as version 1 (TestSnapshotVersionChoice
// has the versions of states with and without request records: the busy
// harness has some, so its snapshots are of the newest version).
func TestWeightsSnapshotRoundTrip(t *testing.T) {
	h := busyHarness(t)
	plain := snapshotBytes(t, h.f)
	if v := snapshotVersionOf(plain); v != SnapshotVersion {
		t.Fatalf("a state with request records is written as version %d", v)
	}
	_, d0 := h.f.Digest()
	h.setWeights(setWeightCmd("a", 3), setWeightCmd("zzz", 7))
	if _, d1 := h.f.Digest(); d1 == d0 {
		t.Fatal("the digest does not cover weights")
	}
	h.backlog(20, "a", "c")
	data := snapshotBytes(t, h.f)
	if v := snapshotVersionOf(data); v != SnapshotVersion {
		t.Fatalf("a state with weights is written as version %d", v)
	}
	g := restoreInto(t, data)
	if w := g.TenantWeights(); len(w) != 2 || w["a"] != 3 || w["zzz"] != 7 {
		t.Fatalf("restored weights %v", w)
	}
	if !bytes.Equal(snapshotBytes(t, g), data) {
		t.Fatal("restore+snapshot does not reproduce the bytes")
	}
	h2 := &harness{t: t, f: g, index: h.index, now: h.now}
	a, b := h.leaseOrder(16, 3), h2.leaseOrder(16, 3)
	if strings.Join(a, " ") != strings.Join(b, " ") || count(a)["a"] < 11 {
		t.Fatalf("lease order after restore\n%v\nwant\n%v", b, a)
	}
	if _, da := h.f.Digest(); true {
		if _, db := g.Digest(); da != db {
			t.Fatal("replicas diverged after restore")
		}
	}
	// Back to weight 1 everywhere: version 1 again once the request
	// records are gone, readable as before.
	h.setWeights(setWeightCmd("a", 1), setWeightCmd("zzz", 1))
	h.now += DefaultConfig().RequestRetentionMs + 1
	h.ok(promoteCmd())
	if v := snapshotVersionOf(snapshotBytes(t, h.f)); v != 1 {
		t.Fatalf("without weights again: version %d", v)
	}
	// The plain snapshot from before still restores.
	if len(restoreInto(t, plain).TenantWeights()) != 0 {
		t.Fatal("a snapshot without weights has weights")
	}
}

func TestSnapshotWeightsValidated(t *testing.T) {
	other := newHarness(t)
	other.ok(submitCmd(spec("keep me")))
	_, before := other.f.Digest()
	hdr := func(version uint32, w ...*internalpb.TenantSettings) *internalpb.SnapshotHeader {
		return &internalpb.SnapshotHeader{Version: version, NextSeq: 1, Weights: w}
	}
	ts := func(tn string, w uint32) *internalpb.TenantSettings {
		return &internalpb.TenantSettings{Tenant: tn, Weight: w}
	}
	for name, tc := range map[string]struct {
		outer uint32
		hdr   *internalpb.SnapshotHeader
	}{
		"weights in version 1":   {1, hdr(1, ts("a", 2))},
		"header version differs": {2, hdr(1)},
		"weight 1 stored":        {2, hdr(2, ts("a", 1))},
		"weight 0":               {2, hdr(2, ts("a", 0))},
		"weight too large":       {2, hdr(2, ts("a", 1001))},
		"unsorted":               {2, hdr(2, ts("b", 2), ts("a", 2))},
		"duplicate":              {2, hdr(2, ts("a", 2), ts("a", 3))},
		"bad tenant":             {2, hdr(2, ts("a b", 2))},
	} {
		data := frameVersion(t, tc.outer, tc.hdr)
		err := other.f.Restore(io.NopCloser(bytes.NewReader(data)))
		if !errors.Is(err, ErrCorruptSnapshot) {
			t.Errorf("%s: %v", name, err)
		}
	}
	// A version this binary does not know fails clearly.
	err := other.f.Restore(io.NopCloser(bytes.NewReader(frameVersion(t, snapshotVersionSemantics+1, hdr(snapshotVersionSemantics+1)))))
	if err == nil || !strings.Contains(err.Error(), fmt.Sprintf("snapshot version %d is not supported", snapshotVersionSemantics+1)) {
		t.Fatalf("version %d: %v", snapshotVersionSemantics+1, err)
	}
	if _, after := other.f.Digest(); after != before {
		t.Fatal("failed restore changed the state")
	}
	// Well-formed version 2 is accepted.
	g, _ := New(DefaultConfig(), Options{})
	if err := g.Restore(io.NopCloser(bytes.NewReader(frameVersion(t, 2, hdr(2, ts("a", 2), ts("b", 1000)))))); err != nil {
		t.Fatal(err)
	}
	if w := g.TenantWeights(); w["a"] != 2 || w["b"] != 1000 {
		t.Fatalf("weights %v", w)
	}
}

// frameVersion encodes a header as a snapshot of the given outer version
// with a valid checksum.
func frameVersion(t testing.TB, version uint32, hdr *internalpb.SnapshotHeader) []byte {
	t.Helper()
	data := frame(t, hdr)
	out := bytes.Clone(data[:len(data)-4])
	binary.BigEndian.PutUint32(out[len(snapshotMagic):], version)
	return appendCRC(out)
}

func TestEntryVersionFor(t *testing.T) {
	plain := []*internalpb.Command{{Kind: &internalpb.Command_Submit{Submit: &internalpb.SubmitJobs{}}}}
	if v := EntryVersionFor(plain); v != EntryVersion {
		t.Fatalf("ordinary entry: version %d, want %d", v, EntryVersion)
	}
	mixed := append(plain, &internalpb.Command{Kind: &internalpb.Command_SetTenantWeight{SetTenantWeight: &internalpb.SetTenantWeight{Tenant: "a", Weight: 2}}})
	if v := EntryVersionFor(mixed); v != EntryVersionTenantWeights {
		t.Fatalf("entry with SetTenantWeight: version %d, want %d", v, EntryVersionTenantWeights)
	}
}
