package cluster

import (
	"sync"
	"time"

	"github.com/hashicorp/raft"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/hodei-io/hodei/cluster/logstore"
	"github.com/hodei-io/hodei/fsm"
	"github.com/hodei-io/hodei/proto/hodeiv1"
	"github.com/hodei-io/hodei/transport"
)

// Live logs (issue 11): the node's log store and the transport's LogBackend
// over it. Lines a worker streams to this node are fenced against this
// node's replica of the job's shard and kept here only (not replicated);
// readers on any node ask every member (transport/api_logs.go).

// Reasons a line is dropped here (besides the store's own).
const logDropUnknownJob = "unknown_job"

// logSweepEvery is how often retention runs.
const logSweepEvery = 10 * time.Second

type nodeLogs struct {
	n     *Node
	store *logstore.Store

	mu      sync.Mutex
	dropped map[string]uint64 // by reason, dropped before the store

	stop chan struct{}
	done chan struct{}
}

func newNodeLogs(n *Node, cfg logstore.Config) (*nodeLogs, error) {
	st, err := logstore.New(cfg)
	if err != nil {
		return nil, err
	}
	return &nodeLogs{n: n, store: st, dropped: map[string]uint64{}, stop: make(chan struct{}), done: make(chan struct{})}, nil
}

// start runs retention until close.
func (l *nodeLogs) start() {
	go func() {
		defer close(l.done)
		t := time.NewTicker(logSweepEvery)
		defer t.Stop()
		for {
			select {
			case <-l.stop:
				return
			case <-t.C:
				l.store.Sweep(l.live)
			}
		}
	}()
}

func (l *nodeLogs) close() {
	select {
	case <-l.stop:
		return
	default:
	}
	close(l.stop)
	<-l.done
}

// live: the job is pending or running on this node's replica.
func (l *nodeLogs) live(jobID string) bool {
	jl, ok := l.lease(jobID)
	return ok && (jl.State == hodeiv1.JobState_JOB_STATE_PENDING || jl.State == hodeiv1.JobState_JOB_STATE_RUNNING)
}

func (l *nodeLogs) lease(jobID string) (fsm.JobLease, bool) {
	sh, err := l.n.ShardOfJob(jobID)
	if err != nil {
		return fsm.JobLease{}, false
	}
	s, err := l.n.shard(sh)
	if err != nil {
		return fsm.JobLease{}, false
	}
	return s.fsm.GetJobLease(jobID)
}

func (l *nodeLogs) drop(reason string, n int) {
	if n == 0 {
		return
	}
	l.mu.Lock()
	l.dropped[reason] += uint64(n)
	l.mu.Unlock()
}

// AppendLogs fences each run of lines of one (job, token) against the local
// replica: an unknown job, or a token older than the job's current lease or
// latest result, is dropped. A token newer than the replica knows (the
// replica is behind the leader that granted it) is kept under the attempt
// number the worker gives (its lease's).
func (l *nodeLogs) AppendLogs(lines []*hodeiv1.LogLine, dropped map[string]int) {
	for reason, k := range dropped {
		l.drop(reason, k)
	}
	for i := 0; i < len(lines); {
		j := i + 1
		for j < len(lines) && lines[j].GetJobId() == lines[i].GetJobId() && lines[j].GetToken() == lines[i].GetToken() {
			j++
		}
		run := lines[i:j]
		i = j
		id, token := run[0].GetJobId(), run[0].GetToken()
		jl, ok := l.lease(id)
		if !ok {
			l.drop(logDropUnknownJob, len(run))
			continue
		}
		attempt := run[0].GetAttempt() // the worker's claim, unless the replica knows
		switch {
		case token < jl.LeaseToken || token < jl.ResultToken:
			l.drop(logstore.DropStale, len(run))
			continue
		case token == jl.LeaseToken && jl.State == hodeiv1.JobState_JOB_STATE_RUNNING:
			attempt = jl.Attempts
		case token == jl.ResultToken:
			attempt = jl.ResultAttempt
		}
		for _, ln := range run {
			ln.NodeId = l.n.cfg.NodeID
		}
		l.store.Append(id, token, attempt, run)
	}
}

