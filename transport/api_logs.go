package transport

import (
	"context"
	"sort"
	"sync"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/hodei-io/hodei/proto/hodeiv1"
)

// Live logs (issue 11). A worker streams a running attempt's lines over its
// worker stream; the node it is connected to keeps them in its log store
// (cluster/logstore: bounded, node-local, not replicated). A reader on any
// node gathers an attempt's lines from every member (each answers from its
// own store, GetJobLogs with local_only), because the lines of one attempt
// may sit on several nodes when the worker reconnected elsewhere mid-job.

// Limits of log lines and log reads.
const (
	MaxLogLineBytes  = 16 << 10 // data of one line
	maxLogJobIDBytes = 256
	maxLogReadLimit  = 10000
	maxLogWait       = 5 * time.Second
	// followPoll is how long one round of a follow waits for new lines
	// before it looks at the job's state again.
	followPoll = 500 * time.Millisecond
	// followGapWait is how long a follow holds lines back behind a gap in
	// the seqs (lines still on their way from another node) before it
	// shows them anyway (lines lost with a cut stream).
	followGapWait  = time.Second
	followGapPause = 50 * time.Millisecond
	// followRoundSlack bounds how much longer than its wait one follow
	// round waits for a slow or partitioned member (asked again next round).
	followRoundSlack = 250 * time.Millisecond
	peerLogTimeout   = 3 * time.Second
)

// Reasons for dropping a streamed log line in the transport.
const (
	LogDropMalformed = "malformed" // no job id, no token, no seq, unknown stream
	LogDropOversized = "oversized" // data over MaxLogLineBytes
)

// LogBackend is what the live logs need from the node.
type LogBackend interface {
	// AppendLogs stores lines a worker streamed (each structurally valid);
	// dropped counts the lines the transport refused, by reason. Fencing by
	// lease token happens there; a refused line is counted, never an error.
	AppendLogs(lines []*hodeiv1.LogLine, dropped map[string]int)
	// ReadLogs answers from this node's store only.
	ReadLogs(q LogQuery) LogRead
	// WaitLogs returns a channel closed at the next append of jobID's lines here.
	WaitLogs(jobID string) <-chan struct{}
	// LogPeers are the other members' gRPC addresses, by node id.
	LogPeers() map[string]string
}

// LogQuery selects an attempt's lines in one node's store: by token when
// non-zero, else by attempt number, else the latest attempt held.
type LogQuery struct {
	JobID    string
	Token    uint64
	Attempt  int32
	AfterSeq uint64
	Limit    int
}

// LogRead is one store's answer.
type LogRead struct {
	Found     bool
	Attempt   int32
	Lines     []*hodeiv1.LogLine
	Truncated bool
	More      bool
}

// SetLogs enables the live-log services over lb (before Register).
func (a *API) SetLogs(lb LogBackend) { a.logs = lb }

// validLogLine checks one streamed line; "" when it is valid.
func validLogLine(l *hodeiv1.LogLine) string {
	switch {
	case l.GetJobId() == "" || len(l.GetJobId()) > maxLogJobIDBytes || l.GetToken() == 0 || l.GetSeq() == 0:
		return LogDropMalformed
	case l.GetStream() != hodeiv1.LogStream_LOG_STREAM_STDOUT && l.GetStream() != hodeiv1.LogStream_LOG_STREAM_STDERR:
		return LogDropMalformed
	case len(l.GetData()) > MaxLogLineBytes:
		return LogDropOversized
	}
	return ""
}

// handleWorkerLogs hands a stream's valid log lines on. Bad lines are
// dropped and counted: logs never end a worker stream.
func (s *workerService) handleWorkerLogs(m *hodeiv1.WorkerLogs) {
	lb := s.a.logs
	lines := m.GetLines()
	if lb == nil || len(lines) == 0 {
		return
	}
	var dropped map[string]int
	valid := lines[:0:0]
	for _, l := range lines {
		if why := validLogLine(l); why != "" {
			if dropped == nil {
				dropped = map[string]int{}
			}
			dropped[why]++
			continue
		}
		l.NodeId = "" // set by the node that keeps it
		valid = append(valid, l)
	}
	if len(lines) > maxStreamItems {
		if dropped == nil {
			dropped = map[string]int{}
		}
		dropped[LogDropMalformed] += len(valid)
		valid = nil
	}
	lb.AppendLogs(valid, dropped)
}

// logAttempt is the attempt a read shows, resolved from the job.
type logAttempt struct {
	attempt  int32
	token    uint64 // 0: unknown (an older attempt), select by number
	finished bool   // no more lines will come for it
	tail     []byte // its replicated output tail, when it is the latest result
	hasTail  bool
}

