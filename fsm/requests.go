package fsm

import (
	"fmt"
	"strconv"
	"strings"
	"unicode/utf8"

	"google.golang.org/protobuf/encoding/protowire"
	"google.golang.org/protobuf/proto"

	"github.com/hodei-io/hodei/proto/hodeiv1"
	"github.com/hodei-io/hodei/proto/internalpb"
)

// The request table remembers, by client request id, what a retry of a
// command needs to get the first answer again: not the whole
// CommandResult (job copies with their specs, up to 64 KiB of output per
// completion), but a compact record of it — codes, job sequence numbers,
// lease tokens — from which replay rebuilds the answer out of the jobs'
// current state. A record is about 135 bytes in memory for a single-job
// submit with a 35-byte request id (BenchmarkRequestRecordBytes), and a
// few bytes more per further job of its command, so the window is the
// retention time (Config.RequestRetentionMs) at any realistic rate and
// Config.MaxRequests is only a memory backstop.
//
// What a rebuilt answer holds, by record kind (RequestKind):
//
//   - an error (any command whose code is not OK): the code and the
//     message, byte for byte the first answer (for any command decoded
//     from the log: see validUTF8).
//   - SUBMIT: one SubmitJobResponse per spec, in order, with the duplicate
//     flag of the first answer and a copy of the job as it is now, or
//     Job{id} if it has been garbage-collected since; a spec refused by a
//     tenant limit (issue 11 quota) gets the code and reason of its
//     refusal, kept like an EXTEND refusal.
//   - LEASE and LEASE_BATCH: the leases of the first answer that are still
//     valid — the job is RUNNING under the token it was granted — with the
//     job as it is now, the expiry of the lease now and as ttl_ms the time
//     left on it (at least 1 ms); a lease that has since been completed,
//     expired or cancelled is left out. LEASE_BATCH has one LeaseGrant per
//     demand, as the first answer.
//   - JOB (CancelJob, CompleteJob): the job as it is now (or Job{id}).
//   - EXTEND: per lease, ok and the refusal reason of the first answer;
//     expires_at_ms of an accepted one is the lease's expiry now if the job
//     is still RUNNING under that token, else 0.
//   - COMPLETE_JOBS: per completion, ok, or the code and reason of the
//     refusal, of the first answer; the state of an accepted one is the
//     job's state now (UNSPECIFIED once it has been garbage-collected).
//   - COUNT (ExpireLeases, PromoteDelayed, GCJobs): the count.
//   - EMPTY (Checkpoint, SetTenantWeight, and any OK result with nothing in
//     it, such as a lease that granted nothing): an empty result.
//
// So the fields that may differ from the first answer are the jobs'
// states (a job copy, a lease's expiry and ttl, a completion's state) and
// the leases that are no longer valid. That is what a retrying client
// needs: it retries because it did not learn the outcome, and what it
// acts on is the outcome as it stands — a worker must not start a job
// whose lease has ended, and a lease's time left, not its first TTL, is
// how long it has; a submitter wants the job it created, whatever that
// job did since. What made the outcome (which jobs, which tokens, whether
// a spec was a duplicate, why an item was refused) is kept exactly.
//
// Fields that echo the request — a grant's worker_id, the job_id of an
// extend or completion item and a completion's token — are taken from the
// retried command, which a retry repeats; were a client to reuse a
// request id for a different command, the echo falls back to what the
// record knows (the job id of an accepted item, else empty). Either way
// the answer is a function of replicated state and the command alone, so
// every replica gives the same one.

// reqRecord is one remembered request: 32 bytes, and one allocation that
// holds the request id and the compact record.
type reqRecord struct {
	buf   string // the request id, then RequestRecord fields 4-11 wire-encoded (encodeCompact)
	at    int64  // now_ms of the entry that applied the command
	idLen uint32
}

func newReqRecord(id string, at int64, c *compactRecord) reqRecord {
	return reqRecord{buf: encodeCompact(id, c), at: at, idLen: uint32(len(id))}
}

// id is the client's request id.
func (r *reqRecord) id() string { return r.buf[:r.idLen] }

// data is the compact record, as RequestRecord fields 4-11.
func (r *reqRecord) data() string { return r.buf[r.idLen:] }

