package cluster

import (
	"io"
	"time"

	"github.com/hashicorp/raft"
	"github.com/prometheus/client_golang/prometheus"
)

// snapshotMetrics time the three phases of a Raft snapshot of any group:
// capture (the FSM's Snapshot, under its lock: it holds up Apply), persist
// (writing the captured state to the snapshot store) and restore
// (installing a snapshot: at start, or one sent by the leader). Label
// group is "shard" or "meta" (bounded), phase as above, outcome "ok" or
// "error".
type snapshotMetrics struct {
	seconds *prometheus.HistogramVec
	total   *prometheus.CounterVec
}

func newSnapshotMetrics(reg prometheus.Registerer) *snapshotMetrics {
	m := &snapshotMetrics{
		seconds: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name: "hodei_snapshot_seconds", Help: "Time of a Raft snapshot phase (capture, persist, restore) by group kind (shard, meta).",
			Buckets: prometheus.ExponentialBuckets(0.0005, 4, 10)}, []string{"group", "phase"}),
		total: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "hodei_snapshots_total", Help: "Raft snapshot phases run, by group kind, phase and outcome (ok, error)."}, []string{"group", "phase", "outcome"}),
	}
	// Every series exists from the start (at 0), so that rules and
	// dashboards see the error series before the first failure.
	for _, g := range []string{"shard", "meta"} {
		for _, p := range []string{"capture", "persist", "restore"} {
			m.seconds.WithLabelValues(g, p)
			m.total.WithLabelValues(g, p, "ok")
			m.total.WithLabelValues(g, p, "error")
		}
	}
	reg.MustRegister(m.seconds, m.total)
	return m
}

func (m *snapshotMetrics) observe(group, phase string, start time.Time, err error) {
	m.seconds.WithLabelValues(group, phase).Observe(time.Since(start).Seconds())
	outcome := "ok"
	if err != nil {
		outcome = "error"
	}
	m.total.WithLabelValues(group, phase, outcome).Inc()
}

// timedFSM is a raft.FSM that reports its snapshot phases to m.
type timedFSM struct {
	raft.FSM
	m     *snapshotMetrics
	group string
}

func (t timedFSM) Snapshot() (raft.FSMSnapshot, error) {
	start := time.Now()
	s, err := t.FSM.Snapshot()
	t.m.observe(t.group, "capture", start, err)
	if err != nil {
		return nil, err
	}
	return timedSnapshot{FSMSnapshot: s, t: t}, nil
}

func (t timedFSM) Restore(rc io.ReadCloser) error {
	start := time.Now()
	err := t.FSM.Restore(rc)
	t.m.observe(t.group, "restore", start, err)
	return err
}

type timedSnapshot struct {
	raft.FSMSnapshot
	t timedFSM
}

func (s timedSnapshot) Persist(sink raft.SnapshotSink) error {
	start := time.Now()
	err := s.FSMSnapshot.Persist(sink)
	s.t.m.observe(s.t.group, "persist", start, err)
	return err
}