// resolveAttempt picks attempt n (0 = the latest) of job.
func resolveAttempt(job *hodeiv1.Job, n int32) (logAttempt, error) {
	if n < 0 {
		return logAttempt{}, invalid("attempt must be >= 0, got %d", n)
	}
	if n == 0 {
		n = job.GetAttempts()
	}
	if n > job.GetAttempts() {
		return logAttempt{}, status.Errorf(codes.OutOfRange, "attempt %d: job %s has had %d attempts", n, job.GetId(), job.GetAttempts())
	}
	la := logAttempt{attempt: n, finished: true}
	if n == 0 {
		// Not leased yet: nothing to show, and more will come unless it ended.
		la.finished = terminal(job.GetState())
		return la, nil
	}
	if job.GetState() == hodeiv1.JobState_JOB_STATE_RUNNING && job.GetAttempts() == n {
		la.token, la.finished = job.GetLeaseToken(), false
	}
	if r := job.GetLastResult(); r != nil && r.GetAttempt() == n {
		la.token, la.tail, la.hasTail = r.GetLeaseToken(), r.GetOutput(), true
	}
	return la, nil
}

func terminal(st hodeiv1.JobState) bool {
	switch st {
	case hodeiv1.JobState_JOB_STATE_SUCCEEDED, hodeiv1.JobState_JOB_STATE_FAILED, hodeiv1.JobState_JOB_STATE_CANCELLED:
		return true
	}
	return st > hodeiv1.JobState_JOB_STATE_CANCELLED // states added later (dead) are terminal
}

// readJob reads a job linearizably (through its shard's leader).
func (a *API) readJob(ctx context.Context, id string) (*hodeiv1.Job, error) {
	resp, err := (&jobService{a: a}).GetJob(ctx, &hodeiv1.GetJobRequest{Id: id})
	if err != nil {
		return nil, err
	}
	return resp.GetJob(), nil
}

// localJob reads a job from this node's replica (for polling while
// following), or linearizably when the replica has not yet seen the job at
// its attempt minAttempts.
func (a *API) localJob(ctx context.Context, id string, minAttempts int32) (*hodeiv1.Job, error) {
	if sh, err := a.b.ShardOfJob(id); err == nil {
		if j, ok := a.b.GetJob(sh, id); ok && j.GetAttempts() >= minAttempts {
			return j, nil
		}
	}
	return a.readJob(ctx, id)
}

func validateLogRequest(a *API, id string, attempt int32) error {
	if a.logs == nil {
		return status.Error(codes.Unavailable, "this node is starting: no log store yet")
	}
	if _, err := a.b.ShardOfJob(id); err != nil {
		return invalid("job_id %q: %v", id, err)
	}
	if attempt < 0 {
		return invalid("attempt must be >= 0, got %d", attempt)
	}
	return nil
}

func (s *jobService) GetJobLogs(ctx context.Context, req *hodeiv1.GetJobLogsRequest) (*hodeiv1.GetJobLogsResponse, error) {
	a := s.a
	if err := validateLogRequest(a, req.GetJobId(), req.GetAttempt()); err != nil {
		return nil, err
	}
	limit := int(req.GetLimit())
	if limit < 0 || limit > maxLogReadLimit {
		return nil, invalid("limit must be in 0..%d, got %d", maxLogReadLimit, limit)
	}
	if limit == 0 {
		limit = maxLogReadLimit
	}
	wait := time.Duration(req.GetWaitMs()) * time.Millisecond
	if wait < 0 || wait > maxLogWait {
		return nil, invalid("wait_ms must be in 0..%d, got %d", maxLogWait.Milliseconds(), req.GetWaitMs())
	}
	q := LogQuery{JobID: req.GetJobId(), Token: req.GetToken(), Attempt: req.GetAttempt(), AfterSeq: req.GetAfterSeq(), Limit: limit}
	if req.GetLocalOnly() {
		// auth: the fan-out carries the caller's token; this node checks
		// the job's tenant on its own replica (the coordinating node
		// checked it on the leader's).
		if !a.localReadable(ctx, req.GetJobId()) {
			return nil, jobNotFound(req.GetJobId())
		}
		r := a.localLogs(ctx, q, wait)
		return &hodeiv1.GetJobLogsResponse{Lines: r.Lines, Attempt: r.Attempt, Truncated: r.Truncated, More: r.More,
			FromResultTail: !r.Found}, nil
	}
	if wait > 0 {
		return nil, invalid("wait_ms is for node-to-node calls (local_only); use FollowJobLogs")
	}
	job, err := a.readJob(ctx, req.GetJobId())
	if err != nil {
		return nil, err
	}
	la, err := resolveAttempt(job, req.GetAttempt())
	if err != nil {
		return nil, err
	}
	g := a.gatherLogs(ctx, req.GetJobId(), la, req.GetAfterSeq(), limit, 0)
	resp := &hodeiv1.GetJobLogsResponse{Lines: g.lines, Attempt: la.attempt, JobFinished: la.finished,
		Truncated: g.truncated, UnreachableNodes: g.unreachable, More: g.more}
	if !g.found && la.hasTail {
		resp.FromResultTail, resp.ResultTail = true, la.tail
	}
	return resp, nil
}