// kind is the record's kind (the first field encodeCompact writes).
func (r *reqRecord) kind() internalpb.RequestKind {
	d := []byte(r.data())
	if num, typ, n := protowire.ConsumeTag(d); n > 0 && num == recFieldKind && typ == protowire.VarintType {
		if v, m := protowire.ConsumeVarint(d[n:]); m > 0 {
			return internalpb.RequestKind(v)
		}
	}
	return internalpb.RequestKind_REQUEST_KIND_UNSPECIFIED
}

// requestTable holds the records in insertion order, which is also at_ms
// order since replicated time is monotone; eviction takes the oldest. The
// records are in a ring buffer (no pointer per record) and the map holds
// each id's serial number: the i-th oldest record has serial first+i.
type requestTable struct {
	byID  map[string]uint64
	ring  []reqRecord // ring[(head+i)%len(ring)] is the i-th oldest
	head  int
	n     int
	first uint64 // serial of the oldest record
}

// minRing is the smallest ring the table shrinks to.
const minRing = 1024

func newRequestTable() requestTable {
	return requestTable{byID: make(map[string]uint64)}
}

func (t *requestTable) len() int { return t.n }

func (t *requestTable) at(i int) *reqRecord { return &t.ring[(t.head+i)%len(t.ring)] }

func (t *requestTable) get(id string) (*reqRecord, bool) {
	sr, ok := t.byID[id]
	if !ok {
		return nil, false
	}
	return t.at(int(sr - t.first)), true
}

// put adds a record for an id the table does not hold, evicting the
// oldest records so that at most limit remain.
func (t *requestTable) put(rec reqRecord, limit int) {
	for t.n > 0 && t.n >= limit {
		t.popFront()
	}
	if t.n == len(t.ring) {
		c := 2 * len(t.ring)
		if c < 16 {
			c = 16
		}
		if c > limit && limit > t.n {
			c = limit
		}
		t.resize(c, false)
	}
	*t.at(t.n) = rec
	t.byID[rec.id()] = t.first + uint64(t.n)
	t.n++
}

func (t *requestTable) popFront() {
	r := t.at(0)
	delete(t.byID, r.id())
	*r = reqRecord{}
	t.head = (t.head + 1) % len(t.ring)
	t.first++
	t.n--
	// Give memory back once the table is far below its peak: a Go map
	// never shrinks, so the map is rebuilt with the ring.
	if len(t.ring) > minRing && t.n < len(t.ring)/4 {
		t.resize(max(2*t.n, minRing), true)
	}
}

// resize moves the records, oldest first, to a ring of size c >= n; with
// rehash it also rebuilds the map (in ring order).
func (t *requestTable) resize(c int, rehash bool) {
	ring := make([]reqRecord, c)
	for i := 0; i < t.n; i++ {
		ring[i] = *t.at(i)
	}
	t.ring, t.head = ring, 0
	if rehash {
		t.byID = make(map[string]uint64, t.n)
		for i := 0; i < t.n; i++ {
			t.byID[ring[i].id()] = t.first + uint64(i)
		}
	}
}

// evict drops records older than the retention window relative to now.
func (t *requestTable) evict(now int64, cfg Config) {
	cutoff := now - cfg.RequestRetentionMs
	for t.n > 0 && t.at(0).at < cutoff {
		t.popFront()
	}
}

// each calls fn for every record, oldest first.
func (t *requestTable) each(fn func(*reqRecord)) {
	for i := 0; i < t.n; i++ {
		fn(t.at(i))
	}
}

// compactRecord is a decoded compact record (RequestRecord fields 4-11).
type compactRecord struct {
	kind       internalpb.RequestKind // UNSPECIFIED for an error
	code       internalpb.Code
	msg        string    // the error message (code not OK)
	seqs       []uint64  // the jobs, in result order (EXTEND, COMPLETE_JOBS: of the accepted items)
	dups       []byte    // SUBMIT: bit i set = spec i matched an existing job; no trailing zero bytes
	firstToken uint64    // LEASE, LEASE_BATCH: token of the first lease; the others follow it
	sizes      []uint32  // LEASE_BATCH: leases per demand
	count      uint32    // COUNT
	refused    []refusal // EXTEND, COMPLETE_JOBS: the refused items, by index
}

// refusal is a refused item of an ExtendLeases or CompleteJobs. Code is
// empty for an extend (ExtendResult has only a reason).
type refusal struct {
	item         uint32
	code, reason string
}

// items is the number of items of an EXTEND or COMPLETE_JOBS record.
func (c *compactRecord) items() int { return len(c.seqs) + len(c.refused) }

