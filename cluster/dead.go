package cluster

import (
	"context"
	"sort"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/hodei-io/hodei/fsm"
	"github.com/hodei-io/hodei/proto/hodeiv1"
	"github.com/hodei-io/hodei/proto/internalpb"
)

// Dead letters (issue 11): the node's side of fsm/dead.go. The state and
// its rules live in the FSM; here are the commands that reach it, the
// eviction reports (metrics and logs: an eviction is never silent) and the
// per-tenant dead gauges.

// deadMetrics are the dead-letter metrics (labels: tenant only).
type deadMetrics struct {
	evicted *prometheus.CounterVec // by the per-tenant bound
	expired *prometheus.CounterVec // by the dead retention
}

func newDeadMetrics(reg prometheus.Registerer, n *Node) deadMetrics {
	m := deadMetrics{
		evicted: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "hodei_dead_jobs_evicted_total",
			Help: "DEAD jobs removed because their tenant reached its per-shard dead bound (fsm.Config.MaxDeadPerTenant), as applied by this node."},
			[]string{"tenant"}),
		expired: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "hodei_dead_jobs_expired_total",
			Help: "DEAD jobs removed by the dead retention (fsm.Config.DeadRetentionMs), as applied by this node."},
			[]string{"tenant"}),
	}
	reg.MustRegister(m.evicted, m.expired, &deadGauge{n: n, desc: prometheus.NewDesc("hodei_dead_jobs",
		"DEAD jobs held, per tenant, all shards of this node.", []string{"tenant"}, nil)})
	return m
}

// deadGauge reports each tenant's DEAD jobs at scrape time.
type deadGauge struct {
	n    *Node
	desc *prometheus.Desc
}

func (g *deadGauge) Describe(ch chan<- *prometheus.Desc) { ch <- g.desc }

func (g *deadGauge) Collect(ch chan<- prometheus.Metric) {
	total := map[string]int{}
	for _, s := range g.n.shards {
		for t, c := range s.fsm.DeadCounts() {
			total[t] += c
		}
	}
	for t, c := range total {
		ch <- prometheus.MustNewConstMetric(g.desc, prometheus.GaugeValue, float64(c), t)
	}
}

// onDeadEvicted runs on the FSM goroutine after an apply that removed DEAD
// jobs: it counts them and logs one line per tenant and cause.
func (s *shard) onDeadEvicted(index uint64, ev []fsm.DeadEviction) {
	type key struct{ tenant, cause string }
	type agg struct {
		n           int
		first, last string
	}
	byKey := map[key]*agg{}
	var keys []key
	for _, e := range ev {
		k := key{e.Tenant, e.Cause}
		a := byKey[k]
		if a == nil {
			a = &agg{first: e.JobID}
			byKey[k] = a
			keys = append(keys, k)
		}
		a.n++
		a.last = e.JobID
	}
	sort.Slice(keys, func(i, j int) bool {
		if keys[i].tenant != keys[j].tenant {
			return keys[i].tenant < keys[j].tenant
		}
		return keys[i].cause < keys[j].cause
	})
	for _, k := range keys {
		a := byKey[k]
		if k.cause == fsm.EvictBound {
			s.node.metrics.dead.evicted.WithLabelValues(k.tenant).Add(float64(a.n))
			s.log.Warn("dead jobs evicted: the tenant reached its dead-job bound", "tenant", k.tenant, "count", a.n,
				"bound", s.node.cfg.FSM.MaxDeadPerTenant, "first", a.first, "last", a.last, "index", index)
		} else {
			s.node.metrics.dead.expired.WithLabelValues(k.tenant).Add(float64(a.n))
			s.log.Info("dead jobs removed by the dead retention", "tenant", k.tenant, "count", a.n,
				"retention_ms", s.node.cfg.FSM.DeadRetentionMs, "first", a.first, "last", a.last, "index", index)
		}
	}
}

// ValidateRequeue checks a requeue filter with the FSM's rules.
func (n *Node) ValidateRequeue(tenant, kind string, sinceMs, untilMs int64, limit uint32) error {
	return fsm.ValidateRequeue(tenant, kind, sinceMs, untilMs, limit)
}

// RetryJob puts one DEAD, FAILED or CANCELLED job of shard id back to PENDING.
func (n *Node) RetryJob(ctx context.Context, id uint32, jobID, requestID string) (*hodeiv1.Job, error) {
	res, err := n.propose(ctx, id, &internalpb.Command{RequestId: requestID, Kind: &internalpb.Command_RetryJobs{RetryJobs: &internalpb.RetryJobs{JobId: jobID}}})
	if err != nil {
		return nil, err
	}
	return res.GetJob(), nil
}

// RequeueJobs puts up to limit DEAD jobs of shard id matching the filter back.
func (n *Node) RequeueJobs(ctx context.Context, id uint32, req *hodeiv1.RequeueJobsRequest, limit uint32) (uint32, error) {
	res, err := n.propose(ctx, id, &internalpb.Command{RequestId: req.GetRequestId(), Kind: &internalpb.Command_RetryJobs{RetryJobs: &internalpb.RetryJobs{
		Tenant: req.GetTenant(), Kind: req.GetKind(), SinceMs: req.GetSinceMs(), UntilMs: req.GetUntilMs(), Limit: limit}}})
	if err != nil {
		return 0, err
	}
	return res.GetCount(), nil
}
