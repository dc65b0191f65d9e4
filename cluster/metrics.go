package cluster

import (
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"

	"github.com/hodei-io/hodei/fsm"
	"github.com/hodei-io/hodei/proto/hodeiv1"
)

// metrics of one node, registered on the node's own registerer. Job counters
// count state changes as applied by this node's replicas.
type metrics struct {
	submitted     prometheus.Counter
	completed     *prometheus.CounterVec
	leaseExpiries prometheus.Counter
	leaderChanges prometheus.Counter
	applySeconds  prometheus.Histogram
	entryCommands prometheus.Histogram
	dead          deadMetrics // issue 11, dead_metrics.go
}

func newMetrics(reg prometheus.Registerer, n *Node) *metrics {
	m := &metrics{
		submitted: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "hodei_jobs_submitted_total", Help: "Jobs created, as applied by this node."}),
		completed: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "hodei_jobs_finished_total", Help: "Jobs that reached a terminal state, by state."}, []string{"state"}),
		leaseExpiries: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "hodei_lease_expiries_total", Help: "Leases expired by timers of shards this node led."}),
		leaderChanges: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "hodei_raft_leader_changes_total", Help: "Leadership gained or lost by this node, all shards."}),
		applySeconds: prometheus.NewHistogram(prometheus.HistogramOpts{
			Name: "hodei_raft_apply_seconds", Help: "Time from proposing a log entry to its commit and apply on the leader.",
			Buckets: prometheus.ExponentialBuckets(0.0005, 2, 16)}),
		entryCommands: prometheus.NewHistogram(prometheus.HistogramOpts{
			Name: "hodei_raft_entry_commands", Help: "Commands per replicated log entry (group commit size).",
			Buckets: prometheus.ExponentialBuckets(1, 2, 13)}),
	}
	gauge := func(name, help string, f func(fsm.Stats) int) prometheus.Collector {
		return prometheus.NewGaugeFunc(prometheus.GaugeOpts{Name: name, Help: help}, func() float64 {
			total := 0
			for _, s := range n.shards {
				total += f(s.fsm.Stats())
			}
			return float64(total)
		})
	}
	reg.MustRegister(m.submitted, m.completed, m.leaseExpiries, m.leaderChanges, m.applySeconds, m.entryCommands,
		gauge("hodei_queue_depth", "PENDING jobs (ready and delayed), all shards.", func(s fsm.Stats) int { return s.Ready + s.Delayed }),
		gauge("hodei_jobs_running", "RUNNING (leased) jobs, all shards.", func(s fsm.Stats) int { return s.Running }),
		gauge("hodei_jobs", "Jobs held in memory, all shards.", func(s fsm.Stats) int { return s.Jobs }),
		prometheus.NewGaugeFunc(prometheus.GaugeOpts{Name: "hodei_log_store_failing",
			Help: "1 while this node's Raft log store is failing writes or recovering from it (the balancer gives it no shard to lead), else 0."}, func() float64 {
			if n.storeHealth.failing() {
				return 1
			}
			return 0
		}),
		prometheus.NewGaugeFunc(prometheus.GaugeOpts{Name: "hodei_log_store_erroring",
			Help: "1 while a write of this node's Raft log store has failed in the last few seconds (it hands its leaderships away and gets no votes), else 0."}, func() float64 {
			if n.storeHealth.erroring() {
				return 1
			}
			return 0
		}),
		prometheus.NewCounterFunc(prometheus.CounterOpts{Name: "hodei_log_store_write_errors_total",
			Help: "Failed writes to this node's Raft log store (log appends, deletes, stable keys, health probes)."}, func() float64 {
			if h := n.storeHealth; h != nil {
				return float64(h.writeErrors.Load())
			}
			return 0
		}),
		prometheus.NewCounterFunc(prometheus.CounterOpts{Name: "hodei_log_store_votes_refused_total",
			Help: "Votes this node refused to candidates whose log store is failing (its own included, when it is the failing one)."}, func() float64 {
			if h := n.storeHealth; h != nil {
				return float64(h.votesRefused.Load())
			}
			return 0
		}),
		prometheus.NewCounterFunc(prometheus.CounterOpts{Name: "hodei_log_store_leadership_handoffs_total",
			Help: "Leaderships this node handed away because its log store was failing."}, func() float64 {
			if h := n.storeHealth; h != nil {
				return float64(h.handoffs.Load())
			}
			return 0
		}),
		prometheus.NewGaugeFunc(prometheus.GaugeOpts{Name: "hodei_shards_led", Help: "Shards this node leads."}, func() float64 {
			c := 0
			for _, s := range n.shards {
				if s.isLeader() {
					c++
				}
			}
			return float64(c)
		}),
	)
	for _, o := range []struct {
		outcome string
		f       func(fsm.ChainStats) uint64
	}{
		{"verified", func(c fsm.ChainStats) uint64 { return c.Verified }},
		{"mismatched", func(c fsm.ChainStats) uint64 { return c.Mismatched }},
		{"unverifiable", func(c fsm.ChainStats) uint64 { return c.Unverifiable }},
	} {
		reg.MustRegister(prometheus.NewCounterFunc(prometheus.CounterOpts{
			Name:        "hodei_replica_checkpoints_total",
			Help:        "Replica consistency checkpoints applied by this node's shard replicas, by outcome (mismatched = replica divergence).",
			ConstLabels: prometheus.Labels{"outcome": o.outcome},
		}, func() float64 {
			total := uint64(0)
			for _, s := range n.shards {
				total += o.f(s.fsm.ChainStats())
			}
			return float64(total)
		}))
	}
	m.dead = newDeadMetrics(reg, n)
	if reg == n.registry {
		reg.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	}
	return m
}

func (m *metrics) event(e fsm.Event) {
	switch e.To {
	case hodeiv1.JobState_JOB_STATE_PENDING:
		if e.From == hodeiv1.JobState_JOB_STATE_UNSPECIFIED {
			m.submitted.Inc()
		}
	case hodeiv1.JobState_JOB_STATE_SUCCEEDED:
		m.completed.WithLabelValues("succeeded").Inc()
	case hodeiv1.JobState_JOB_STATE_FAILED:
		m.completed.WithLabelValues("failed").Inc()
	case hodeiv1.JobState_JOB_STATE_CANCELLED:
		m.completed.WithLabelValues("cancelled").Inc()
	case hodeiv1.JobState_JOB_STATE_DEAD:
		m.completed.WithLabelValues("dead").Inc()
	}
}

func (m *metrics) observeApply(commands int, d time.Duration) {
	m.applySeconds.Observe(d.Seconds())
	m.entryCommands.Observe(float64(commands))
}