// compactOf makes the compact record of a command's result. It looks at
// the result alone (not the command), so that a record converted from an
// old snapshot's full result is the one the live path made.
//
// schedules says whether a schedule result is recorded as such
// (REQUEST_KIND_SCHEDULE, entries of version >= 5); in older entries it was
// recorded as EMPTY, and replaying those must make the same record.
func compactOf(r *internalpb.CommandResult, shard uint32, schedules bool) (compactRecord, error) {
	var c compactRecord
	if !schedules && r.GetSchedule() != nil {
		r = &internalpb.CommandResult{Code: r.GetCode(), Message: r.GetMessage(), Count: r.GetCount()}
	}
	set := 0
	for _, has := range []bool{len(r.GetSubmitted()) > 0, r.GetJob() != nil, len(r.GetLeases()) > 0,
		len(r.GetExtended()) > 0, r.GetCount() != 0, len(r.GetGrants()) > 0, len(r.GetCompleted()) > 0, r.GetPipeline() != nil,
		r.GetSchedule() != nil} {
		if has {
			set++
		}
	}
	if r.GetCode() != internalpb.Code_CODE_OK {
		if set > 0 {
			return c, fmt.Errorf("a %v result carries more than a code and a message", r.GetCode())
		}
		c.code, c.msg = r.GetCode(), validUTF8(r.GetMessage())
		return c, nil
	}
	if set > 1 || r.GetMessage() != "" {
		return c, fmt.Errorf("an OK result with %d kinds of content and message %q", set, r.GetMessage())
	}
	jobSeq := func(j *hodeiv1.Job) (uint64, error) {
		if j.GetSeq() == 0 {
			return 0, fmt.Errorf("job %q without a sequence number", j.GetId())
		}
		return j.GetSeq(), nil
	}
	itemSeq := func(id string) (uint64, error) {
		sh, seq, err := ParseJobID(id)
		if err != nil || sh != shard {
			return 0, fmt.Errorf("accepted item of job %q, not a job of shard %d", id, shard)
		}
		return seq, nil
	}
	// addLeases appends the leases' jobs, checking that their tokens are
	// consecutive (grant hands out nextToken+1, +2, ... in order).
	addLeases := func(ls []*hodeiv1.Lease) error {
		for _, l := range ls {
			seq, err := jobSeq(l.GetJob())
			if err != nil {
				return err
			}
			if len(c.seqs) == 0 {
				if l.GetToken() == 0 {
					return fmt.Errorf("lease of job %s has token 0", l.GetJob().GetId())
				}
				c.firstToken = l.GetToken()
			} else if want := c.firstToken + uint64(len(c.seqs)); l.GetToken() != want {
				return fmt.Errorf("lease tokens are not consecutive: %d where %d follows", l.GetToken(), want)
			}
			c.seqs = append(c.seqs, seq)
		}
		return nil
	}
	// addSubmitted appends submit answers: a job (its seq, and the
	// duplicate bit), or a refusal (a tenant limit refused it: no job).
	addSubmitted := func(items []*hodeiv1.SubmitJobResponse) error {
		c.seqs = make([]uint64, 0, len(items))
		for i, sr := range items {
			if sr.GetCode() != "" {
				c.refused = append(c.refused, refusal{item: uint32(i), code: validUTF8(sr.GetCode()), reason: validUTF8(sr.GetReason())})
				continue
			}
			seq, err := jobSeq(sr.GetJob())
			if err != nil {
				return err
			}
			c.seqs = append(c.seqs, seq)
			if sr.GetDuplicate() {
				for len(c.dups) <= i/8 {
					c.dups = append(c.dups, 0)
				}
				c.dups[i/8] |= 1 << (i % 8)
			}
		}
		return nil
	}
	switch {
	case len(r.GetSubmitted()) > 0:
		c.kind = internalpb.RequestKind_REQUEST_KIND_SUBMIT
		if err := addSubmitted(r.GetSubmitted()); err != nil {
			return c, err
		}
	case len(r.GetLeases()) > 0:
		c.kind = internalpb.RequestKind_REQUEST_KIND_LEASE
		if err := addLeases(r.GetLeases()); err != nil {
			return c, err
		}
	case len(r.GetGrants()) > 0:
		c.kind = internalpb.RequestKind_REQUEST_KIND_LEASE_BATCH
		c.sizes = make([]uint32, len(r.GetGrants()))
		for i, g := range r.GetGrants() {
			c.sizes[i] = uint32(len(g.GetLeases()))
			if err := addLeases(g.GetLeases()); err != nil {
				return c, err
			}
		}
	case r.GetJob() != nil:
		c.kind = internalpb.RequestKind_REQUEST_KIND_JOB
		seq, err := jobSeq(r.GetJob())
		if err != nil {
			return c, err
		}
		c.seqs = []uint64{seq}
	case len(r.GetExtended()) > 0:
		c.kind = internalpb.RequestKind_REQUEST_KIND_EXTEND
		for i, e := range r.GetExtended() {
			if !e.GetOk() {
				c.refused = append(c.refused, refusal{item: uint32(i), reason: validUTF8(e.GetReason())})
				continue
			}
			seq, err := itemSeq(e.GetJobId())
			if err != nil {
				return c, err
			}
			c.seqs = append(c.seqs, seq)
		}
	case len(r.GetCompleted()) > 0:
		c.kind = internalpb.RequestKind_REQUEST_KIND_COMPLETE_JOBS
		for i, e := range r.GetCompleted() {
			if !e.GetOk() {
				c.refused = append(c.refused, refusal{item: uint32(i), code: validUTF8(e.GetCode()), reason: validUTF8(e.GetReason())})
				continue
			}
			seq, err := itemSeq(e.GetJobId())
			if err != nil {
				return c, err
			}
			c.seqs = append(c.seqs, seq)
		}
	case r.GetSchedule() != nil:
		// cron: the schedule is rebuilt from the command; the jobs of a
		// trigger or backfill are kept, each slot that made none (a quota
		// refused it) as a refusal.
		c.kind = internalpb.RequestKind_REQUEST_KIND_SCHEDULE
		if err := addSubmitted(r.GetScheduleJobs()); err != nil {
			return c, err
		}
	case r.GetCount() != 0:
		c.kind, c.count = internalpb.RequestKind_REQUEST_KIND_COUNT, r.GetCount()
	case r.GetPipeline() != nil:
		// pipelines (issue 13): the pipeline's seq, not a job's.
		if r.GetPipeline().GetSeq() == 0 {
			return c, fmt.Errorf("pipeline %q without a sequence number", r.GetPipeline().GetId())
		}
		c.kind, c.seqs = internalpb.RequestKind_REQUEST_KIND_PIPELINE, []uint64{r.GetPipeline().GetSeq()}
	default:
		c.kind = internalpb.RequestKind_REQUEST_KIND_EMPTY
	}
	return c, nil
}

