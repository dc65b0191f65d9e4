package main

import (
	"context"
	"encoding/json"
	"fmt"
	"log/slog"
	"os"
	"os/signal"
	"sort"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/spf13/cobra"

	"github.com/hodei-io/hodei/client"
	"github.com/hodei-io/hodei/cluster"
	"github.com/hodei-io/hodei/proto/hodeiv1"
)

func init() { register(newBenchCmd) }

type benchOptions struct {
	clients  int
	duration time.Duration
	batch    int
	tenants  int
	jobs     int
	cmdBytes int
	dev      bool
	nodes    int
	workers  int
	mode     string
	shards   int
	perGroup bool
	nudge    bool // --dev: cluster.Config.CommitNudge
	tls      bool // with dev: mutual TLS everywhere (issue 12)
	waves    int
	route    string
	prof     benchProfile
	goJobs   bool // jobs are no-op Go-handler jobs (e2e-go, latency)
	steps    int  // pipeline modes: steps (0 = the mode's default)
	auth     bool // issue 12: --dev with tokens on (the clients use the admin token, the workers a worker token)
}

// benchToken is the token of the bench's clients and workers: the dev
// cluster's admin token with --dev --auth, else --token.
var benchToken string

type benchReport struct {
	Mode          string  `json:"mode"`
	Clients       int     `json:"clients"`
	Batch         int     `json:"batch"`
	Tenants       int     `json:"tenants"`
	Submitted     int64   `json:"submitted"`
	Errors        int64   `json:"errors"`
	Seconds       float64 `json:"seconds"`
	SubmitsPerSec float64 `json:"submits_per_sec"`
	P50Ms         float64 `json:"p50_ms"`
	P99Ms         float64 `json:"p99_ms"`
	Completed     int64   `json:"completed,omitempty"`
	JobsPerSec    float64 `json:"jobs_per_sec,omitempty"`
	E2ESeconds    float64 `json:"e2e_seconds,omitempty"`
	// CPU of this whole process and its children (the jobs run by embedded
	// workers) during the measured phase (with --dev: cluster, load
	// generator and workers), and per acknowledged submit (submit mode) or
	// per completed job (e2e).
	CPUUserSec  float64 `json:"cpu_user_sec"`
	CPUSysSec   float64 `json:"cpu_sys_sec"`
	CPUMsPerJob float64 `json:"cpu_ms_per_job"`
	// e2e-go and latency: submit -> handler start.
	StartP50Ms float64 `json:"start_p50_ms,omitempty"`
	StartP99Ms float64 `json:"start_p99_ms,omitempty"`
	// e2e-go: handler calls (>= completed: a job can run twice).
	HandlerCalls int64 `json:"handler_calls,omitempty"`
	// pipeline modes (issue 13): the pipeline, and wall time per step.
	PipelineID string  `json:"pipeline_id,omitempty"`
	PerStepMs  float64 `json:"per_step_ms,omitempty"`
}

