package cluster

import (
	"bytes"
	"context"
	"log/slog"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
	dto "github.com/prometheus/client_model/go"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/hodei-io/hodei/proto/hodeiv1"
	"github.com/hodei-io/hodei/worker"
)

// metricValue sums the samples of a metric family whose labels include want.
func metricValue(t *testing.T, n *Node, name string, want map[string]string) (float64, bool) {
	t.Helper()
	mfs, err := n.Registry().Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, mf := range mfs {
		if mf.GetName() != name {
			continue
		}
		sum, found := 0.0, false
	next:
		for _, m := range mf.GetMetric() {
			labels := map[string]string{}
			for _, l := range m.GetLabel() {
				labels[l.GetName()] = l.GetValue()
			}
			for k, v := range want {
				if labels[k] != v {
					continue next
				}
			}
			found = true
			sum += sampleValue(m)
		}
		return sum, found
	}
	return 0, false
}

func sampleValue(m *dto.Metric) float64 {
	switch {
	case m.GetCounter() != nil:
		return m.GetCounter().GetValue()
	case m.GetGauge() != nil:
		return m.GetGauge().GetValue()
	case m.GetHistogram() != nil:
		return float64(m.GetHistogram().GetSampleCount())
	}
	return 0
}

// The metrics an operator alerts on exist on a real cluster and say what
// happened: groups with leaders and live voters, a tenant's jobs submitted
// and finished, leases granted, gRPC calls by method and code, log store
// commits.
func TestOperatorMetrics(t *testing.T) {
	tc := startCluster(t, 3, 2)
	c := newClient(t, tc.addrs()...)
	startWorker(t, &worker.ShellExecutor{}, 2, tc.addrs()...)
	r, err := c.Submit(context.Background(), &hodeiv1.JobSpec{Tenant: "acme", Command: []string{"true"}})
	if err != nil {
		t.Fatal(err)
	}
	waitFor(t, 20*time.Second, "the job to succeed", func() bool {
		j, err := c.Get(context.Background(), r.GetJob().GetId())
		return err == nil && j.GetState() == hodeiv1.JobState_JOB_STATE_SUCCEEDED
	})
	shard := map[string]string{"group": "0"}
	if r.GetJob().GetShard() == 1 {
		shard["group"] = "1"
	}
	waitFor(t, 10*time.Second, "every replica to count the job", func() bool {
		for _, n := range tc.nodes {
			if v, _ := metricValue(t, n, "hodei_jobs_finished_total", map[string]string{"tenant": "acme", "state": "succeeded"}); v != 1 {
				return false
			}
		}
		return true
	})
	leaders := 0.0
	for _, n := range tc.nodes {
		for _, group := range []string{"0", "1", "meta"} {
			g := map[string]string{"group": group}
			if v, ok := metricValue(t, n, "hodei_group_has_leader", g); !ok || v != 1 {
				t.Errorf("%s: hodei_group_has_leader{group=%s} = %v (present %v)", n.cfg.NodeID, group, v, ok)
			}
			for _, name := range []string{"hodei_group_voters", "hodei_group_voters_alive"} {
				if v, _ := metricValue(t, n, name, g); v != 3 {
					t.Errorf("%s: %s{group=%s} = %v, want 3", n.cfg.NodeID, name, group, v)
				}
			}
		}
		v, _ := metricValue(t, n, "hodei_group_leader", shard)
		leaders += v
		for _, name := range []string{"hodei_jobs_submitted_total", "hodei_lease_grants_total"} {
			if v, _ := metricValue(t, n, name, nil); v < 1 {
				t.Errorf("%s: %s = %v, want >= 1", n.cfg.NodeID, name, v)
			}
		}
		if v, _ := metricValue(t, n, "hodei_shard_queue_depth", shard); v != 0 {
			t.Errorf("%s: queue depth %v after the job ran", n.cfg.NodeID, v)
		}
		if _, ok := metricValue(t, n, "hodei_shard_oldest_ready_seconds", shard); !ok {
			t.Errorf("%s: no hodei_shard_oldest_ready_seconds", n.cfg.NodeID)
		}
		if v, _ := metricValue(t, n, "hodei_log_store_commits_total", nil); v < 1 {
			t.Errorf("%s: log store commits %v", n.cfg.NodeID, v)
		}
	}
	if leaders != 1 {
		t.Errorf("shard %s has %v leaders by hodei_group_leader, want 1", shard["group"], leaders)
	}
	// The job's one lease: its dispatch wait observed once, by the shard leader.
	dispatched := 0.0
	for _, n := range tc.nodes {
		v, _ := metricValue(t, n, "hodei_dispatch_latency_seconds", nil)
		dispatched += v
	}
	if dispatched != 1 {
		t.Errorf("hodei_dispatch_latency_seconds counted %v leases over the cluster, want 1", dispatched)
	}
	// A snapshot of the job's shard: captured and persisted, timed.
	sh := 0
	if shard["group"] == "1" {
		sh = 1
	}
	if err := tc.nodes[0].shards[sh].raft.Snapshot().Error(); err != nil {
		t.Fatal(err)
	}
	for _, phase := range []string{"capture", "persist"} {
		if v, _ := metricValue(t, tc.nodes[0], "hodei_snapshots_total", map[string]string{"group": "shard", "phase": phase, "outcome": "ok"}); v < 1 {
			t.Errorf("hodei_snapshots_total{phase=%s,outcome=ok} = %v after a snapshot", phase, v)
		}
		if v, _ := metricValue(t, tc.nodes[0], "hodei_snapshot_seconds", map[string]string{"group": "shard", "phase": phase}); v < 1 {
			t.Errorf("hodei_snapshot_seconds{phase=%s} has %v samples after a snapshot", phase, v)
		}
	}
	submits := 0.0
	for _, n := range tc.nodes {
		v, _ := metricValue(t, n, "hodei_grpc_server_handled_total", map[string]string{"service": "hodei.v1.JobService", "method": "SubmitJob", "code": "OK"})
		submits += v
	}
	if submits < 1 {
		t.Errorf("no SubmitJob counted OK by hodei_grpc_server_handled_total")
	}
}

