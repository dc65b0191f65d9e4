package fsm

import (
	"bytes"
	"crypto/sha256"
	"encoding/binary"
	"encoding/hex"
	"errors"
	"fmt"
	"hash/crc32"
	"io"
	"sort"

	"github.com/hashicorp/raft"
	"google.golang.org/protobuf/proto"

	"github.com/hodei-io/hodei/proto/hodeiv1"
	"github.com/hodei-io/hodei/proto/internalpb"
)

// Snapshot format (all integers big-endian unless uvarint):
//
//	"HODEISNP" | uint32 version | records... | uint32 CRC32-C of all preceding bytes
//
// where each record is a uvarint length followed by a deterministic
// protobuf encoding: one internalpb.SnapshotHeader, then header.job_count
// hodeiv1.Job records in seq order, then header.request_count
// internalpb.RequestRecord records in insertion (= at_ms) order.
//
// Version 2 adds the tenants' fair-share weights to the header. In
// versions 1 and 2 a RequestRecord holds the command's whole result
// (field 3); in version 3 it holds the compact record instead (fields
// 4-11, encoded as encodeCompact says). The version written is the lowest
// that represents the state (see SnapshotVersion): with schedules or
// tenant quotas 4 (issue 11: header.schedule_count hodeiv1.Schedule
// records after the request records; header.quotas), else with request
// records 3, else with weights other than 1 version 2, else version 1.
const snapshotMagic = "HODEISNP"

// ErrCorruptSnapshot is wrapped by Restore errors about snapshot content.
var ErrCorruptSnapshot = errors.New("corrupt snapshot")

var castagnoli = crc32.MakeTable(crc32.Castagnoli)

var marshalOpts = proto.MarshalOptions{Deterministic: true}

// encodeSnapshot writes the deterministic encoding of s.
func (s *state) encodeSnapshot() []byte {
	seqs := make([]uint64, 0, len(s.jobs))
	for seq := range s.jobs { // order fixed by the sort below
		seqs = append(seqs, seq)
	}
	sort.Slice(seqs, func(a, b int) bool { return seqs[a] < seqs[b] })
	nreqs := s.reqs.len()

	names := make([]string, 0, len(s.tenants))
	for n, t := range s.tenants { // order fixed by the sort below
		if t.deficit != 0 {
			names = append(names, n)
		}
	}
	sort.Strings(names)
	weights := s.sortedWeights()
	quotas := s.sortedQuotas()
	semantics := false
	for _, j := range s.jobs { // any order: only whether one exists
		if hasSemanticsState(j) {
			semantics = true
			break
		}
	}
	version := uint32(snapshotVersionNoWeights)
	schedKeys := s.sortedScheduleKeys()
	pipeSeqs := s.sortedPipelineSeqs()
	scheduleRecords := false // records of schedule writes (entries of version 5)
	if len(schedKeys) > 0 {
		s.reqs.each(func(r *reqRecord) {
			scheduleRecords = scheduleRecords || r.kind() == internalpb.RequestKind_REQUEST_KIND_SCHEDULE
		})
	}
	switch {
	case len(pipeSeqs) > 0 || s.pipes.nextSeq > 1 || scheduleRecords: // issue 13: pipelines; version-5 schedule records
		version = snapshotVersionPipelines
	case len(schedKeys) > 0 || len(quotas) > 0 || semantics: // issue 11: schedules, quotas, dead-letter state
		version = snapshotVersionSemantics
	case nreqs > 0:
		version = SnapshotVersion
	case len(weights) > 0:
		version = snapshotVersionWeights
	}
	hdr := &internalpb.SnapshotHeader{
		Version:       version,
		Shard:         s.cfg.Shard,
		NextSeq:       s.nextSeq,
		NextToken:     s.nextToken,
		JobCount:      uint64(len(seqs)),
		RequestCount:  uint64(nreqs),
		LastNowMs:     s.lastNowMs,
		AppliedIndex:  s.appliedIndex,
		LastPromoteMs: s.lastPromoteMs,
		ApplyChain:    s.chain,
		RrCursor:      s.sched.cursor,
		Weights:       weights,
		ScheduleCount: uint64(len(schedKeys)),
		Quotas:        quotas,
	}
	if version >= snapshotVersionPipelines {
		hdr.PipelineCount = uint64(len(pipeSeqs))
		hdr.NextPipelineSeq = s.pipes.nextSeq
	}
	for _, n := range names {
		hdr.Deficits = append(hdr.Deficits, &internalpb.TenantDeficit{Tenant: n, Deficit: s.tenants[n].deficit})
	}

	var buf bytes.Buffer
	buf.Grow(64 + len(seqs)*256)
	buf.WriteString(snapshotMagic)
	var b4 [4]byte
	binary.BigEndian.PutUint32(b4[:], version)
	buf.Write(b4[:])
	var scratch []byte
	writeBytes := func(b []byte) {
		var lb [binary.MaxVarintLen64]byte
		buf.Write(lb[:binary.PutUvarint(lb[:], uint64(len(b)))])
		buf.Write(b)
	}
	writeRec := func(m proto.Message) {
		var err error
		scratch, err = marshalOpts.MarshalAppend(scratch[:0], m)
		if err != nil {
			panic(fmt.Sprintf("fsm: snapshot marshal: %v", err))
		}
		writeBytes(scratch)
	}
	writeRec(hdr)
	for _, seq := range seqs {
		writeRec(s.jobs[seq])
	}
	s.reqs.each(func(r *reqRecord) {
		scratch = appendRecord(scratch[:0], r)
		writeBytes(scratch)
	})
	// cron (issue 11): the schedules, by (tenant, id).
	for _, k := range schedKeys {
		writeRec(s.schedules[k].sc)
	}
	// pipelines (issue 13): the records, by seq.
	for _, seq := range pipeSeqs {
		writeRec(s.pipes.bySeq[seq].rec)
	}
	binary.BigEndian.PutUint32(b4[:], crc32.Checksum(buf.Bytes(), castagnoli))
	buf.Write(b4[:])
	return buf.Bytes()
}

