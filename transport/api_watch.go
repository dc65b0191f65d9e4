package transport

import (
	"encoding/base64"
	"encoding/binary"
	"errors"
	"fmt"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/hodei-io/hodei/proto/hodeiv1"
)

// Watch errors a WatchBackend returns; WatchJobs maps them to gRPC codes.
var (
	// ErrWatchResync: the events after the requested position are no
	// longer held by this node (retention, a snapshot install, or a
	// subscriber that fell behind). OUT_OF_RANGE.
	ErrWatchResync = errors.New("watch: the events after this cursor are no longer retained by this node; resync: list the jobs, then watch from now")
	// ErrWatchCursor: the cursor cannot be from this cluster (a position
	// ahead of the shard's log). INVALID_ARGUMENT.
	ErrWatchCursor = errors.New("watch: bad cursor")
)

// WatchPos is a watcher's position in one shard's event sequence: every
// event of the entries before Index and the first N events of entry Index
// have been seen. An event at (index i, position p) comes after the
// position iff (i, p) >= (Index, N); once seen, the position becomes
// (i, p+1). The position after the whole entry i is (i+1, 0).
type WatchPos struct {
	Index uint64
	N     uint32
}

// Less orders positions by (Index, N).
func (p WatchPos) Less(q WatchPos) bool {
	return p.Index < q.Index || (p.Index == q.Index && p.N < q.N)
}

// WatchCursor is a position per shard of a cluster with len(Pos) shards.
// Every replica of a shard applies the same log and produces the same
// events in the same order, so a cursor means the same on every node.
type WatchCursor struct {
	Pos []WatchPos // by shard id
}

// cursorVersion is the first byte of an encoded cursor.
const cursorVersion = 1

// maxCursorShards bounds a decoded cursor (a cluster has far fewer shards).
const maxCursorShards = 4096

// Encode returns the cursor's opaque string: unpadded base64url of
// [version=1][uvarint shard count][per shard: uvarint index, uvarint n].
func (c WatchCursor) Encode() string {
	buf := make([]byte, 0, 2+len(c.Pos)*6)
	buf = append(buf, cursorVersion)
	buf = binary.AppendUvarint(buf, uint64(len(c.Pos)))
	for _, p := range c.Pos {
		buf = binary.AppendUvarint(buf, p.Index)
		buf = binary.AppendUvarint(buf, uint64(p.N))
	}
	return base64.RawURLEncoding.EncodeToString(buf)
}

// ParseWatchCursor decodes an encoded cursor; errors say what is wrong.
func ParseWatchCursor(s string) (WatchCursor, error) {
	b, err := base64.RawURLEncoding.DecodeString(s)
	if err != nil || len(b) < 2 {
		return WatchCursor{}, fmt.Errorf("cursor %q is not a watch cursor", s)
	}
	if b[0] != cursorVersion {
		return WatchCursor{}, fmt.Errorf("cursor version %d is not supported (this node reads version %d)", b[0], cursorVersion)
	}
	b = b[1:]
	n, k := binary.Uvarint(b)
	if k <= 0 || n == 0 || n > maxCursorShards {
		return WatchCursor{}, fmt.Errorf("cursor %q is not a watch cursor (bad shard count)", s)
	}
	b = b[k:]
	c := WatchCursor{Pos: make([]WatchPos, n)}
	for i := range c.Pos {
		idx, k1 := binary.Uvarint(b)
		if k1 <= 0 {
			return WatchCursor{}, fmt.Errorf("cursor %q is truncated", s)
		}
		b = b[k1:]
		pos, k2 := binary.Uvarint(b)
		if k2 <= 0 || pos > 1<<32-1 {
			return WatchCursor{}, fmt.Errorf("cursor %q is truncated", s)
		}
		b = b[k2:]
		c.Pos[i] = WatchPos{Index: idx, N: uint32(pos)}
	}
	if len(b) != 0 {
		return WatchCursor{}, fmt.Errorf("cursor %q has %d trailing bytes", s, len(b))
	}
	return c, nil
}

// WatchFilter selects events; an empty field matches everything. Kind
// "shell" also matches command jobs (kind "").
type WatchFilter struct {
	Tenant, JobID, Kind string
}

// Match reports whether e passes the filter.
func (f WatchFilter) Match(e *WatchEvent) bool {
	if f.Tenant != "" && e.Tenant != f.Tenant {
		return false
	}
	if f.JobID != "" && e.JobID != f.JobID {
		return false
	}
	if f.Kind != "" && e.Kind != f.Kind && (f.Kind != "shell" || e.Kind != "") {
		return false
	}
	return true
}

