package main

import (
	"context"
	"encoding/binary"
	"fmt"
	"os/exec"
	"sort"
	"sync"
	"sync/atomic"
	"time"

	"github.com/hodei-io/hodei/client"
	"github.com/hodei-io/hodei/proto/hodeiv1"
)

// benchKind is the kind of the no-op jobs of the Go handler modes.
const benchKind = "bench.noop"

// latencies records submit -> handler start durations.
type latencies struct {
	mu sync.Mutex
	d  []time.Duration
}

func (l *latencies) add(d time.Duration) {
	l.mu.Lock()
	l.d = append(l.d, d)
	l.mu.Unlock()
}

// pct returns the p-th quantile in ms.
func (l *latencies) pct(p float64) float64 {
	l.mu.Lock()
	defer l.mu.Unlock()
	if len(l.d) == 0 {
		return 0
	}
	sort.Slice(l.d, func(i, j int) bool { return l.d[i] < l.d[j] })
	return float64(l.d[int(float64(len(l.d)-1)*p)].Microseconds()) / 1000
}

// stampPayload is a bench job's payload: its submit time.
func stampPayload(t time.Time) []byte {
	b := make([]byte, 8)
	binary.BigEndian.PutUint64(b, uint64(t.UnixNano()))
	return b
}

func payloadStamp(p []byte) (time.Time, bool) {
	if len(p) < 8 {
		return time.Time{}, false
	}
	return time.Unix(0, int64(binary.BigEndian.Uint64(p))), true
}

// goWorkers runs in-process Go workers with a no-op handler for benchKind,
// one per target node (its own address first), through the real worker
// stream, until stop is called.
type goWorkers struct {
	cancel  context.CancelFunc
	wg      sync.WaitGroup
	started atomic.Int64 // handler calls
	lat     latencies
	onStart func() // optional, called by each handler call
	clients []*client.Client
}

func startGoWorkers(targets []string, perNode int, onStart func()) (*goWorkers, error) {
	ctx, cancel := context.WithCancel(context.Background())
	g := &goWorkers{cancel: cancel, onStart: onStart}
	for i := range targets {
		addrs := append(append([]string(nil), targets[i:]...), targets[:i]...)
		c, err := client.New(client.Config{Addrs: addrs, TLSFiles: clientTLSFiles, Token: benchToken})
		if err != nil {
			g.stop()
			return nil, err
		}
		g.clients = append(g.clients, c)
		w, err := client.NewWorker(c, client.WorkerConfig{ID: fmt.Sprintf("bench-go-%d", i), Concurrency: perNode})
		if err != nil {
			g.stop()
			return nil, err
		}
		w.Handle(benchKind, func(ctx context.Context, j *client.Job) error {
			if at, ok := payloadStamp(j.Payload()); ok {
				g.lat.add(time.Since(at))
			}
			g.started.Add(1)
			if g.onStart != nil {
				g.onStart()
			}
			return nil
		})
		g.wg.Add(1)
		go func() {
			defer g.wg.Done()
			_ = w.Run(ctx)
		}()
	}
	return g, nil
}

func (g *goWorkers) stop() {
	g.cancel()
	g.wg.Wait()
	for _, c := range g.clients {
		c.Close()
	}
}

// benchE2EGo submits o.jobs no-op Go-handler jobs in batches of o.batch from
// o.clients goroutines while in-process workers run them (the shape of
// ../shared/peers: River's InsertMany of 1,000 with 2 inserters).
func benchE2EGo(ctx context.Context, c *benchClients, o benchOptions, targets []string) (benchReport, error) {
	g, err := startGoWorkers(targets, max(1, o.workers/len(targets)), nil)
	if err != nil {
		return benchReport{}, err
	}
	defer g.stop()
	rep, err := runE2E(ctx, c, o, "e2e-go", 5*time.Millisecond)
	if err != nil {
		return rep, err
	}
	rep.StartP50Ms, rep.StartP99Ms = g.lat.pct(0.50), g.lat.pct(0.99)
	rep.HandlerCalls = g.started.Load()
	// Every job must have succeeded: a finished job that failed would make
	// the rate a lie.
	for _, st := range []hodeiv1.JobState{hodeiv1.JobState_JOB_STATE_FAILED, hodeiv1.JobState_JOB_STATE_CANCELLED, hodeiv1.JobState_JOB_STATE_DEAD} {
		res, err := c.main().List(ctx, &hodeiv1.ListJobsRequest{State: st, Limit: 1})
		if err != nil {
			return rep, err
		}
		if len(res.GetJobs()) > 0 {
			return rep, fmt.Errorf("job %s ended %s: the run is not valid", res.GetJobs()[0].GetId(), st)
		}
	}
	return rep, nil
}

// benchLatency submits o.jobs jobs one at a time into an idle cluster and
// waits for each to reach its handler: submit -> handler start latency.
func benchLatency(ctx context.Context, c *benchClients, o benchOptions, targets []string) (benchReport, error) {
	startedCh := make(chan struct{}, 1)
	g, err := startGoWorkers(targets, max(1, o.workers/len(targets)), func() {
		select {
		case startedCh <- struct{}{}:
		default:
		}
	})
	if err != nil {
		return benchReport{}, err
	}
	defer g.stop()
	rep := benchReport{Mode: "latency", Clients: 1, Batch: 1, Tenants: o.tenants}
	t0 := time.Now()
	for i := 0; i < o.jobs; i++ {
		spec := benchSpec(o, int64(i))
		if _, err := c.pick(i, spec.GetTenant()).Submit(ctx, spec); err != nil {
			return rep, err
		}
		select {
		case <-startedCh:
		case <-ctx.Done():
			return rep, ctx.Err()
		case <-time.After(10 * time.Second):
			return rep, fmt.Errorf("job %d did not reach a handler within 10s", i)
		}
		rep.Submitted++
	}
	rep.Completed = rep.Submitted
	rep.Seconds = time.Since(t0).Seconds()
	rep.StartP50Ms, rep.StartP99Ms = g.lat.pct(0.50), g.lat.pct(0.99)
	return rep, nil
}

// benchForkExec measures this machine's raw fork/exec rate: o.clients
// goroutines running `true` for o.duration, the physical limit of shell jobs.
func benchForkExec(ctx context.Context, o benchOptions) (benchReport, error) {
	rep := benchReport{Mode: "forkexec", Clients: o.clients}
	var n atomic.Int64
	var wg sync.WaitGroup
	end := time.Now().Add(o.duration)
	t0 := time.Now()
	var firstErr atomic.Value
	for i := 0; i < o.clients; i++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for ctx.Err() == nil && time.Now().Before(end) {
				if err := exec.Command("true").Run(); err != nil {
					firstErr.CompareAndSwap(nil, err)
					return
				}
				n.Add(1)
			}
		}()
	}
	wg.Wait()
	if err, _ := firstErr.Load().(error); err != nil {
		return rep, err
	}
	rep.Completed = n.Load()
	rep.Seconds = time.Since(t0).Seconds()
	rep.JobsPerSec = float64(rep.Completed) / rep.Seconds
	return rep, nil
}

// goSpec is a no-op Go-handler job stamped with its submit time.
func goSpec(tenant string, at time.Time) *hodeiv1.JobSpec {
	return &hodeiv1.JobSpec{Tenant: tenant, Kind: benchKind, Payload: stampPayload(at)}
}