// validUTF8 is s, with any invalid UTF-8 replaced. Messages and reasons
// quote the command's strings, which are valid UTF-8 in any entry that was
// decoded from the log (proto3 strings are checked there); a command built
// in memory could carry invalid bytes, and a record that proto.Unmarshal
// rejects would fail the replay and the snapshot's restore.
func validUTF8(s string) string {
	if utf8.ValidString(s) {
		return s
	}
	return strings.ToValidUTF8(s, "\uFFFD")
}

// Wire field numbers of RequestRecord.
const (
	recFieldID         = 1
	recFieldAt         = 2
	recFieldKind       = 4
	recFieldCode       = 5
	recFieldMessage    = 6
	recFieldSeqs       = 7
	recFieldDuplicates = 8
	recFieldFirstToken = 9
	recFieldGrantSizes = 10
	recFieldCount      = 11
)

// encodeCompact is prefix followed by the protobuf encoding of c as
// RequestRecord fields 4-11, in field order, as proto.Marshal writes it:
//
//   - seqs: each sequence number as the zigzag varint of its difference
//     from the previous one (the first from 0);
//   - message: for an error, the error message; for EXTEND,
//     COMPLETE_JOBS and SUBMIT, the refused items (RequestRecord has no field of its
//     own for them), each written as
//     "<item>,<len(code)>:<code><len(reason)>:<reason>" with decimal
//     numbers, in item order; empty otherwise.
func encodeCompact(prefix string, c *compactRecord) string {
	msg := c.msg
	if len(c.refused) > 0 {
		msg = string(appendRefusals(nil, c.refused))
	}
	seqLen, prev := 0, uint64(0)
	for _, s := range c.seqs {
		seqLen += protowire.SizeVarint(protowire.EncodeZigZag(int64(s - prev)))
		prev = s
	}
	sizeLen := 0
	for _, n := range c.sizes {
		sizeLen += protowire.SizeVarint(uint64(n))
	}
	b := make([]byte, 0, len(prefix)+24+len(msg)+seqLen+len(c.dups)+sizeLen)
	b = append(b, prefix...)
	b = appendVarintField(b, recFieldKind, uint64(c.kind))
	b = appendVarintField(b, recFieldCode, uint64(c.code))
	if msg != "" {
		b = protowire.AppendTag(b, recFieldMessage, protowire.BytesType)
		b = protowire.AppendString(b, msg)
	}
	if len(c.seqs) > 0 {
		b = protowire.AppendTag(b, recFieldSeqs, protowire.BytesType)
		b = protowire.AppendVarint(b, uint64(seqLen))
		prev = 0
		for _, s := range c.seqs {
			b = protowire.AppendVarint(b, protowire.EncodeZigZag(int64(s-prev)))
			prev = s
		}
	}
	if len(c.dups) > 0 {
		b = protowire.AppendTag(b, recFieldDuplicates, protowire.BytesType)
		b = protowire.AppendBytes(b, c.dups)
	}
	b = appendVarintField(b, recFieldFirstToken, c.firstToken)
	if len(c.sizes) > 0 {
		b = protowire.AppendTag(b, recFieldGrantSizes, protowire.BytesType)
		b = protowire.AppendVarint(b, uint64(sizeLen))
		for _, n := range c.sizes {
			b = protowire.AppendVarint(b, uint64(n))
		}
	}
	b = appendVarintField(b, recFieldCount, uint64(c.count))
	return string(b)
}

