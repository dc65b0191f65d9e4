package main

import (
	"fmt"
	"io"
	"sort"
	"strings"
	"sync"

	metrics "github.com/hashicorp/go-metrics"
)

// raftTimings is a go-metrics sink that sums hashicorp/raft's own timing
// samples (commitTime, dispatchLog, the follower's storeLogs, ...) over all
// groups and nodes of a --dev bench, so that --stats can say where a Raft
// round's time goes. Samples are in milliseconds.
type raftTimings struct {
	mu      sync.Mutex
	samples map[string]*timingSum
	gauges  map[string]*timingSum
}

type timingSum struct {
	n   int
	sum float64
}

func newRaftTimings() *raftTimings {
	return &raftTimings{samples: map[string]*timingSum{}, gauges: map[string]*timingSum{}}
}

// install makes t the process's go-metrics sink.
func (t *raftTimings) install() error {
	conf := metrics.DefaultConfig("bench")
	conf.EnableHostname = false
	conf.EnableRuntimeMetrics = false
	conf.EnableServiceLabel = false
	conf.EnableHostnameLabel = false
	_, err := metrics.NewGlobal(conf, t)
	return err
}

// reset forgets everything recorded so far (the start-up phase).
func (t *raftTimings) reset() {
	t.mu.Lock()
	t.samples = map[string]*timingSum{}
	t.gauges = map[string]*timingSum{}
	t.mu.Unlock()
}

func (t *raftTimings) add(m map[string]*timingSum, key []string, val float32) {
	k := strings.Join(key, ".")
	if !strings.HasPrefix(k, "bench.raft.") {
		return
	}
	k = strings.TrimPrefix(k, "bench.")
	t.mu.Lock()
	s := m[k]
	if s == nil {
		s = &timingSum{}
		m[k] = s
	}
	s.n++
	s.sum += float64(val)
	t.mu.Unlock()
}

func (t *raftTimings) SetGauge(key []string, val float32) { t.add(t.gauges, key, val) }
func (t *raftTimings) SetGaugeWithLabels(key []string, val float32, _ []metrics.Label) {
	t.add(t.gauges, key, val)
}
func (t *raftTimings) EmitKey([]string, float32)                                {}
func (t *raftTimings) IncrCounter([]string, float32)                            {}
func (t *raftTimings) IncrCounterWithLabels([]string, float32, []metrics.Label) {}
func (t *raftTimings) AddSample(key []string, val float32)                      { t.add(t.samples, key, val) }
func (t *raftTimings) AddSampleWithLabels(key []string, val float32, _ []metrics.Label) {
	t.add(t.samples, key, val)
}

// print writes the mean of every timing and gauge raft reported.
func (t *raftTimings) print(w io.Writer) {
	t.mu.Lock()
	defer t.mu.Unlock()
	keys := make([]string, 0, len(t.samples))
	for k := range t.samples {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	fmt.Fprintln(w, "raft timings (all groups and nodes, mean):")
	for _, k := range keys {
		s := t.samples[k]
		fmt.Fprintf(w, "  %-52s %8d x %8.3f ms\n", k, s.n, s.sum/float64(s.n))
	}
	keys = keys[:0]
	for k := range t.gauges {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	for _, k := range keys {
		s := t.gauges[k]
		fmt.Fprintf(w, "  %-52s %8d x %8.2f (gauge)\n", k, s.n, s.sum/float64(s.n))
	}
}