// WatchEvent is one applied state change at (Shard, Index, Pos).
type WatchEvent struct {
	Shard  uint32
	Pos    uint32
	Index  uint64
	NowMs  int64
	JobID  string
	Tenant string
	Kind   string
	From   hodeiv1.JobState
	To     hodeiv1.JobState
}

// WatchBackend serves WatchJobs from this node's replicas (the cluster's
// event bus). The API finds it on its Backend by type assertion, so that
// backends without a watch answer UNIMPLEMENTED.
type WatchBackend interface {
	// Watch subscribes to the given shards, each from the position at the
	// same index of from, or from now when from is nil. It fails with
	// ErrWatchResync for a position older than retained and ErrWatchCursor
	// for one ahead of the shard's log.
	Watch(shards []uint32, f WatchFilter, from []WatchPos) (WatchSubscription, error)
}

// WatchSubscription is one watcher's view of the bus.
type WatchSubscription interface {
	// Poll appends the matching events available now to buf, in log order
	// per shard, and never blocks. ErrWatchResync when the subscriber fell
	// behind the retained events.
	Poll(buf []WatchEvent) ([]WatchEvent, error)
	// Wait returns true when Poll may have more, false when stop is closed
	// or timer fires first.
	Wait(stop <-chan struct{}, timer <-chan time.Time) bool
	// Positions appends the position per subscribed shard (in the order
	// given to Watch) after everything Poll returned so far.
	Positions(dst []WatchPos) []WatchPos
	Close()
}

const (
	defaultBookmarkInterval = 2 * time.Second
	minBookmarkInterval     = 100 * time.Millisecond
	maxBookmarkInterval     = 60 * time.Second
)

// WatchJobs streams this node's applied job events (WatchBackend).
func (s *jobService) WatchJobs(req *hodeiv1.WatchJobsRequest, stream hodeiv1.JobService_WatchJobsServer) error {
	wb, ok := s.a.b.(WatchBackend)
	if !ok {
		return status.Error(codes.Unimplemented, "this node does not serve watches")
	}
	shards, f, cur, interval, err := s.a.watchRequest(req)
	if err != nil {
		return err
	}
	// auth (issue 12): a named tenant needs read on it; a wildcard watch
	// sends only the events of tenants the caller may read (nomad#25089:
	// a wildcard must not bypass the check). Skipped events still move
	// the cursor, like events the filter skips.
	p := PrincipalFrom(stream.Context())
	if p != nil && p.Admin {
		p = nil
	}
	if f.Tenant != "" {
		if err := requireRead(stream.Context(), f.Tenant); err != nil {
			return err
		}
	}
	var from []WatchPos
	if req.GetCursor() != "" {
		for _, sh := range shards {
			from = append(from, cur.Pos[sh])
		}
	}
	sub, err := wb.Watch(shards, f, from)
	if err != nil {
		return watchStatus(err)
	}
	defer sub.Close()
	ctx := stream.Context()
	pos := sub.Positions(nil)
	for i, sh := range shards {
		cur.Pos[sh] = pos[i]
	}
	// The first message is a bookmark: the stream is live from its cursor.
	if err := stream.Send(&hodeiv1.WatchJobsResponse{Bookmark: true, Cursor: cur.Encode()}); err != nil {
		return err
	}
	tick := time.NewTicker(interval)
	defer tick.Stop()
	sent := false
	var buf []WatchEvent
	for {
		buf, err = sub.Poll(buf[:0])
		for i := range buf {
			e := &buf[i]
			cur.Pos[e.Shard] = WatchPos{Index: e.Index, N: e.Pos + 1}
			if p != nil && !p.CanRead(e.Tenant) {
				continue
			}
			ev := &hodeiv1.JobEvent{JobId: e.JobID, Tenant: e.Tenant, Kind: e.Kind, From: e.From, To: e.To,
				Shard: e.Shard, Index: e.Index, Position: e.Pos, TimeMs: e.NowMs}
			if req.GetIncludeJob() && e.To != hodeiv1.JobState_JOB_STATE_UNSPECIFIED {
				if j, ok := s.a.b.GetJob(e.Shard, e.JobID); ok {
					ev.Job = j
				}
			}
			if serr := stream.Send(&hodeiv1.WatchJobsResponse{Event: ev, Cursor: cur.Encode()}); serr != nil {
				return serr
			}
			sent = true
		}
		if err != nil {
			return watchStatus(err)
		}
		if len(buf) > 0 {
			continue
		}
		if !sub.Wait(ctx.Done(), tick.C) {
			if ctx.Err() != nil {
				return ToStatus(ctx.Err())
			}
			if sent {
				sent = false
				continue
			}
			pos = sub.Positions(pos[:0])
			for i, sh := range shards {
				cur.Pos[sh] = pos[i]
			}
			if err := stream.Send(&hodeiv1.WatchJobsResponse{Bookmark: true, Cursor: cur.Encode()}); err != nil {
				return err
			}
		}
	}
}