func (l *nodeLogs) ReadLogs(q transport.LogQuery) transport.LogRead {
	r := l.store.Read(logstore.Query{JobID: q.JobID, Token: q.Token, Attempt: q.Attempt, AfterSeq: q.AfterSeq, Limit: q.Limit})
	return transport.LogRead{Found: r.Found, Attempt: r.Attempt, Lines: r.Lines, Truncated: r.Truncated, More: r.More}
}

func (l *nodeLogs) WaitLogs(jobID string) <-chan struct{} { return l.store.Wait(jobID) }

// LogPeers are the other voters and non-voters of the meta group, as this
// node's Raft configuration knows them.
func (l *nodeLogs) LogPeers() map[string]string {
	m := l.n.meta
	if m == nil || m.raft == nil {
		return nil
	}
	f := m.raft.GetConfiguration()
	if f.Error() != nil {
		return nil
	}
	out := map[string]string{}
	for _, srv := range f.Configuration().Servers {
		if string(srv.ID) == l.n.cfg.NodeID || srv.Suffrage == raft.Staging {
			continue
		}
		out[string(srv.ID)] = string(srv.Address)
	}
	return out
}

// counters for the metrics: the store's, with the lines dropped before it.
func (l *nodeLogs) counters() logstore.Counters {
	c := l.store.Counters()
	l.mu.Lock()
	for k, v := range l.dropped {
		c.Dropped[k] += v
	}
	l.mu.Unlock()
	return c
}

// logMetrics are the live logs' metrics (issue 11 logs).
func logMetrics(n *Node) []prometheus.Collector {
	get := func() logstore.Counters {
		if n.logs == nil {
			return logstore.Counters{Dropped: map[string]uint64{}}
		}
		return n.logs.counters()
	}
	reasons := []string{logstore.DropStale, logstore.DropDuplicate, logstore.DropOversized, logstore.DropMalformed, logDropUnknownJob}
	out := []prometheus.Collector{
		prometheus.NewGaugeFunc(prometheus.GaugeOpts{Name: "hodei_job_logs_bytes",
			Help: "Bytes of live log lines held in this node's log store (data plus per-line overhead)."},
			func() float64 { return float64(get().Bytes) }),
		prometheus.NewGaugeFunc(prometheus.GaugeOpts{Name: "hodei_job_logs_jobs",
			Help: "Jobs with live log lines in this node's log store."},
			func() float64 { return float64(get().Jobs) }),
		prometheus.NewCounterFunc(prometheus.CounterOpts{Name: "hodei_job_logs_lines_received_total",
			Help: "Live log lines workers streamed to this node that the store kept."},
			func() float64 { return float64(get().LinesReceived) }),
		prometheus.NewCounterFunc(prometheus.CounterOpts{Name: "hodei_job_logs_evictions_total",
			ConstLabels: prometheus.Labels{"bound": "job"},
			Help:        "Log lines or jobs evicted from this node's log store, by bound: job (oldest line over a job's bound), node (least recently written job over the node's bound), retention (job expired)."},
			func() float64 { return float64(get().EvictedJob) }),
		prometheus.NewCounterFunc(prometheus.CounterOpts{Name: "hodei_job_logs_evictions_total",
			ConstLabels: prometheus.Labels{"bound": "node"},
			Help:        "Log lines or jobs evicted from this node's log store, by bound: job (oldest line over a job's bound), node (least recently written job over the node's bound), retention (job expired)."},
			func() float64 { return float64(get().EvictedTotal) }),
		prometheus.NewCounterFunc(prometheus.CounterOpts{Name: "hodei_job_logs_evictions_total",
			ConstLabels: prometheus.Labels{"bound": "retention"},
			Help:        "Log lines or jobs evicted from this node's log store, by bound: job (oldest line over a job's bound), node (least recently written job over the node's bound), retention (job expired)."},
			func() float64 { return float64(get().Expired) }),
	}
	for _, r := range reasons {
		out = append(out, prometheus.NewCounterFunc(prometheus.CounterOpts{Name: "hodei_job_logs_lines_dropped_total",
			ConstLabels: prometheus.Labels{"reason": r},
			Help:        "Live log lines this node refused, by reason (stale_token, duplicate, oversized, malformed, unknown_job)."},
			func() float64 { return float64(get().Dropped[r]) }))
	}
	return out
}