func newBenchCmd() *cobra.Command {
	o := benchOptions{}
	cmd := &cobra.Command{
		Use:   "bench",
		Short: "Load generator: acknowledged submits/s and end-to-end jobs/s",
		Long: `Load generator.

  --mode submit   submit no-op jobs from --clients goroutines for --duration; reports
                  acknowledged submits/s and p50/p99 submit latency.
  --mode e2e      submit --jobs no-op jobs ("true") and wait until all have SUCCEEDED;
                  reports jobs/s end to end (needs workers: hodei dev has them, or use --dev).
  --mode e2e-go   submit --jobs no-op Go-handler jobs (kind bench.noop) in batches of --batch
                  from --clients goroutines while in-process Go workers (one per node, --workers
                  slots in all, through the worker stream) run them; reports jobs/s end to end,
                  CPU per job and submit -> handler start p50/p99.
  --mode latency  idle cluster: submit --jobs jobs one at a time, each after the previous one
                  reached its Go handler; reports submit -> handler start p50/p99.
  --mode forkexec no cluster: --clients goroutines run "true" for --duration; the machine's
                  raw fork/exec rate, the physical limit of shell jobs.
  --mode idle     submit nothing for --duration: with --dev, the CPU an idle cluster uses.
  --mode pipeline-fan    one pipeline of --steps (default 1000) no-op steps fanned out, then
                  one fan-in step; reports the wall time from submit to SUCCEEDED.
  --mode pipeline-chain  one pipeline, a chain of --steps (default 100) no-op steps; reports
                  the wall time and the time per step (needs shell workers, as e2e).

With --dev the command starts its own in-process cluster (--nodes, --workers) on
free loopback ports; otherwise it targets --addr.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if o.clients < 1 || o.batch < 1 || o.tenants < 1 {
				return fmt.Errorf("--clients, --batch and --tenants must be >= 1")
			}
			switch o.mode {
			case "submit", "e2e", "e2e-go", "latency", "forkexec", "idle", "pipeline-fan", "pipeline-chain":
			default:
				return fmt.Errorf("--mode must be submit, e2e, e2e-go, latency, forkexec, idle, pipeline-fan or pipeline-chain")
			}
			if o.tls && !o.dev {
				return fmt.Errorf("--tls needs --dev; for a running cluster give --tls-ca, --tls-cert and --tls-key")
			}
			if o.mode == "forkexec" {
				rep, err := benchForkExec(context.Background(), o)
				if err != nil {
					return err
				}
				if global.output == "json" {
					return json.NewEncoder(cmd.OutOrStdout()).Encode(rep)
				}
				fmt.Fprintf(cmd.OutOrStdout(), "fork/exec of true from %d goroutines: %d in %.2fs = %.0f/s\n", rep.Clients, rep.Completed, rep.Seconds, rep.JobsPerSec)
				return nil
			}
			o.goJobs = o.mode == "e2e-go" || o.mode == "latency"
			ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
			defer stop()
			targets := addrs()
			var d *devCluster
			var timings *raftTimings
			if o.dev && o.prof.stats {
				timings = newRaftTimings()
				if err := timings.install(); err != nil {
					return err
				}
			}
			if o.dev {
				var err error
				do := devOptions{nodes: o.nodes, workers: o.workers, shards: o.shards, perGroup: o.perGroup, nudge: o.nudge, tls: o.tls, auth: o.auth}
				if o.waves >= 0 {
					do.waves = &o.waves
				}
				d, err = startDev(ctx, do, slog.New(slog.DiscardHandler))
				if err != nil {
					return err
				}
				defer d.Close()
				targets = d.addrs
				if o.tls {
					clientTLSFiles = d.clientTLS // the bench's clients use the dev cluster's client certificate
				}
				benchToken = d.adminToken
			} else {
				tok, err := clientToken()
				if err != nil {
					return err
				}
				benchToken = tok
			}
			var nodes []*cluster.Node
			if o.dev {
				nodes = d.nodes
			}
			c, err := newBenchClients(targets, o.route, nodes)
			if err != nil {
				return err
			}
			defer c.Close()
			if nodes != nil {
				spread, err := waitBalanced(ctx, nodes, 2*time.Second, 60*time.Second)
				if ctx.Err() != nil {
					return ctx.Err()
				}
				if err != nil {
					fmt.Fprintf(cmd.ErrOrStderr(), "warning: %v; measuring anyway\n", err)
				} else {
					fmt.Fprintf(cmd.ErrOrStderr(), "shard leaders per node: %s\n", spread)
				}
			}
			var before devStats
			if o.prof.stats && nodes != nil {
				before = snapshotStats(nodes)
			}
			if timings != nil {
				timings.reset()
			}
			if err := o.prof.start(); err != nil {
				return err
			}
			u0, s0 := cpuTime()
			t0 := time.Now()
			var rep benchReport
			switch o.mode {
			case "submit":
				rep, err = benchSubmit(ctx, c, o, o.duration, 0)
			case "e2e":
				rep, err = benchE2E(ctx, c, o)
			case "e2e-go":
				rep, err = benchE2EGo(ctx, c, o, targets)
			case "latency":
				rep, err = benchLatency(ctx, c, o, targets)
			case "pipeline-fan":
				rep, err = benchPipeline(ctx, c, o, "fan")
			case "pipeline-chain":
				rep, err = benchPipeline(ctx, c, o, "chain")
			case "idle":
				rep = benchReport{Mode: "idle"}
				select {
				case <-ctx.Done():
					err = ctx.Err()
				case <-time.After(o.duration):
				}
				rep.Seconds = time.Since(t0).Seconds()
			}
			u1, s1 := cpuTime()
			el := time.Since(t0)
			if perr := o.prof.stop(); err == nil {
				err = perr
			}
			if err != nil {
				return err
			}
			rep.CPUUserSec, rep.CPUSysSec = (u1 - u0).Seconds(), (s1 - s0).Seconds()
			jobs := rep.Submitted
			if rep.Mode == "e2e" || rep.Mode == "e2e-go" || rep.PipelineID != "" {
				jobs = rep.Completed
			}
			if jobs > 0 {
				rep.CPUMsPerJob = 1000 * (rep.CPUUserSec + rep.CPUSysSec) / float64(jobs)
			}
			if o.prof.stats && nodes != nil {
				printStatsDelta(cmd.ErrOrStderr(), before, snapshotStats(nodes), el, rep.Submitted)
			}
			if timings != nil {
				timings.print(cmd.ErrOrStderr())
			}
			if global.output == "json" {
				return json.NewEncoder(cmd.OutOrStdout()).Encode(rep)
			}
			out := cmd.OutOrStdout()
			if rep.PipelineID != "" {
				fmt.Fprintf(out, "mode=%s pipeline %s: %d steps SUCCEEDED in %.2fs from submit (submit acknowledged in %.1f ms): %.2f ms per step, %.0f steps/s\n",
					rep.Mode, rep.PipelineID, rep.Completed, rep.E2ESeconds, rep.Seconds*1000, rep.PerStepMs, rep.JobsPerSec)
				fmt.Fprintf(out, "cpu (process and its children, measured phase): user %.2fs sys %.2fs = %.2f cores, %.3f ms per step\n",
					rep.CPUUserSec, rep.CPUSysSec, (rep.CPUUserSec+rep.CPUSysSec)/el.Seconds(), rep.CPUMsPerJob)
				return nil
			}
			fmt.Fprintf(out, "mode=%s clients=%d batch=%d tenants=%d\n", rep.Mode, rep.Clients, rep.Batch, rep.Tenants)
			fmt.Fprintf(out, "submitted %d jobs in %.2fs: %.0f acknowledged submits/s, latency p50 %.2f ms p99 %.2f ms, %d errors\n",
				rep.Submitted, rep.Seconds, rep.SubmitsPerSec, rep.P50Ms, rep.P99Ms, rep.Errors)
			if rep.Mode == "e2e" || rep.Mode == "e2e-go" {
				fmt.Fprintf(out, "completed %d jobs in %.2fs end to end: %.0f jobs/s\n", rep.Completed, rep.E2ESeconds, rep.JobsPerSec)
			}
			if rep.Mode == "e2e-go" || rep.Mode == "latency" {
				fmt.Fprintf(out, "submit -> handler start: p50 %.2f ms p99 %.2f ms\n", rep.StartP50Ms, rep.StartP99Ms)
			}
			if rep.Mode == "e2e-go" {
				fmt.Fprintf(out, "handler calls %d for %d jobs, none failed or cancelled\n", rep.HandlerCalls, rep.Completed)
			}
			what := "submit"
			if rep.Mode == "e2e" || rep.Mode == "e2e-go" {
				what = "completed job"
			}
			fmt.Fprintf(out, "cpu (process and its children, measured phase): user %.2fs sys %.2fs = %.2f cores, %.3f ms per %s\n",
				rep.CPUUserSec, rep.CPUSysSec, (rep.CPUUserSec+rep.CPUSysSec)/el.Seconds(), rep.CPUMsPerJob, what)
			return nil
		},
	}
	f := cmd.Flags()
	f.StringVar(&o.mode, "mode", "submit", "submit, e2e, e2e-go, latency, forkexec, idle, pipeline-fan or pipeline-chain")
	f.IntVar(&o.steps, "steps", 0, "pipeline modes: steps (default 1000 fanned out for pipeline-fan, 100 for pipeline-chain)")
	f.IntVar(&o.clients, "clients", 64, "concurrent submitters")
	f.DurationVar(&o.duration, "duration", 10*time.Second, "submit and idle modes: how long to run")
	f.IntVar(&o.batch, "batch", 1, "jobs per SubmitJobs call (1 = SubmitJob)")
	f.IntVar(&o.tenants, "tenants", 16, "number of tenants the jobs are spread over")
	f.IntVar(&o.jobs, "jobs", 20000, "e2e mode: number of jobs")
	f.IntVar(&o.cmdBytes, "cmd-bytes", 0, "pad each job's command with an argument of this many bytes")
	f.BoolVar(&o.dev, "dev", false, "start an in-process cluster instead of using --addr")
	f.BoolVar(&o.tls, "tls", false, "with --dev: mutual TLS everywhere and encrypted gossip (hodei dev --tls); against --addr give --tls-ca/--tls-cert/--tls-key instead")
	f.BoolVar(&o.auth, "auth", false, "with --dev: run the cluster with tokens on (measures the cost of auth)")
	f.IntVar(&o.nodes, "nodes", 3, "with --dev: nodes")
	f.IntVar(&o.workers, "workers", 64, "with --dev: embedded worker concurrency")
	f.IntVar(&o.shards, "shards", 8, "with --dev: shards")
	f.IntVar(&o.waves, "waves", -1, "with --dev: proposal waves each node keeps in Raft (0 = off, each shard pipelines alone; default: the server default)")
	f.BoolVar(&o.nudge, "commit-nudge", false, "with --dev: shard leaders follow each burst with a barrier so followers learn commits at once (hodei server --commit-nudge)")
	f.BoolVar(&o.perGroup, "per-group-log-store", false, "with --dev: one raft-boltdb file per Raft group instead of the shared log store")
	f.StringVar(&o.route, "route", "client", "which node each submit goes to: client (the Go client's default: the shard's leader, learned from Status), first (all to the first node, which forwards), spread (submitters spread evenly over the nodes) or leader (--dev: the tenant's shard leader, from the in-process nodes)")
	f.StringVar(&o.prof.cpu, "cpuprofile", "", "write a CPU profile of the measured phase to this file")
	f.StringVar(&o.prof.block, "blockprofile", "", "write a block profile of the measured phase to this file")
	f.StringVar(&o.prof.mutex, "mutexprofile", "", "write a mutex profile of the measured phase to this file")
	f.StringVar(&o.prof.trace, "trace", "", "write an execution trace of the measured phase to this file")
	f.BoolVar(&o.prof.stats, "stats", false, "with --dev: print log store commits and per-shard entries of the measured phase (to stderr)")
	return cmd
}

func benchSpec(o benchOptions, i int64) *hodeiv1.JobSpec {
	if o.goJobs {
		return goSpec(fmt.Sprintf("bench-%d", i%int64(o.tenants)), time.Now())
	}
	cmd := []string{"true"}
	if o.cmdBytes > 0 {
		pad := make([]byte, o.cmdBytes)
		for k := range pad {
			pad[k] = 'x'
		}
		cmd = append(cmd, string(pad))
	}
	return &hodeiv1.JobSpec{Tenant: fmt.Sprintf("bench-%d", i%int64(o.tenants)), Command: cmd}
}

// benchSubmit submits for d, or until limit jobs (limit > 0).
func benchSubmit(ctx context.Context, c *benchClients, o benchOptions, d time.Duration, limit int64) (benchReport, error) {
	rep := benchReport{Mode: "submit", Clients: o.clients, Batch: o.batch, Tenants: o.tenants}
	var (
		next, submitted, errs atomic.Int64
		mu                    sync.Mutex
		lat                   []time.Duration
		wg                    sync.WaitGroup
	)
	end := time.Now().Add(d)
	start := time.Now()
	for g := 0; g < o.clients; g++ {
		wg.Add(1)
		go func(g int) {
			defer wg.Done()
			var local []time.Duration
			for ctx.Err() == nil {
				if limit == 0 && time.Now().After(end) {
					break
				}
				first := next.Add(int64(o.batch)) - int64(o.batch)
				n := int64(o.batch)
				if limit > 0 {
					if first >= limit {
						break
					}
					if first+n > limit {
						n = limit - first
					}
				}
				t0 := time.Now()
				cctx, cancel := context.WithTimeout(ctx, 30*time.Second)
				var err error
				if n == 1 && o.batch == 1 {
					spec := benchSpec(o, first)
					_, err = c.pick(g, spec.GetTenant()).Submit(cctx, spec)
				} else {
					specs := make([]*hodeiv1.JobSpec, n)
					for k := range specs {
						specs[k] = benchSpec(o, first+int64(k))
					}
					_, err = c.pick(g, specs[0].GetTenant()).SubmitBatch(cctx, specs)
				}
				cancel()
				if err != nil {
					errs.Add(1)
					continue
				}
				local = append(local, time.Since(t0))
				submitted.Add(n)
			}
			mu.Lock()
			lat = append(lat, local...)
			mu.Unlock()
		}(g)
	}
	wg.Wait()
	el := time.Since(start)
	sort.Slice(lat, func(i, j int) bool { return lat[i] < lat[j] })
	pct := func(p float64) float64 {
		if len(lat) == 0 {
			return 0
		}
		return float64(lat[int(float64(len(lat)-1)*p)].Microseconds()) / 1000
	}
	rep.Submitted, rep.Errors, rep.Seconds = submitted.Load(), errs.Load(), el.Seconds()
	rep.SubmitsPerSec = float64(rep.Submitted) / el.Seconds()
	rep.P50Ms, rep.P99Ms = pct(0.50), pct(0.99)
	return rep, nil
}

func benchE2E(ctx context.Context, c *benchClients, o benchOptions) (benchReport, error) {
	return runE2E(ctx, c, o, "e2e", 20*time.Millisecond)
}

// runE2E submits o.jobs jobs and waits, polling Status every poll, until
// as many more jobs have finished: the end-to-end rate.
func runE2E(ctx context.Context, c *benchClients, o benchOptions, mode string, poll time.Duration) (benchReport, error) {
	base, err := finished(ctx, c.main())
	if err != nil {
		return benchReport{}, err
	}
	start := time.Now()
	rep, err := benchSubmit(ctx, c, o, 0, int64(o.jobs))
	if err != nil {
		return rep, err
	}
	rep.Mode = mode
	for {
		done, err := finished(ctx, c.main())
		if err == nil && done-base >= rep.Submitted {
			rep.Completed = done - base
			break
		}
		select {
		case <-ctx.Done():
			return rep, ctx.Err()
		case <-time.After(poll):
		}
	}
	el := time.Since(start)
	rep.E2ESeconds = el.Seconds()
	rep.JobsPerSec = float64(rep.Completed) / el.Seconds()
	return rep, nil
}

// finished counts jobs that are not PENDING or RUNNING, from every shard
// leader's status (jobs minus queue minus running).
func finished(ctx context.Context, c *client.Client) (int64, error) {
	st, err := c.Status(ctx, "")
	if err != nil {
		return 0, err
	}
	var total int64
	for _, sh := range st.GetShards() {
		lst, err := c.Status(ctx, sh.GetLeaderAddress())
		if err != nil {
			return 0, err
		}
		for _, s := range lst.GetShards() {
			if s.GetShard() == sh.GetShard() {
				total += s.GetFinishedJobs()
			}
		}
	}
	return total, nil
}