// Snapshot implements raft.FSM. The state is encoded into a buffer while the
// read lock is held (O(state) time; acceptable for now, a copy-on-write
// state would shorten it), and Persist streams the buffer to the sink.
func (f *FSM) Snapshot() (raft.FSMSnapshot, error) {
	f.mu.RLock()
	data := f.st.encodeSnapshot()
	f.mu.RUnlock()
	return &fsmSnapshot{data: data}, nil
}

type fsmSnapshot struct{ data []byte }

func (s *fsmSnapshot) Persist(sink raft.SnapshotSink) error {
	if _, err := sink.Write(s.data); err != nil {
		_ = sink.Cancel()
		return fmt.Errorf("fsm: write snapshot: %w", err)
	}
	return sink.Close()
}

func (s *fsmSnapshot) Release() {}

// Digest returns the applied index and the hex SHA-256 of the snapshot
// encoding at that index. Replicas at the same index must agree.
func (f *FSM) Digest() (uint64, string) {
	f.mu.RLock()
	idx := f.st.appliedIndex
	data := f.st.encodeSnapshot()
	f.mu.RUnlock()
	sum := sha256.Sum256(data)
	return idx, hex.EncodeToString(sum[:])
}

// Restore implements raft.FSM: it replaces the state entirely. The
// snapshot is read and verified (magic, version, checksum, record counts,
// internal consistency) before anything changes; on error the FSM keeps
// its previous state.
func (f *FSM) Restore(rc io.ReadCloser) error {
	defer rc.Close()
	data, err := io.ReadAll(rc)
	if err != nil {
		return fmt.Errorf("fsm: read snapshot: %w", err)
	}
	st, err := decodeSnapshot(data, f.cfg)
	if err != nil {
		return err
	}
	f.mu.Lock()
	f.st = st
	f.ring.reset()
	f.lastIdx = 0
	if st.appliedIndex > 0 {
		f.record(st.appliedIndex)
	}
	f.mu.Unlock()
	if f.opts.OnRestore != nil {
		f.opts.OnRestore(st.appliedIndex)
	}
	return nil
}

func corrupt(format string, args ...any) error {
	return fmt.Errorf("fsm: %w: %s", ErrCorruptSnapshot, fmt.Sprintf(format, args...))
}

