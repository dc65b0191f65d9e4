package fsm

// Helpers for cluster backups (hodei operator snapshot save/restore): the
// same encoding Snapshot/Persist write, and Restore's verification without
// changing anything.

// SnapshotInfo describes a shard snapshot encoding.
type SnapshotInfo struct {
	AppliedIndex uint64 // the FSM's applied index at the encoding
	NextSeq      uint64 // sequence number of the next job id
	Jobs         int    // jobs held
}

// SnapshotData returns the bytes Snapshot/Persist would write now, and what
// they hold. Safe to call concurrently with Apply (it holds the read lock).
func (f *FSM) SnapshotData() ([]byte, SnapshotInfo) {
	f.mu.RLock()
	defer f.mu.RUnlock()
	return f.st.encodeSnapshot(), SnapshotInfo{AppliedIndex: f.st.appliedIndex, NextSeq: f.st.nextSeq, Jobs: len(f.st.jobs)}
}

// CheckSnapshot verifies data exactly as Restore would (magic, version,
// checksum, shard number, internal consistency) without changing the FSM.
// Restore of data that passes succeeds.
func (f *FSM) CheckSnapshot(data []byte) (SnapshotInfo, error) {
	st, err := decodeSnapshot(data, f.cfg)
	if err != nil {
		return SnapshotInfo{}, err
	}
	return SnapshotInfo{AppliedIndex: st.appliedIndex, NextSeq: st.nextSeq, Jobs: len(st.jobs)}, nil
}

// NextSeq is the sequence number the next submitted job gets (1 on a shard
// that never had a job).
func (f *FSM) NextSeq() uint64 {
	f.mu.RLock()
	defer f.mu.RUnlock()
	return f.st.nextSeq
}
