package cluster

import (
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"

	"github.com/hodei-io/hodei/cluster/logdb"
	"github.com/hodei-io/hodei/fsm"
	"github.com/hodei-io/hodei/proto/hodeiv1"
)

// metrics of one node, registered on the node's own registerer. Job counters
// count state changes as applied by this node's replicas.
type metrics struct {
	submitted     *prometheus.CounterVec
	completed     *prometheus.CounterVec
	leaseGrants   prometheus.Counter
	grpc          *grpcMetrics
	leaseExpiries prometheus.Counter
	leaderChanges prometheus.Counter
	applySeconds  prometheus.Histogram
	entryCommands prometheus.Histogram
	dead          deadMetrics // issue 11, dead_metrics.go
	snapshots     *snapshotMetrics
	// dispatchSeconds: from a job being ready (created, or its delay or
	// backoff over) to its lease, observed on the shard leader's replica.
	dispatchSeconds prometheus.Histogram
}

func newMetrics(reg prometheus.Registerer, n *Node) *metrics {
	m := &metrics{
		submitted: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "hodei_jobs_submitted_total", Help: "Jobs created, as applied by this node's replicas, by tenant."}, []string{"tenant"}),
		completed: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "hodei_jobs_finished_total", Help: "Jobs that reached a terminal state, as applied by this node's replicas, by tenant and state."}, []string{"tenant", "state"}),
		leaseGrants: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "hodei_lease_grants_total", Help: "Leases granted (PENDING -> RUNNING), as applied by this node's replicas."}),
		grpc:      newGRPCMetrics(reg, n.cfg.Logger),
		snapshots: newSnapshotMetrics(reg),
		dispatchSeconds: prometheus.NewHistogram(prometheus.HistogramOpts{
			Name: "hodei_dispatch_latency_seconds", Help: "Time from a job being ready (submitted, or its delay or retry backoff over) to its lease, in shards this node leads.",
			Buckets: prometheus.ExponentialBuckets(0.001, 2, 16)}),
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
	reg.MustRegister(newGroupCollector(n), m.leaseGrants, m.dispatchSeconds)
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
		logStoreCounter(n, "hodei_log_store_commits_total", "Write transactions of the node's shared Raft log store (each one fsync).",
			func(st logdb.Stats) float64 { return float64(st.Commits) }),
		logStoreCounter(n, "hodei_log_store_commit_seconds_total", "Time in the log store's write transactions, fsyncs included; divided by commits: the mean commit time.",
			func(st logdb.Stats) float64 { return st.CommitTime.Seconds() }),
		logStoreCounter(n, "hodei_log_store_write_seconds_total", "Time the log store spent writing pages and fsyncing (bbolt's write time).",
			func(st logdb.Stats) float64 { return st.WriteTime.Seconds() }),
		prometheus.NewGaugeFunc(prometheus.GaugeOpts{Name: "hodei_shards_led", Help: "Shards this node leads."}, func() float64 {
			c := 0
			for _, s := range n.shards {
				if s.isLeader() {
					c++
				}
			}
			return float64(c)
		}),
		prometheus.NewGaugeFunc(prometheus.GaugeOpts{Name: "hodei_worker_streams",
			Help: "Worker streams connected to this node (unary lease polls not counted)."}, func() float64 {
			if d := n.dispatch.Load(); d != nil {
				return float64(d.Sessions())
			}
			return 0
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
	// cron (issue 11): per-tenant schedule totals (cluster/schedules.go).
	reg.MustRegister(newScheduleCollector(n))
	// ---- watch (issue 11): the node's event bus (eventbus.go) ----
	busStat := func(f func(*busMetrics) float64) func() float64 {
		return func() float64 {
			if n.bus == nil {
				return 0
			}
			return f(n.bus.m)
		}
	}
	reg.MustRegister(
		prometheus.NewGaugeFunc(prometheus.GaugeOpts{Name: "hodei_watch_watchers",
			Help: "WatchJobs streams connected to this node."}, busStat(func(m *busMetrics) float64 { return float64(m.watchers.Load()) })),
		prometheus.NewCounterFunc(prometheus.CounterOpts{Name: "hodei_watch_events_published_total",
			Help: "Job events this node's replicas published to the event bus."}, busStat(func(m *busMetrics) float64 { return float64(m.published.Load()) })),
		prometheus.NewCounterFunc(prometheus.CounterOpts{Name: "hodei_watch_events_dropped_total",
			Help: "Job events dropped from the event bus's per-shard rings by retention (count or bytes)."}, busStat(func(m *busMetrics) float64 { return float64(m.evicted.Load()) })),
		prometheus.NewCounterFunc(prometheus.CounterOpts{Name: "hodei_watch_subscribers_cut_off_total",
			Help: "Watchers cut off with a resync error (fell behind the retained events, or a snapshot install)."}, busStat(func(m *busMetrics) float64 { return float64(m.cutOff.Load()) })),
	)
	// ---- end watch ----
	// Live logs (issue 11 logs): bytes held, lines received and dropped, evictions.
	reg.MustRegister(logMetrics(n)...)
	// ---- quota (issue 11): per-tenant usage ----
	reg.MustRegister(&tenantCollector{n: n})
	m.dead = newDeadMetrics(reg, n)
	if reg == n.registry {
		reg.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	}
	return m
}

// logStoreCounter reads a counter of the node's shared log store (0 with
// per-group log stores).
func logStoreCounter(n *Node, name, help string, f func(logdb.Stats) float64) prometheus.Collector {
	return prometheus.NewCounterFunc(prometheus.CounterOpts{Name: name, Help: help}, func() float64 {
		if n.logdb == nil {
			return 0
		}
		return f(n.logdb.Stats())
	})
}

// event counts one applied job state change; leader says whether this
// node leads the shard that applied it.
func (m *metrics) event(e fsm.Event, leader bool) {
	switch e.To {
	case hodeiv1.JobState_JOB_STATE_PENDING:
		if e.From == hodeiv1.JobState_JOB_STATE_UNSPECIFIED {
			m.submitted.WithLabelValues(e.Tenant).Inc()
		}
	case hodeiv1.JobState_JOB_STATE_RUNNING:
		m.leaseGrants.Inc()
		if leader && e.ReadySinceMs > 0 {
			m.dispatchSeconds.Observe(float64(max(e.NowMs-e.ReadySinceMs, 0)) / 1000)
		}
	case hodeiv1.JobState_JOB_STATE_SUCCEEDED:
		m.completed.WithLabelValues(e.Tenant, "succeeded").Inc()
	case hodeiv1.JobState_JOB_STATE_FAILED:
		m.completed.WithLabelValues(e.Tenant, "failed").Inc()
	case hodeiv1.JobState_JOB_STATE_CANCELLED:
		m.completed.WithLabelValues(e.Tenant, "cancelled").Inc()
	case hodeiv1.JobState_JOB_STATE_DEAD:
		m.completed.WithLabelValues(e.Tenant, "dead").Inc()
	}
}

func (m *metrics) observeApply(commands int, d time.Duration) {
	m.applySeconds.Observe(d.Seconds())
	m.entryCommands.Observe(float64(commands))
}

// ---- quota (issue 11) ----

// tenantCollector exports the usage of every tenant with quota state
// (limits, or refusals counted) in the shards this node leads, so that a
// sum over the cluster's nodes counts each tenant once. Label: tenant.
type tenantCollector struct{ n *Node }

var (
	tenantQueuedDesc = prometheus.NewDesc("hodei_tenant_queued_jobs",
		"PENDING jobs of a tenant with quotas, in the shards this node leads.", []string{"tenant"}, nil)
	tenantRunningDesc = prometheus.NewDesc("hodei_tenant_running_jobs",
		"RUNNING jobs of a tenant with quotas, in the shards this node leads.", []string{"tenant"}, nil)
	tenantTokensDesc = prometheus.NewDesc("hodei_tenant_submit_tokens",
		"Tokens in a tenant's submit-rate bucket (tenants with a submit rate), in the shards this node leads.", []string{"tenant"}, nil)
	tenantRefusedQueuedDesc = prometheus.NewDesc("hodei_tenant_submits_refused_max_queued_total",
		"Submits of a tenant refused over its max-queued limit, in the shards this node leads.", []string{"tenant"}, nil)
	tenantRefusedRateDesc = prometheus.NewDesc("hodei_tenant_submits_refused_rate_total",
		"Submits of a tenant refused over its submit-rate limit, in the shards this node leads.", []string{"tenant"}, nil)
)

func (c *tenantCollector) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range []*prometheus.Desc{tenantQueuedDesc, tenantRunningDesc, tenantTokensDesc, tenantRefusedQueuedDesc, tenantRefusedRateDesc} {
		ch <- d
	}
}

func (c *tenantCollector) Collect(ch chan<- prometheus.Metric) {
	for _, s := range c.n.shards {
		if !s.isLeader() {
			continue
		}
		for _, name := range s.fsm.QuotaTenants() {
			u := s.fsm.TenantUsage(name)
			ch <- prometheus.MustNewConstMetric(tenantQueuedDesc, prometheus.GaugeValue, float64(u.GetQueued()), name)
			ch <- prometheus.MustNewConstMetric(tenantRunningDesc, prometheus.GaugeValue, float64(u.GetRunning()), name)
			if s.fsm.TenantLimits(name).GetSubmitRateMilli() > 0 {
				ch <- prometheus.MustNewConstMetric(tenantTokensDesc, prometheus.GaugeValue, u.GetSubmitTokens(), name)
			}
			ch <- prometheus.MustNewConstMetric(tenantRefusedQueuedDesc, prometheus.CounterValue, float64(u.GetRefusedQueued()), name)
			ch <- prometheus.MustNewConstMetric(tenantRefusedRateDesc, prometheus.CounterValue, float64(u.GetRefusedRate()), name)
		}
	}
}