// appendVarintField appends a varint field unless v is 0 (proto3 default).
func appendVarintField(b []byte, num protowire.Number, v uint64) []byte {
	if v == 0 {
		return b
	}
	b = protowire.AppendTag(b, num, protowire.VarintType)
	return protowire.AppendVarint(b, v)
}

// appendRecord appends the encoding of a whole RequestRecord (as
// proto.Marshal writes it: fields in number order) for the snapshot.
func appendRecord(b []byte, r *reqRecord) []byte {
	b = protowire.AppendTag(b, recFieldID, protowire.BytesType)
	b = protowire.AppendString(b, r.id())
	b = appendVarintField(b, recFieldAt, uint64(r.at))
	return append(b, r.data()...)
}

func appendRefusals(b []byte, rs []refusal) []byte {
	for _, r := range rs {
		b = strconv.AppendUint(b, uint64(r.item), 10)
		b = append(b, ',')
		b = strconv.AppendInt(b, int64(len(r.code)), 10)
		b = append(b, ':')
		b = append(b, r.code...)
		b = strconv.AppendInt(b, int64(len(r.reason)), 10)
		b = append(b, ':')
		b = append(b, r.reason...)
	}
	return b
}

// parseRefusals reads what appendRefusals wrote (canonically: items
// increasing, numbers without leading zeros).
func parseRefusals(s string) ([]refusal, error) {
	num := func(end byte) (uint64, error) {
		i := 0
		for i < len(s) && s[i] != end {
			i++
		}
		if i == len(s) || !canonicalUint(s[:i]) {
			return 0, fmt.Errorf("bad number in refusals")
		}
		v, err := strconv.ParseUint(s[:i], 10, 32)
		if err != nil {
			return 0, fmt.Errorf("bad number in refusals: %v", err)
		}
		s = s[i+1:]
		return v, nil
	}
	str := func() (string, error) {
		n, err := num(':')
		if err != nil {
			return "", err
		}
		if n > uint64(len(s)) {
			return "", fmt.Errorf("refusal string of %d bytes in %d", n, len(s))
		}
		v := s[:n]
		s = s[n:]
		return v, nil
	}
	var out []refusal
	for s != "" {
		item, err := num(',')
		if err != nil {
			return nil, err
		}
		if len(out) > 0 && item <= uint64(out[len(out)-1].item) {
			return nil, fmt.Errorf("refused items out of order")
		}
		code, err := str()
		if err != nil {
			return nil, err
		}
		reason, err := str()
		if err != nil {
			return nil, err
		}
		out = append(out, refusal{item: uint32(item), code: code, reason: reason})
	}
	return out, nil
}

