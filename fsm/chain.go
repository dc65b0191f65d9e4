package fsm

import (
	"encoding/binary"
	"hash/crc64"
)

// The apply chain is a replica consistency check (in the spirit of
// CockroachDB's consistency checker, but continuous and cheap). Every
// replica folds each log entry it applies — index, term and bytes — into a
// running 64-bit hash:
//
//	chain(i) = crc64(chain(i-1) || index || term || data)
//
// Replicas that applied the same log have the same chain at every index;
// a replica that applied a different entry at some index (a storage or
// consensus bug) has a different chain from there on. The chain is part of
// the replicated state (snapshot header), so a replica restored from a
// snapshot continues it.
//
// A shard leader proposes a Checkpoint{index, chain} with its own chain
// every few seconds; each replica applying it compares with the chain it
// recorded at that index (a ring of the last chainRingSize applies) and
// reports a mismatch through Options.OnDivergence. Checkpoints change no
// replicated state; the verdict is local to the replica that computed it.

var chainTable = crc64.MakeTable(crc64.ECMA)

func chainNext(prev, index, term uint64, data []byte) uint64 {
	var hdr [24]byte
	binary.BigEndian.PutUint64(hdr[0:], prev)
	binary.BigEndian.PutUint64(hdr[8:], index)
	binary.BigEndian.PutUint64(hdr[16:], term)
	return crc64.Update(crc64.Update(0, chainTable, hdr[:]), chainTable, data)
}

// chainRingSize bounds how far back a checkpoint can be verified. A
// checkpoint lands a few entries after the index it names (the entries in
// flight when it was proposed), far less than this.
const chainRingSize = 4096

type chainRing struct {
	idx [chainRingSize]uint64
	sum [chainRingSize]uint64
}

func (r *chainRing) put(index, chain uint64) {
	r.idx[index%chainRingSize] = index
	r.sum[index%chainRingSize] = chain
}

func (r *chainRing) get(index uint64) (uint64, bool) {
	if index == 0 || r.idx[index%chainRingSize] != index {
		return 0, false
	}
	return r.sum[index%chainRingSize], true
}

func (r *chainRing) reset() { *r = chainRing{} }

// Divergence describes a failed checkpoint: at log index At, the leader
// that proposed it had chain Want after applying Index; this replica had
// Got.
type Divergence struct {
	At, Index uint64
	Want, Got uint64
}

// ChainStats counts the checkpoints this replica applied.
type ChainStats struct {
	Verified     uint64 // chain matched
	Mismatched   uint64 // divergence
	Unverifiable uint64 // index not in the ring (restored from a later snapshot, or too old)
}