func decodeSnapshot(data []byte, cfg Config) (*state, error) {
	if len(data) < len(snapshotMagic)+8 {
		return nil, corrupt("%d bytes is too short", len(data))
	}
	if string(data[:len(snapshotMagic)]) != snapshotMagic {
		return nil, corrupt("bad magic %q", data[:len(snapshotMagic)])
	}
	body, trailer := data[:len(data)-4], data[len(data)-4:]
	if got, want := crc32.Checksum(body, castagnoli), binary.BigEndian.Uint32(trailer); got != want {
		return nil, corrupt("checksum mismatch: computed %08x, trailer says %08x", got, want)
	}
	version := binary.BigEndian.Uint32(body[len(snapshotMagic):])
	if version < snapshotVersionNoWeights || version > maxSnapshotVersion {
		return nil, fmt.Errorf("fsm: snapshot version %d is not supported (this binary reads versions %d to %d)", version, snapshotVersionNoWeights, maxSnapshotVersion)
	}
	rest := body[len(snapshotMagic)+4:]
	next := func(m proto.Message) error {
		n, k := binary.Uvarint(rest)
		if k <= 0 || n > uint64(len(rest)-k) {
			return corrupt("bad record length")
		}
		if err := proto.Unmarshal(rest[k:k+int(n)], m); err != nil {
			return corrupt("record: %v", err)
		}
		rest = rest[k+int(n):]
		return nil
	}
	hdr := &internalpb.SnapshotHeader{}
	if err := next(hdr); err != nil {
		return nil, err
	}
	if hdr.GetVersion() != version {
		return nil, corrupt("header version %d in a version %d snapshot", hdr.GetVersion(), version)
	}
	if version < snapshotVersionWeights && len(hdr.GetWeights()) > 0 {
		return nil, corrupt("tenant weights in a version %d snapshot", version)
	}
	if hdr.GetShard() != cfg.Shard {
		return nil, fmt.Errorf("fsm: snapshot is of shard %d, this FSM is shard %d", hdr.GetShard(), cfg.Shard)
	}
	if version < snapshotVersionSemantics && hdr.GetScheduleCount() > 0 {
		return nil, corrupt("schedules in a version %d snapshot", version)
	}
	if version < snapshotVersionPipelines && (hdr.GetPipelineCount() > 0 || hdr.GetNextPipelineSeq() != 0) {
		return nil, corrupt("pipelines in a version %d snapshot", version)
	}
	if version >= snapshotVersionPipelines && hdr.GetNextPipelineSeq() == 0 {
		return nil, corrupt("next_pipeline_seq is 0 in a version %d snapshot", version)
	}
	if hdr.GetJobCount() > uint64(len(rest)) || hdr.GetRequestCount() > uint64(len(rest)) || hdr.GetScheduleCount() > uint64(len(rest)) || hdr.GetPipelineCount() > uint64(len(rest)) {
		return nil, corrupt("record counts exceed the data")
	}
	jobs := make([]*hodeiv1.Job, hdr.GetJobCount())
	for i := range jobs {
		jobs[i] = &hodeiv1.Job{}
		if err := next(jobs[i]); err != nil {
			return nil, err
		}
	}
	reqs := make([]*internalpb.RequestRecord, hdr.GetRequestCount())
	for i := range reqs {
		reqs[i] = &internalpb.RequestRecord{}
		if err := next(reqs[i]); err != nil {
			return nil, err
		}
	}
	scheds := make([]*hodeiv1.Schedule, hdr.GetScheduleCount())
	for i := range scheds {
		scheds[i] = &hodeiv1.Schedule{}
		if err := next(scheds[i]); err != nil {
			return nil, err
		}
	}
	pipes := make([]*hodeiv1.Pipeline, hdr.GetPipelineCount())
	for i := range pipes {
		pipes[i] = &hodeiv1.Pipeline{}
		if err := next(pipes[i]); err != nil {
			return nil, err
		}
	}
	if len(rest) != 0 {
		return nil, corrupt("%d trailing bytes", len(rest))
	}
	st, err := rebuildState(cfg, version, hdr, jobs, reqs)
	if err != nil {
		return nil, err
	}
	if err := st.restoreSchedules(scheds); err != nil {
		return nil, err
	}
	if err := st.restorePipelines(pipes); err != nil {
		return nil, err
	}
	return st, nil
}

