package fsm

import (
	"bytes"
	"encoding/binary"
	"errors"
	"hash/crc32"
	"io"
	"testing"

	"google.golang.org/protobuf/proto"

	"github.com/hodei-io/hodei/proto/hodeiv1"
	"github.com/hodei-io/hodei/proto/internalpb"
)

// busyHarness builds a state with every kind of job, tenant, request id,
// delayed job and lease.
func busyHarness(t testing.TB) *harness {
	h := newHarness(t)
	h.ok(withRID("r1", submitCmd(
		&hodeiv1.JobSpec{Tenant: "a", Command: []string{"a"}, IdempotencyKey: "k1", Priority: 3},
		&hodeiv1.JobSpec{Tenant: "b", Command: []string{"b"}, Labels: []*hodeiv1.KeyValue{kv("gpu", "1")}},
		&hodeiv1.JobSpec{Tenant: "a", Command: []string{"c"}, DelayMs: 5000},
		&hodeiv1.JobSpec{Tenant: "c", Command: []string{"d"}, MaxAttempts: 2, BackoffBaseMs: 10},
		&hodeiv1.JobSpec{Tenant: "c", Command: []string{"e"}},
		&hodeiv1.JobSpec{Tenant: "a", Command: []string{"f"}},
	)))
	r := h.ok(withRID("r2", leaseCmd("w1", 2)))
	h.now += 10
	h.ok(completeCmd(r.GetLeases()[0].GetJob().GetId(), r.GetLeases()[0].GetToken(), true, false))
	h.ok(cancelCmd("0-6", "x"))
	l := h.ok(leaseCmd("w2", 1)).GetLeases()
	if len(l) == 1 {
		h.ok(completeCmd(l[0].GetJob().GetId(), l[0].GetToken(), false, true)) // retry: delayed with attempts>0
	}
	h.now += 20
	h.ok(promoteCmd())
	return h
}

func TestSnapshotRoundTrip(t *testing.T) {
	h := busyHarness(t)
	data := snapshotBytes(t, h.f)
	g := restoreInto(t, data)
	i1, d1 := h.f.Digest()
	i2, d2 := g.Digest()
	if i1 != i2 || d1 != d2 || i2 != h.index {
		t.Fatalf("digest %d %s != %d %s", i1, d1, i2, d2)
	}
	if again := snapshotBytes(t, g); !bytes.Equal(again, data) {
		t.Fatal("restore+snapshot does not reproduce the bytes")
	}
	if h.f.Stats() != g.Stats() {
		t.Fatalf("stats %+v != %+v", h.f.Stats(), g.Stats())
	}
	a, _ := h.f.ListJobs("", hodeiv1.JobState_JOB_STATE_UNSPECIFIED, 0, 100)
	b, _ := g.ListJobs("", hodeiv1.JobState_JOB_STATE_UNSPECIFIED, 0, 100)
	if len(a) != len(b) {
		t.Fatal("list length")
	}
	for i := range a {
		if !proto.Equal(a[i], b[i]) {
			t.Fatalf("job %d differs", i)
		}
	}
	// Both continue identically (queues, cursor, tokens, request ids).
	h2 := &harness{t: t, f: g, index: h.index, now: h.now}
	for _, hh := range []*harness{h, h2} {
		hh.now += 10_000
		hh.ok(promoteCmd())
		hh.ok(leaseCmd("w3", 10, kv("gpu", "1")))
		hh.ok(withRID("r1", submitCmd(spec("zzz"))))
		hh.ok(submitCmd(&hodeiv1.JobSpec{Tenant: "a", Command: []string{"a"}, IdempotencyKey: "k1"}))
	}
	if _, d1 := h.f.Digest(); true {
		if _, d2 := g.Digest(); d1 != d2 {
			t.Fatal("replicas diverged after restore")
		}
	}
}

func TestSnapshotCorruptionRejected(t *testing.T) {
	h := busyHarness(t)
	data := snapshotBytes(t, h.f)
	other := newHarness(t)
	other.ok(submitCmd(spec("keep me")))
	_, before := other.f.Digest()
	for i := 0; i < len(data); i += 1 + len(data)/97 {
		bad := bytes.Clone(data)
		bad[i] ^= 0x40
		if err := other.f.Restore(io.NopCloser(bytes.NewReader(bad))); err == nil {
			t.Fatalf("flipped byte %d accepted", i)
		}
	}
	for _, bad := range [][]byte{nil, data[:10], data[:len(data)-1], append(bytes.Clone(data), 0)} {
		if err := other.f.Restore(io.NopCloser(bytes.NewReader(bad))); err == nil {
			t.Fatalf("truncated/extended snapshot (%d bytes) accepted", len(bad))
		}
	}
	if _, after := other.f.Digest(); after != before {
		t.Fatal("failed restore changed the state")
	}
	// Wrong shard.
	cfg := DefaultConfig()
	cfg.Shard = 7
	f7, _ := New(cfg, Options{})
	if err := f7.Restore(io.NopCloser(bytes.NewReader(data))); err == nil {
		t.Fatal("restored another shard's snapshot")
	}
	// Valid checksum but inconsistent content is still rejected.
	hdr := &internalpb.SnapshotHeader{Version: SnapshotVersion, NextSeq: 0}
	if _, err := decodeSnapshot(frame(t, hdr), DefaultConfig()); !errors.Is(err, ErrCorruptSnapshot) {
		t.Fatalf("next_seq 0: %v", err)
	}
}

// frame encodes records as a snapshot with a valid checksum.
func frame(t testing.TB, recs ...proto.Message) []byte {
	s := newState(DefaultConfig())
	base := s.encodeSnapshot()
	out := bytes.Clone(base[:len(snapshotMagic)+4])
	for _, r := range recs {
		b, err := marshalOpts.Marshal(r)
		if err != nil {
			t.Fatal(err)
		}
		out = appendUvarint(out, uint64(len(b)))
		out = append(out, b...)
	}
	return appendCRC(out)
}

func TestTwoReplicasIdenticalBytes(t *testing.T) {
	h := busyHarness(t)
	g, _ := New(DefaultConfig(), Options{})
	for i, e := range h.log {
		g.ApplyEntry(uint64(i+1), proto.Clone(e).(*internalpb.Entry))
	}
	if !bytes.Equal(snapshotBytes(t, h.f), snapshotBytes(t, g)) {
		t.Fatal("two FSMs fed the same log differ")
	}
}

func appendUvarint(b []byte, v uint64) []byte { return binary.AppendUvarint(b, v) }

func appendCRC(b []byte) []byte {
	return binary.BigEndian.AppendUint32(b, crc32.Checksum(b, castagnoli))
}