// compactFromProto decodes and checks the compact fields of m (4-11).
func compactFromProto(m *internalpb.RequestRecord) (compactRecord, error) {
	c := compactRecord{kind: m.GetKind(), code: m.GetCode(), dups: m.GetDuplicates(),
		firstToken: m.GetFirstToken(), sizes: m.GetGrantSizes(), count: m.GetCount()}
	for b := m.GetSeqs(); len(b) > 0; {
		v, n := protowire.ConsumeVarint(b)
		if n < 0 {
			return c, fmt.Errorf("bad seqs")
		}
		b = b[n:]
		prev := uint64(0)
		if len(c.seqs) > 0 {
			prev = c.seqs[len(c.seqs)-1]
		}
		s := prev + uint64(protowire.DecodeZigZag(v))
		if s == 0 {
			return c, fmt.Errorf("job sequence number 0")
		}
		c.seqs = append(c.seqs, s)
	}
	n := len(c.seqs)
	bad := func(what string) (compactRecord, error) {
		return c, fmt.Errorf("%v record (code %v): %s", c.kind, c.code, what)
	}
	if c.code != internalpb.Code_CODE_OK {
		if c.kind != internalpb.RequestKind_REQUEST_KIND_UNSPECIFIED || n > 0 || len(c.dups) > 0 || c.firstToken != 0 || len(c.sizes) > 0 || c.count != 0 {
			return bad("an error with more than a code and a message")
		}
		c.msg = m.GetMessage()
		return c, nil
	}
	if k := c.kind; k != internalpb.RequestKind_REQUEST_KIND_EXTEND && k != internalpb.RequestKind_REQUEST_KIND_COMPLETE_JOBS && k != internalpb.RequestKind_REQUEST_KIND_SUBMIT && k != internalpb.RequestKind_REQUEST_KIND_SCHEDULE && m.GetMessage() != "" {
		return bad("a message")
	}
	if c.kind != internalpb.RequestKind_REQUEST_KIND_SUBMIT && c.kind != internalpb.RequestKind_REQUEST_KIND_SCHEDULE && len(c.dups) > 0 {
		return bad("a duplicates bitmap")
	}
	lease := c.kind == internalpb.RequestKind_REQUEST_KIND_LEASE || c.kind == internalpb.RequestKind_REQUEST_KIND_LEASE_BATCH
	if !lease && c.firstToken != 0 {
		return bad("a token")
	}
	if c.kind != internalpb.RequestKind_REQUEST_KIND_LEASE_BATCH && len(c.sizes) > 0 {
		return bad("grant sizes")
	}
	if c.kind != internalpb.RequestKind_REQUEST_KIND_COUNT && c.count != 0 {
		return bad("a count")
	}
	switch c.kind {
	case internalpb.RequestKind_REQUEST_KIND_SUBMIT, internalpb.RequestKind_REQUEST_KIND_SCHEDULE:
		// Refused specs (quota, issue 11) are in the message, as for
		// EXTEND; the bitmap is over all items. A submit has at least one
		// item; a schedule write has the jobs its trigger or backfill made
		// (none for the others).
		rs, err := parseRefusals(m.GetMessage())
		if err != nil {
			return bad(err.Error())
		}
		c.refused = rs
		n = c.items()
		if len(rs) > 0 && int(rs[len(rs)-1].item) >= n {
			return bad("refused items out of range")
		}
		if (n == 0 && c.kind == internalpb.RequestKind_REQUEST_KIND_SUBMIT) || len(c.dups) > (n+7)/8 {
			return bad("no job, or a bitmap longer than the jobs")
		}
		if k := len(c.dups); k > 0 {
			last, bits := c.dups[k-1], n-8*(k-1) // bits of the last byte that are items
			if last == 0 || (bits < 8 && last>>bits != 0) {
				return bad("a bitmap with trailing zeros or bits beyond the jobs")
			}
		}
	case internalpb.RequestKind_REQUEST_KIND_LEASE:
		if n == 0 || c.firstToken == 0 || c.firstToken+uint64(n)-1 < c.firstToken {
			return bad("no lease or a bad token")
		}
	case internalpb.RequestKind_REQUEST_KIND_LEASE_BATCH:
		total := uint64(0)
		for _, s := range c.sizes {
			total += uint64(s)
		}
		if len(c.sizes) == 0 || total != uint64(n) {
			return bad("grant sizes do not match the leases")
		}
		if (n == 0) != (c.firstToken == 0) || (n > 0 && c.firstToken+uint64(n)-1 < c.firstToken) {
			return bad("a bad token")
		}
	case internalpb.RequestKind_REQUEST_KIND_JOB:
		if n != 1 {
			return bad("not one job")
		}
	case internalpb.RequestKind_REQUEST_KIND_PIPELINE:
		if n != 1 {
			return bad("not one pipeline")
		}
	case internalpb.RequestKind_REQUEST_KIND_EXTEND, internalpb.RequestKind_REQUEST_KIND_COMPLETE_JOBS:
		rs, err := parseRefusals(m.GetMessage())
		if err != nil {
			return bad(err.Error())
		}
		c.refused = rs
		if c.items() == 0 || (len(rs) > 0 && int(rs[len(rs)-1].item) >= c.items()) {
			return bad("refused items out of range")
		}
		if c.kind == internalpb.RequestKind_REQUEST_KIND_EXTEND {
			for _, r := range rs {
				if r.code != "" {
					return bad("a code in an extend refusal")
				}
			}
		}
	case internalpb.RequestKind_REQUEST_KIND_COUNT:
		if c.count == 0 {
			return bad("count 0")
		}
	case internalpb.RequestKind_REQUEST_KIND_EMPTY:
		if n > 0 {
			return bad("jobs")
		}
	default:
		return bad("unknown kind")
	}
	return c, nil
}