// rebuildState builds a state and every index from snapshot records.
func rebuildState(cfg Config, version uint32, hdr *internalpb.SnapshotHeader, jobs []*hodeiv1.Job, reqs []*internalpb.RequestRecord) (*state, error) {
	s := newState(cfg)
	s.nextSeq = hdr.GetNextSeq()
	s.nextToken = hdr.GetNextToken()
	s.lastNowMs = hdr.GetLastNowMs()
	s.lastPromoteMs = hdr.GetLastPromoteMs()
	s.appliedIndex = hdr.GetAppliedIndex()
	s.chain = hdr.GetApplyChain()
	s.sched.cursor = hdr.GetRrCursor()
	if hdr.GetNextPipelineSeq() > 0 {
		s.pipes.nextSeq = hdr.GetNextPipelineSeq()
	}
	if s.nextSeq == 0 {
		return nil, corrupt("next_seq is 0")
	}
	var prev uint64
	for _, j := range jobs {
		seq := j.GetSeq()
		if seq <= prev || seq >= s.nextSeq {
			return nil, corrupt("job seq %d out of order or >= next_seq %d", seq, s.nextSeq)
		}
		prev = seq
		if j.GetShard() != cfg.Shard || j.GetId() != FormatJobID(cfg.Shard, seq) {
			return nil, corrupt("job %q does not belong to shard %d seq %d", j.GetId(), cfg.Shard, seq)
		}
		sp := j.GetSpec()
		if sp == nil || !validTenant(sp.GetTenant()) {
			return nil, corrupt("job %s has no valid spec", j.GetId())
		}
		st := j.GetState()
		if st <= hodeiv1.JobState_JOB_STATE_UNSPECIFIED || int(st) >= numStates {
			return nil, corrupt("job %s has state %v", j.GetId(), st)
		}
		if version < snapshotVersionPipelines && pipelineJob(j) {
			return nil, corrupt("job %s has pipeline fields in a version %d snapshot", j.GetId(), version)
		}
		if version < snapshotVersionSemantics && hasSemanticsState(j) {
			return nil, corrupt("job %s has dead-letter state in a version %d snapshot", j.GetId(), version)
		}
		if j.GetLeaseToken() > s.nextToken {
			return nil, corrupt("job %s token %d > next_token %d", j.GetId(), j.GetLeaseToken(), s.nextToken)
		}
		s.jobs[seq] = j
		t := s.tenant(sp.GetTenant(), true)
		t.jobs++
		if k := sp.GetIdempotencyKey(); k != "" {
			ik := idemKey(sp.GetTenant(), k)
			if _, dup := s.idem[ik]; dup {
				return nil, corrupt("duplicate idempotency key %q", ik)
			}
			s.idem[ik] = seq
		}
		s.byState[st].ReplaceOrInsert(seq)
		if t.byState[st] == nil {
			t.byState[st] = newSeqTree()
		}
		t.byState[st].ReplaceOrInsert(seq)
		switch {
		case st == hodeiv1.JobState_JOB_STATE_PENDING:
			if isDelayed(j, s.lastPromoteMs) {
				s.delayed.ReplaceOrInsert(timeKey{j.GetReadyAtMs(), seq})
			} else {
				s.sched.push(t, j)
			}
		case st == hodeiv1.JobState_JOB_STATE_RUNNING:
			s.leases.ReplaceOrInsert(timeKey{j.GetLeaseExpiresAtMs(), seq})
		case st == hodeiv1.JobState_JOB_STATE_DEAD:
			k := timeKey{j.GetDeadAtMs(), seq}
			s.dead.ReplaceOrInsert(k)
			if t.dead == nil {
				t.dead = newTimeTree()
			}
			t.dead.ReplaceOrInsert(k)
		default:
			s.finished.ReplaceOrInsert(timeKey{j.GetFinishedAtMs(), seq})
		}
	}
	prevTenant := ""
	for _, w := range hdr.GetWeights() {
		// Exactly what encodeSnapshot writes: sorted, unique, valid, != 1.
		if err := ValidateTenantWeight(w.GetTenant(), w.GetWeight()); err != nil || w.GetWeight() == 1 || w.GetTenant() <= prevTenant {
			return nil, corrupt("tenant weight %q=%d (after %q)", w.GetTenant(), w.GetWeight(), prevTenant)
		}
		prevTenant = w.GetTenant()
		s.sched.weights[w.GetTenant()] = int64(w.GetWeight())
	}
	if err := s.restoreQuotas(version, hdr.GetQuotas()); err != nil {
		return nil, err
	}
	for _, d := range hdr.GetDeficits() {
		t := s.tenants[d.GetTenant()]
		if t == nil {
			return nil, corrupt("deficit for unknown tenant %q", d.GetTenant())
		}
		t.deficit = d.GetDeficit()
	}
	prevAt := int64(-1 << 63)
	for _, r := range reqs {
		id := r.GetRequestId()
		if id == "" {
			return nil, corrupt("request record without an id")
		}
		if _, dup := s.reqs.get(id); dup {
			return nil, corrupt("duplicate request id %q", id)
		}
		if r.GetAtMs() < prevAt || r.GetAtMs() > s.lastNowMs {
			return nil, corrupt("request %q at %d ms, after one at %d or after last_now_ms %d", id, r.GetAtMs(), prevAt, s.lastNowMs)
		}
		prevAt = r.GetAtMs()
		c, err := s.compactOfSnapshot(version, r)
		if err != nil {
			return nil, corrupt("request %q: %v", id, err)
		}
		s.reqs.put(newReqRecord(id, r.GetAtMs(), &c), len(reqs))
	}
	return s, nil
}