// A refused call is counted by code and logged at debug with its class;
// a successful one is not logged.
func TestGRPCInterceptorLogsRefusals(t *testing.T) {
	var buf bytes.Buffer
	reg := prometheus.NewRegistry()
	m := newGRPCMetrics(reg, slog.New(slog.NewTextHandler(&buf, &slog.HandlerOptions{Level: slog.LevelDebug})))
	info := &grpc.UnaryServerInfo{FullMethod: "/hodei.v1.JobService/SubmitJob"}
	refuse := func(context.Context, any) (any, error) {
		return nil, status.Error(codes.InvalidArgument, "spec 0: command is empty")
	}
	ok := func(context.Context, any) (any, error) { return "fine", nil }
	if _, err := m.unary(context.Background(), nil, info, refuse); status.Code(err) != codes.InvalidArgument {
		t.Fatalf("interceptor changed the error: %v", err)
	}
	if _, err := m.unary(context.Background(), nil, info, ok); err != nil {
		t.Fatal(err)
	}
	out := buf.String()
	if strings.Count(out, "request refused") != 1 || !strings.Contains(out, "method=SubmitJob") ||
		!strings.Contains(out, "code=InvalidArgument") || !strings.Contains(out, `err="spec 0: command is empty"`) {
		t.Fatalf("log:\n%s", out)
	}
	if v := testutil.ToFloat64(m.handled.WithLabelValues("hodei.v1.JobService", "SubmitJob", "InvalidArgument")); v != 1 {
		t.Fatalf("refused calls counted %v", v)
	}
	// At info the refusal is counted, not logged.
	buf.Reset()
	m.log = slog.New(slog.NewTextHandler(&buf, nil))
	_, _ = m.unary(context.Background(), nil, info, refuse)
	if buf.Len() != 0 {
		t.Fatalf("logged at info: %s", buf.String())
	}
}