// requestRecord makes the record of a command's first result r. The
// result is one this binary's apply code produced, so a result it cannot
// represent (tokens of one lease not consecutive, an error result with
// content) is an impossible internal state.
func (s *state) requestRecord(id string, at int64, r *internalpb.CommandResult) reqRecord {
	c, err := compactOf(r, s.cfg.Shard, s.curVersion >= EntryVersionPipelines)
	if err != nil {
		panic(fmt.Sprintf("fsm: request record %q: %v", id, err))
	}
	return newReqRecord(id, at, &c)
}

// replay rebuilds the answer to a retry of cmd from its record (see the
// comment at the top of this file for what may differ from the first
// answer). It changes nothing.
func (s *state) replay(rec *reqRecord, cmd *internalpb.Command, now int64) *internalpb.CommandResult {
	m := &internalpb.RequestRecord{}
	err := proto.Unmarshal([]byte(rec.data()), m)
	var c compactRecord
	if err == nil {
		c, err = compactFromProto(m)
	}
	if err != nil {
		panic(fmt.Sprintf("fsm: request record %q: %v", rec.id(), err))
	}
	out := &internalpb.CommandResult{Code: c.code, Message: c.msg}
	switch c.kind {
	case internalpb.RequestKind_REQUEST_KIND_SUBMIT:
		out.Submitted = s.submittedNow(&c)
	case internalpb.RequestKind_REQUEST_KIND_LEASE:
		out.Leases = s.validLeases(c.seqs, c.firstToken, now)
	case internalpb.RequestKind_REQUEST_KIND_LEASE_BATCH:
		demands := cmd.GetLeaseBatch().GetDemands()
		out.Grants = make([]*hodeiv1.LeaseGrant, len(c.sizes))
		off := 0
		for i, n := range c.sizes {
			g := &hodeiv1.LeaseGrant{Leases: s.validLeases(c.seqs[off:off+int(n)], c.firstToken+uint64(off), now)}
			if i < len(demands) {
				g.WorkerId = demands[i].GetWorkerId()
			}
			out.Grants[i] = g
			off += int(n)
		}
	case internalpb.RequestKind_REQUEST_KIND_JOB:
		out.Job = s.jobNow(c.seqs[0])
	case internalpb.RequestKind_REQUEST_KIND_SCHEDULE:
		// The schedule as it is now (nil once deleted), and the jobs the
		// first answer had, as they are now.
		tenant, id := scheduleOfCommand(cmd)
		if e := s.schedules[schedKey(tenant, id)]; e != nil {
			out.Schedule = cloneSchedule(e.sc)
		}
		if c.items() > 0 {
			out.ScheduleJobs = s.submittedNow(&c)
		}
	case internalpb.RequestKind_REQUEST_KIND_PIPELINE:
		// The pipeline as it is now (nil once GC removed it).
		if p := s.pipes.bySeq[c.seqs[0]]; p != nil {
			out.Pipeline = s.pipelineView(p, true, false)
		}
	case internalpb.RequestKind_REQUEST_KIND_EXTEND:
		refs := cmd.GetExtend().GetLeases()
		out.Extended = make([]*hodeiv1.ExtendResult, c.items())
		s.eachItem(&c, func(i int, seq uint64, ref *refusal) {
			r := &hodeiv1.ExtendResult{}
			if i < len(refs) {
				r.JobId = refs[i].GetJobId()
			}
			if ref != nil {
				r.Reason = ref.reason
			} else {
				r.Ok = true
				if r.JobId == "" {
					r.JobId = FormatJobID(s.cfg.Shard, seq)
				}
				if j := s.jobs[seq]; j != nil && i < len(refs) && j.GetState() == hodeiv1.JobState_JOB_STATE_RUNNING && j.GetLeaseToken() == refs[i].GetToken() {
					r.ExpiresAtMs = j.GetLeaseExpiresAtMs()
				}
			}
			out.Extended[i] = r
		})
	case internalpb.RequestKind_REQUEST_KIND_COMPLETE_JOBS:
		items := cmd.GetCompleteJobs().GetItems()
		out.Completed = make([]*hodeiv1.CompletionResult, c.items())
		s.eachItem(&c, func(i int, seq uint64, ref *refusal) {
			r := &hodeiv1.CompletionResult{}
			if i < len(items) {
				r.JobId, r.Token = items[i].GetJobId(), items[i].GetToken()
			}
			if ref != nil {
				r.Code, r.Reason = ref.code, ref.reason
			} else {
				r.Ok = true
				if r.JobId == "" {
					r.JobId = FormatJobID(s.cfg.Shard, seq)
				}
				if j := s.jobs[seq]; j != nil {
					r.State = j.GetState()
				}
			}
			out.Completed[i] = r
		})
	case internalpb.RequestKind_REQUEST_KIND_COUNT:
		out.Count = c.count
	}
	return out
}