// localLogs reads this node's store, waiting up to wait for a line after
// q.AfterSeq.
func (a *API) localLogs(ctx context.Context, q LogQuery, wait time.Duration) LogRead {
	var t *time.Timer
	for {
		ch := a.logs.WaitLogs(q.JobID)
		r := a.logs.ReadLogs(q)
		if len(r.Lines) > 0 || wait <= 0 {
			if t != nil {
				t.Stop()
			}
			return r
		}
		if t == nil {
			t = time.NewTimer(wait)
		}
		select {
		case <-ch:
		case <-t.C:
			return r
		case <-ctx.Done():
			t.Stop()
			return r
		}
	}
}

type gathered struct {
	lines       []*hodeiv1.LogLine
	found       bool
	truncated   bool
	more        bool
	unreachable []string
}

// gatherLogs asks this node and every peer for the attempt's lines after
// afterSeq and merges them in seq order. With wait > 0 every source
// long-polls, and the round ends as soon as one of them has lines.
func (a *API) gatherLogs(ctx context.Context, jobID string, la logAttempt, afterSeq uint64, limit int, wait time.Duration) gathered {
	q := LogQuery{JobID: jobID, Token: la.token, Attempt: la.attempt, AfterSeq: afterSeq, Limit: limit}
	peers := a.logs.LogPeers()
	type answer struct {
		node string
		r    LogRead
		err  error
	}
	rctx, cancel := context.WithCancel(ctx)
	if wait > 0 {
		rctx, cancel = context.WithTimeout(ctx, wait+followRoundSlack)
	}
	defer cancel()
	out := make(chan answer, len(peers)+1)
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		out <- answer{node: a.b.NodeID(), r: a.localLogs(rctx, q, wait)}
	}()
	for id, addr := range peers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			r, err := a.peerLogs(rctx, addr, q, wait)
			out <- answer{node: id, r: r, err: err}
		}()
	}
	go func() { wg.Wait(); close(out) }()
	var g gathered
	for ans := range out {
		if ans.err != nil {
			if rctx.Err() == nil {
				g.unreachable = append(g.unreachable, ans.node)
			}
			continue
		}
		if ans.r.Found {
			g.found = true
		}
		g.truncated = g.truncated || ans.r.Truncated
		g.more = g.more || ans.r.More
		g.lines = append(g.lines, ans.r.Lines...)
		if wait > 0 && len(ans.r.Lines) > 0 {
			cancel() // the others answer at once (or are cut off: asked again next round)
		}
	}
	sort.SliceStable(g.lines, func(i, j int) bool { return g.lines[i].GetSeq() < g.lines[j].GetSeq() })
	// The same seq from two nodes (impossible unless the worker resent it):
	// keep the first.
	uniq := g.lines[:0]
	for i, l := range g.lines {
		if i > 0 && l.GetSeq() == g.lines[i-1].GetSeq() {
			continue
		}
		uniq = append(uniq, l)
	}
	g.lines = uniq
	for i, l := range g.lines {
		if l.GetAttempt() == 0 && la.attempt != 0 {
			// Stored before the holding node's replica knew the lease: the
			// attempt is the one asked for (the lines are shared: copy).
			g.lines[i] = &hodeiv1.LogLine{JobId: l.GetJobId(), Token: l.GetToken(), Seq: l.GetSeq(), Stream: l.GetStream(),
				Data: l.GetData(), TimeMs: l.GetTimeMs(), DroppedBytes: l.GetDroppedBytes(), Attempt: la.attempt, NodeId: l.GetNodeId()}
		}
	}
	if len(g.lines) > limit {
		g.lines, g.more = g.lines[:limit], true
	}
	sort.Strings(g.unreachable)
	return g
}