// compactOfSnapshot is the compact record of a snapshot's request record,
// checked against the restored counters: converted from the whole result
// in versions 1 and 2, decoded in version 3.
func (s *state) compactOfSnapshot(version uint32, r *internalpb.RequestRecord) (compactRecord, error) {
	hasCompact := r.GetKind() != 0 || r.GetCode() != 0 || r.GetMessage() != "" || len(r.GetSeqs()) > 0 ||
		len(r.GetDuplicates()) > 0 || r.GetFirstToken() != 0 || len(r.GetGrantSizes()) > 0 || r.GetCount() != 0
	var c compactRecord
	var err error
	if version < SnapshotVersion {
		if r.GetResult() == nil || hasCompact {
			return c, fmt.Errorf("a version %d record needs a whole result and nothing else", version)
		}
		c, err = compactOf(r.GetResult(), s.cfg.Shard, false) // versions 1-2: no schedules
	} else {
		if r.GetResult() != nil {
			return c, fmt.Errorf("a whole result in a version %d snapshot", version)
		}
		c, err = compactFromProto(r)
	}
	if err != nil {
		return c, err
	}
	if c.kind == internalpb.RequestKind_REQUEST_KIND_SCHEDULE && version < snapshotVersionPipelines {
		return c, fmt.Errorf("a schedule record in a version %d snapshot", version)
	}
	if c.kind == internalpb.RequestKind_REQUEST_KIND_PIPELINE {
		if version < snapshotVersionPipelines || c.seqs[0] >= s.pipes.nextSeq {
			return c, fmt.Errorf("pipeline seq %d >= next_pipeline_seq %d (snapshot version %d)", c.seqs[0], s.pipes.nextSeq, version)
		}
		return c, nil
	}
	for _, seq := range c.seqs {
		if seq >= s.nextSeq {
			return c, fmt.Errorf("job seq %d >= next_seq %d", seq, s.nextSeq)
		}
	}
	if c.firstToken != 0 {
		if last := c.firstToken + uint64(len(c.seqs)) - 1; last < c.firstToken || last > s.nextToken {
			return c, fmt.Errorf("lease tokens %d.. (%d) beyond next_token %d", c.firstToken, len(c.seqs), s.nextToken)
		}
	}
	return c, nil
}

// isDelayed tells, from replicated fields alone, whether a PENDING job is
// waiting for a PromoteDelayed: only jobs submitted with a delay or
// retried after a failed attempt (backoff >= 1 ms) are ever delayed, and a
// delayed job is promoted by the first PromoteDelayed whose now >= ready_at.
// Replicated time is monotone, so ready_at > last promote time <=> not yet
// promoted.
func isDelayed(j *hodeiv1.Job, lastPromoteMs int64) bool {
	return (j.GetAttempts() > 0 || j.GetSpec().GetDelayMs() > 0) && j.GetReadyAtMs() > lastPromoteMs
}
