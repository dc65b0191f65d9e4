package cluster

import (
	"context"
	"log/slog"
	"strconv"
	"strings"
	"time"

	"github.com/hashicorp/raft"
	"github.com/prometheus/client_golang/prometheus"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

// groupCollector exports per-group gauges, read at scrape time from this
// node's replicas: every node reports every shard it holds, so a query
// aggregates with max by (shard) (a queue depth) or min (a count of live
// voters), never sum. Labels are bounded: shard numbers and group names.
type groupCollector struct {
	n *Node

	depth, running, oldest, leader, hasLeader, applied, voters, votersAlive *prometheus.Desc
}

func newGroupCollector(n *Node) *groupCollector {
	d := func(name, help string) *prometheus.Desc {
		return prometheus.NewDesc(name, help, []string{"group"}, nil)
	}
	return &groupCollector{n: n,
		depth:       d("hodei_shard_queue_depth", "PENDING jobs (ready and delayed) in this node's replica of the shard."),
		running:     d("hodei_shard_jobs_running", "RUNNING (leased) jobs in this node's replica of the shard."),
		oldest:      d("hodei_shard_oldest_ready_seconds", "How long the shard's longest-waiting leasable job has been leasable (0 when none is); see fsm.OldestReadySince."),
		leader:      d("hodei_group_leader", "1 if this node leads the group (a shard number, or meta), else 0."),
		hasLeader:   d("hodei_group_has_leader", "1 if this node's replica of the group knows a leader, else 0."),
		applied:     d("hodei_group_applied_index", "Raft index this node's replica of the group has applied."),
		voters:      d("hodei_group_voters", "Voters in the group's configuration, as this node's replica knows it."),
		votersAlive: d("hodei_group_voters_alive", "Voters of the group that gossip sees alive (this node included); quorum is lost below voters/2+1."),
	}
}

func (c *groupCollector) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range []*prometheus.Desc{c.depth, c.running, c.oldest, c.leader, c.hasLeader, c.applied, c.voters, c.votersAlive} {
		ch <- d
	}
}

func (c *groupCollector) Collect(ch chan<- prometheus.Metric) {
	now := c.n.now().UnixMilli()
	g := func(d *prometheus.Desc, v float64, group string) {
		ch <- prometheus.MustNewConstMetric(d, prometheus.GaugeValue, v, group)
	}
	for _, s := range c.n.shards {
		label := strconv.FormatUint(uint64(s.id), 10)
		st := s.fsm.Stats()
		g(c.depth, float64(st.Ready+st.Delayed), label)
		g(c.running, float64(st.Running), label)
		age := 0.0
		if since, ok := s.fsm.OldestReadySince(); ok && now > since {
			age = float64(now-since) / 1000
		}
		g(c.oldest, age, label)
		c.raftGauges(ch, s.raft, label)
	}
	if m := c.n.meta; m != nil && m.raft != nil {
		c.raftGauges(ch, m.raft, "meta")
	}
}

func (c *groupCollector) raftGauges(ch chan<- prometheus.Metric, r *raft.Raft, label string) {
	g := func(d *prometheus.Desc, v float64) {
		ch <- prometheus.MustNewConstMetric(d, prometheus.GaugeValue, v, label)
	}
	b := func(x bool) float64 {
		if x {
			return 1
		}
		return 0
	}
	_, leaderID := r.LeaderWithID()
	g(c.leader, b(r.State() == raft.Leader))
	g(c.hasLeader, b(leaderID != ""))
	g(c.applied, float64(r.AppliedIndex()))
	cf := r.GetConfiguration()
	if cf.Error() != nil {
		return
	}
	voters, alive := 0, 0
	for _, srv := range cf.Configuration().Servers {
		if srv.Suffrage != raft.Voter {
			continue
		}
		voters++
		if string(srv.ID) == c.n.cfg.NodeID || c.n.gossip == nil || c.n.gossip.Alive(string(srv.ID)) {
			alive++
		}
	}
	g(c.voters, float64(voters))
	g(c.votersAlive, float64(alive))
}

// grpcMetrics counts the calls this node's gRPC server handled, by method
// and status code, and times unary ones (streams are counted when they end;
// their duration is the stream's life, not a latency, so not timed).
type grpcMetrics struct {
	handled *prometheus.CounterVec
	seconds *prometheus.HistogramVec
	log     *slog.Logger // refused requests at debug
}

func newGRPCMetrics(reg prometheus.Registerer, log *slog.Logger) *grpcMetrics {
	m := &grpcMetrics{log: log,
		handled: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "hodei_grpc_server_handled_total",
			Help: "RPCs (and streams) completed by this node's gRPC server, by service, method and gRPC code."},
			[]string{"service", "method", "code"}),
		seconds: prometheus.NewHistogramVec(prometheus.HistogramOpts{Name: "hodei_grpc_server_handling_seconds",
			Help:    "Time this node's gRPC server took to answer unary RPCs, by service and method.",
			Buckets: prometheus.ExponentialBuckets(0.0001, 4, 10)}, []string{"service", "method"}),
	}
	reg.MustRegister(m.handled, m.seconds)
	return m
}

func splitMethod(full string) (service, method string) {
	full = strings.TrimPrefix(full, "/")
	if i := strings.LastIndexByte(full, '/'); i >= 0 {
		return full[:i], full[i+1:]
	}
	return "unknown", full
}

func (m *grpcMetrics) unary(ctx context.Context, req any, info *grpc.UnaryServerInfo, h grpc.UnaryHandler) (any, error) {
	start := time.Now()
	resp, err := h(ctx, req)
	svc, meth := splitMethod(info.FullMethod)
	code := status.Code(err)
	m.handled.WithLabelValues(svc, meth, code.String()).Inc()
	m.seconds.WithLabelValues(svc, meth).Observe(time.Since(start).Seconds())
	m.refused(ctx, svc, meth, code, err)
	return resp, err
}

// refused logs a call that did not succeed at debug (its class, service,
// method and code, are counted in hodei_grpc_server_handled_total).
func (m *grpcMetrics) refused(ctx context.Context, svc, meth string, code codes.Code, err error) {
	if err == nil || m.log == nil || !m.log.Enabled(ctx, slog.LevelDebug) {
		return
	}
	m.log.LogAttrs(ctx, slog.LevelDebug, "request refused", slog.String("service", svc), slog.String("method", meth),
		slog.String("code", code.String()), slog.String("err", status.Convert(err).Message()))
}

func (m *grpcMetrics) stream(srv any, ss grpc.ServerStream, info *grpc.StreamServerInfo, h grpc.StreamHandler) error {
	err := h(srv, ss)
	svc, meth := splitMethod(info.FullMethod)
	code := status.Code(err)
	m.handled.WithLabelValues(svc, meth, code.String()).Inc()
	m.refused(ss.Context(), svc, meth, code, err)
	return err
}