// watchRequest validates a WatchJobsRequest: the shards to watch, the
// filter, the cursor (every shard's position; zero without a cursor) and
// the bookmark interval.
func (a *API) watchRequest(req *hodeiv1.WatchJobsRequest) ([]uint32, WatchFilter, WatchCursor, time.Duration, error) {
	f := WatchFilter{Tenant: req.GetTenant(), JobID: req.GetJobId(), Kind: req.GetKind()}
	n := a.b.ShardCount()
	fail := func(format string, args ...any) ([]uint32, WatchFilter, WatchCursor, time.Duration, error) {
		return nil, f, WatchCursor{}, 0, invalid(format, args...)
	}
	if f.Tenant != "" && !validWatchName(f.Tenant, false) {
		return fail("tenant %q must match [A-Za-z0-9._-]+ (at most 128 bytes)", f.Tenant)
	}
	if f.Kind != "" && !validWatchName(f.Kind, true) {
		return fail("kind %q must match [A-Za-z0-9._:/-]+ (at most 128 bytes)", f.Kind)
	}
	var shards []uint32
	switch {
	case f.JobID != "":
		sh, err := a.b.ShardOfJob(f.JobID)
		if err != nil {
			return fail("job_id %q: %v", f.JobID, err)
		}
		if f.Tenant != "" && a.b.ShardOfTenant(f.Tenant) != sh {
			return fail("job_id %q cannot belong to tenant %q (their shards differ): the filter matches nothing", f.JobID, f.Tenant)
		}
		shards = []uint32{sh}
	case f.Tenant != "":
		shards = []uint32{a.b.ShardOfTenant(f.Tenant)}
	default:
		for i := range n {
			shards = append(shards, uint32(i))
		}
	}
	cur := WatchCursor{Pos: make([]WatchPos, n)}
	if c := req.GetCursor(); c != "" {
		if req.GetFromNow() {
			return fail("cursor and from_now are exclusive")
		}
		parsed, err := ParseWatchCursor(c)
		if err != nil {
			return fail("cursor: %v", err)
		}
		if len(parsed.Pos) != n {
			return fail("cursor: it is from a cluster with %d shards; this one has %d", len(parsed.Pos), n)
		}
		cur = parsed
	}
	interval := defaultBookmarkInterval
	if ms := req.GetBookmarkIntervalMs(); ms != 0 {
		interval = time.Duration(ms) * time.Millisecond
		if interval < minBookmarkInterval || interval > maxBookmarkInterval {
			return fail("bookmark_interval_ms %d must be 0 or %d..%d", ms, minBookmarkInterval.Milliseconds(), maxBookmarkInterval.Milliseconds())
		}
	}
	return shards, f, cur, interval, nil
}

// validWatchName checks a tenant ([A-Za-z0-9._-]) or, with kind, a job
// kind ([A-Za-z0-9._:/-]) of at most 128 bytes, as the FSM's spec
// validation does: a filter that no job can match is refused.
func validWatchName(s string, kind bool) bool {
	if len(s) > 128 {
		return false
	}
	for i := 0; i < len(s); i++ {
		c := s[i]
		switch {
		case c >= 'a' && c <= 'z', c >= 'A' && c <= 'Z', c >= '0' && c <= '9', c == '.', c == '_', c == '-':
		case kind && (c == ':' || c == '/'):
		default:
			return false
		}
	}
	return true
}

func watchStatus(err error) error {
	switch {
	case errors.Is(err, ErrWatchResync):
		return status.Error(codes.OutOfRange, err.Error())
	case errors.Is(err, ErrWatchCursor):
		return status.Error(codes.InvalidArgument, err.Error())
	}
	return ToStatus(err)
}