// eachItem calls fn for every item of an EXTEND or COMPLETE_JOBS record in
// order: with the job of an accepted item, or with the refusal.
func (s *state) eachItem(c *compactRecord, fn func(i int, seq uint64, r *refusal)) {
	next, k := 0, 0
	for i := 0; i < c.items(); i++ {
		if k < len(c.refused) && int(c.refused[k].item) == i {
			fn(i, 0, &c.refused[k])
			k++
			continue
		}
		fn(i, c.seqs[next], nil)
		next++
	}
}

// submittedNow rebuilds the submit answers of a SUBMIT or SCHEDULE record:
// each job as it is now (with its duplicate bit), or the refusal.
func (s *state) submittedNow(c *compactRecord) []*hodeiv1.SubmitJobResponse {
	out := make([]*hodeiv1.SubmitJobResponse, c.items())
	s.eachItem(c, func(i int, seq uint64, ref *refusal) {
		if ref != nil {
			out[i] = &hodeiv1.SubmitJobResponse{Code: ref.code, Reason: ref.reason}
			return
		}
		dup := i/8 < len(c.dups) && c.dups[i/8]&(1<<(i%8)) != 0
		out[i] = &hodeiv1.SubmitJobResponse{Job: s.jobNow(seq), Duplicate: dup}
	})
	return out
}

// jobNow is a copy of job seq as it is now, or Job{id} if it is gone.
func (s *state) jobNow(seq uint64) *hodeiv1.Job {
	if j := s.jobs[seq]; j != nil {
		return cloneJob(j)
	}
	return &hodeiv1.Job{Id: FormatJobID(s.cfg.Shard, seq)}
}

// validLeases is the leases of jobs seqs, granted with tokens first,
// first+1, ..., that are still valid now.
func (s *state) validLeases(seqs []uint64, first uint64, now int64) []*hodeiv1.Lease {
	var out []*hodeiv1.Lease
	for i, seq := range seqs {
		tok := first + uint64(i)
		j := s.jobs[seq]
		if j == nil || j.GetState() != hodeiv1.JobState_JOB_STATE_RUNNING || j.GetLeaseToken() != tok {
			continue
		}
		left := j.GetLeaseExpiresAtMs() - now
		if left < 1 {
			left = 1
		}
		out = append(out, &hodeiv1.Lease{Job: cloneJob(j), Token: tok, ExpiresAtMs: j.GetLeaseExpiresAtMs(), TtlMs: left})
	}
	return out
}