func (a *API) peerLogs(ctx context.Context, addr string, q LogQuery, wait time.Duration) (LogRead, error) {
	cc, err := a.conn(addr)
	if err != nil {
		return LogRead{}, err
	}
	cctx, cancel := context.WithTimeout(ctx, wait+peerLogTimeout)
	defer cancel()
	resp, err := hodeiv1.NewJobServiceClient(cc).GetJobLogs(cctx, &hodeiv1.GetJobLogsRequest{
		JobId: q.JobID, Token: q.Token, Attempt: q.Attempt, AfterSeq: q.AfterSeq, Limit: int32(q.Limit),
		LocalOnly: true, WaitMs: wait.Milliseconds(),
	})
	if err != nil {
		return LogRead{}, err
	}
	return LogRead{Found: !resp.GetFromResultTail(), Attempt: resp.GetAttempt(), Lines: resp.GetLines(),
		Truncated: resp.GetTruncated(), More: resp.GetMore()}, nil
}

// FollowJobLogs streams an attempt's lines as they arrive, from whichever
// nodes hold them, until the job ends. With attempt 0 it follows the
// latest attempt and moves on to the next one on a retry.
func (s *jobService) FollowJobLogs(req *hodeiv1.FollowJobLogsRequest, stream hodeiv1.JobService_FollowJobLogsServer) error {
	a := s.a
	ctx := stream.Context()
	if err := validateLogRequest(a, req.GetJobId(), req.GetAttempt()); err != nil {
		return err
	}
	id := req.GetJobId()
	job, err := a.readJob(ctx, id)
	if err != nil {
		return err
	}
	la, err := resolveAttempt(job, req.GetAttempt())
	if err != nil {
		return err
	}
	last := req.GetAfterSeq()
	found := false
	var gapSince time.Time
	for {
		if la.attempt == 0 {
			// Not leased yet: watch the job until it is (or ends).
			if terminal(job.GetState()) {
				return stream.Send(&hodeiv1.FollowJobLogsResponse{JobFinished: true})
			}
			if err := sleepCtx(ctx, followPoll); err != nil {
				return err
			}
			if job, err = a.localJob(ctx, id, la.attempt); err != nil {
				return err
			}
			if la, err = resolveAttempt(job, 0); err != nil {
				return err
			}
			continue
		}
		wait := followPoll
		if la.finished {
			wait = 0 // one last round
		}
		g := a.gatherLogs(ctx, id, la, last, maxLogReadLimit, wait)
		if ctx.Err() != nil {
			return ctx.Err()
		}
		found = found || g.found
		lines := g.lines
		// Show lines in seq order without holes: behind a gap, wait a
		// little for the missing lines (another node's share), then go on.
		if n := contiguous(lines, last); n < len(lines) && !la.finished {
			if gapSince.IsZero() {
				gapSince = time.Now()
			}
			if time.Since(gapSince) < followGapWait {
				lines = lines[:n]
				if n == 0 {
					// Nothing to show yet: the held-back lines would come
					// straight back; give the missing ones a moment.
					if err := sleepCtx(ctx, followGapPause); err != nil {
						return err
					}
				}
			}
		}
		if len(lines) > 0 {
			gapSince = time.Time{}
			last = lines[len(lines)-1].GetSeq()
			if err := stream.Send(&hodeiv1.FollowJobLogsResponse{Lines: lines, Attempt: la.attempt}); err != nil {
				return err
			}
		}
		if g.more {
			continue
		}
		if la.finished {
			switch {
			case req.GetAttempt() == 0 && job.GetAttempts() > la.attempt:
				// A retry started: follow it from its first line.
				if la, err = resolveAttempt(job, la.attempt+1); err != nil {
					return err
				}
				last, found, gapSince = 0, false, time.Time{}
				continue
			case terminal(job.GetState()) || req.GetAttempt() != 0:
				end := &hodeiv1.FollowJobLogsResponse{Attempt: la.attempt, JobFinished: true}
				if !found && la.hasTail && last == 0 {
					end.FromResultTail, end.ResultTail = true, la.tail
				}
				return stream.Send(end)
			}
			// The attempt failed and the job waits for its retry.
			if err := sleepCtx(ctx, followPoll); err != nil {
				return err
			}
		}
		if job, err = a.localJob(ctx, id, la.attempt); err != nil {
			return err
		}
		if !la.finished {
			if la, err = resolveAttempt(job, la.attempt); err != nil {
				return err
			}
		}
	}
}

// contiguous returns how many of lines (in seq order) follow last without a hole.
func contiguous(lines []*hodeiv1.LogLine, last uint64) int {
	for i, l := range lines {
		if l.GetSeq() != last+1 {
			return i
		}
		last = l.GetSeq()
	}
	return len(lines)
}

func sleepCtx(ctx context.Context, d time.Duration) error {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
		return ctx.Err()
	case <-t.C:
		return nil
	}
}
