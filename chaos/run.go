package chaos

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"time"

	"github.com/hodei-io/hodei/client"
	"github.com/hodei-io/hodei/proto/hodeiv1"
)

// Config is a chaos run.
type Config struct {
	Binary          string
	Out             string
	Nodes           int
	Workers         int
	Concurrency     int // per worker
	Clients         int
	Rate            float64 // offered load: jobs submitted per second
	ReadRate        float64 // gets, stale gets and cancels per second
	ShellRate       float64 // of Rate, shell jobs per second (a process each); the rest are handler jobs
	BatchShare      float64 // share of jobs submitted in explicit batches of 2-20
	Tenants         int
	Duration        time.Duration // of load and faults
	Faults          string
	Seed            int64
	Network         string // auto, netns, loopback
	LeaseTTL        time.Duration
	ElectionTimeout time.Duration
	DrainBound      time.Duration // 0: lease TTL + 5 election timeouts + 20s
	OpTimeout       time.Duration
	// Schedules: cron schedules firing every second through the faults
	// (invariant 10, schedules.go); 0 = none.
	Schedules  int
	ServerArgs []string
	WorkerArgs []string
	Log        *slog.Logger
	// TLS runs the cluster, the workers and the harness with mutual TLS
	// and encrypted gossip (certificates in OUT/tls; tls.go).
	TLS bool
	// Auth runs the servers with tokens on (issue 12): a node secret and an
	// admin token chosen by the harness, used by every client and worker.
	Auth bool
}

// DefaultConfig returns the defaults used by `hodei chaos run`.
//
// Sizing: 1,000 jobs/s offered (the target). A shell job forks
// three processes (/bin/sh, date, sleep), and the 2-core development
// machine also runs the three servers, the workers and this harness, so
// only 20 jobs/s are shell jobs (about the whole load of the earlier
// 25-ops/s runs, so the shell executor is exercised as before); the rest
// are handler jobs (kind ExecKind) that the workers run in-process and that
// write the same exec-log line. 30% of the jobs go in explicit batches of
// 2-20, the others are single submits coalesced per shard by a
// client.Submitter. Handler jobs average ~90 ms (most are instant, 3% take
// 2 s), so ~100 of the 3 × 128 worker slots are busy.
func DefaultConfig() Config {
	return Config{Nodes: 3, Workers: 3, Concurrency: 128, Clients: 8, Rate: 1000, ReadRate: 100, ShellRate: 20,
		BatchShare: 0.3, Tenants: 16, Duration: 2 * time.Minute, Faults: FaultMixed, Seed: 1, Network: "auto",
		Out: "chaos-report", LeaseTTL: 5 * time.Second, ElectionTimeout: time.Second, OpTimeout: 2 * time.Second}
}

// Validate checks the config.
func (c *Config) Validate() error {
	switch {
	case c.Binary == "":
		return errors.New("no --binary")
	case c.Nodes < 1:
		return errors.New("--nodes must be at least 1")
	case c.Rate <= 0:
		return errors.New("--rate must be positive")
	case c.ReadRate < 0 || c.ShellRate < 0:
		return errors.New("--read-rate and --shell-rate must not be negative")
	case c.BatchShare < 0 || c.BatchShare > 1:
		return errors.New("--batch-share must be within 0..1")
	case c.Clients < 1:
		return errors.New("--clients must be at least 1")
	case c.Duration < 10*time.Second:
		return errors.New("--duration must be at least 10s")
	case c.Schedules < 0 || c.Schedules > 64:
		return errors.New("--schedules must be within 0..64")
	case c.Workers < 0 || c.Concurrency < 1:
		return errors.New("--workers must be >= 0 and --concurrency >= 1")
	}
	switch c.Network {
	case "auto", "netns", "loopback":
	default:
		return fmt.Errorf("--network must be auto, netns or loopback, got %q", c.Network)
	}
	if c.Log == nil {
		c.Log = slog.New(slog.NewTextHandler(os.Stderr, nil))
	}
	if c.DrainBound == 0 {
		c.DrainBound = c.LeaseTTL + 5*c.ElectionTimeout + 20*time.Second
	}
	return nil
}

// Run runs one chaos experiment and always returns a report (with Error set
// when the run could not complete). Every process and namespace it created
// is gone when it returns.
func Run(ctx context.Context, cfg Config) (*Report, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	rep := &Report{Seed: cfg.Seed, Faults: cfg.Faults, Nodes: cfg.Nodes, Workers: cfg.Workers, Clients: cfg.Clients,
		Duration: cfg.Duration, TargetRate: cfg.Rate, Ops: map[string]int{}, StartedAt: time.Now()}
	out, err := filepath.Abs(cfg.Out)
	if err != nil {
		return nil, err
	}
	rep.RunDir = out
	for _, p := range []string{"nodes", "workers", "exec.log", "history.jsonl", "report.json", "summary.txt", "tls", "admin-token", "node-secret"} {
		_ = os.RemoveAll(filepath.Join(out, p))
	}
	if err := os.MkdirAll(out, 0o755); err != nil {
		return nil, err
	}
	err = run(ctx, cfg, out, rep)
	if err != nil {
		rep.Error = err.Error()
	}
	if werr := writeReport(out, rep); werr != nil && err == nil {
		err = werr
	}
	return rep, err
}

func writeReport(out string, rep *Report) error {
	b, err := json.MarshalIndent(rep, "", "  ")
	if err != nil {
		return err
	}
	if err := os.WriteFile(filepath.Join(out, "report.json"), b, 0o644); err != nil {
		return err
	}
	f, err := os.Create(filepath.Join(out, "summary.txt"))
	if err != nil {
		return err
	}
	rep.WriteSummary(f)
	return f.Close()
}

func run(ctx context.Context, cfg Config, out string, rep *Report) error {
	log := cfg.Log
	needNet := cfg.Faults == FaultMixed || IsPartition(cfg.Faults)
	spares := 0
	if NeedsSpare(cfg.Faults) {
		spares = 1
	}
	var nw *Network
	switch {
	case cfg.Network == "netns" || (cfg.Network == "auto" && needNet):
		CleanupStale()
		if err := NetnsSupported(); err != nil {
			if cfg.Network == "netns" || IsPartition(cfg.Faults) {
				return fmt.Errorf("partitions are unsupported on this host: %w", err)
			}
			rep.Notes = append(rep.Notes, "network namespaces unavailable ("+err.Error()+"): partitions left out of mixed mode")
			break
		}
		n, err := NewNetwork(ctx, cfg.Nodes+spares)
		if err != nil {
			return fmt.Errorf("network namespaces: %w", err)
		}
		nw = n
		defer nw.Close()
	}
	rep.Network = "loopback"
	if nw != nil {
		rep.Network = "netns"
	}

	serverArgs := append([]string(nil), cfg.ServerArgs...)
	for _, a := range serverArgs {
		if strings.Contains(a, "unsafe-ack-before-commit") {
			rep.Notes = append(rep.Notes, "servers run with --unsafe-ack-before-commit (deliberately broken: submits acknowledged before Raft commit); violations are expected")
		}
	}
	if ServerSupports(cfg.Binary, "--lease-ttl") {
		serverArgs = append(serverArgs, "--lease-ttl", cfg.LeaseTTL.String())
	} else {
		rep.Notes = append(rep.Notes, "server has no --lease-ttl flag: assuming its default is "+cfg.LeaseTTL.String())
	}
	execLog := filepath.Join(out, "exec.log")
	if err := os.WriteFile(execLog, nil, 0o666); err != nil {
		return err
	}
	// --test-exec-log: the workers also run the handler jobs (ExecKind)
	workerArgs := append([]string{"--lease-ttl", cfg.LeaseTTL.String(), "--test-exec-log", execLog}, cfg.WorkerArgs...)
	var pki *PKI
	if cfg.TLS {
		if !ServerSupports(cfg.Binary, "--tls-ca") {
			return fmt.Errorf("--tls: %s has no --tls-ca flag", cfg.Binary)
		}
		var err error
		if pki, err = NewPKI(filepath.Join(out, "tls")); err != nil {
			return fmt.Errorf("--tls: %w", err)
		}
		rep.Notes = append(rep.Notes, "mutual TLS between every party and encrypted gossip (certificates in tls/)")
	}
	token := ""
	if cfg.Auth {
		var authServer, authWorker []string
		var aerr error
		if token, authServer, authWorker, aerr = authFiles(out); aerr != nil {
			return aerr
		}
		serverArgs = append(serverArgs, authServer...)
		workerArgs = append(workerArgs, authWorker...)
		rep.Notes = append(rep.Notes, "auth on: servers require tokens; clients and workers use the harness's admin token")
	}
	c, err := NewCluster(ClusterConfig{Binary: cfg.Binary, RunDir: out, Nodes: cfg.Nodes, Workers: cfg.Workers,
		Concurrency: cfg.Concurrency, Network: nw, Spares: spares, ServerArgs: serverArgs, WorkerArgs: workerArgs, Log: log, TLS: pki, Token: token})
	if err != nil {
		return err
	}
	if NeedsDisks(cfg.Faults) {
		if cfg.Faults == FaultSlowDisk {
			if err := CanThrottle(); err != nil {
				return fmt.Errorf("--faults %s: %w", cfg.Faults, err)
			}
		}
		var dirs []string
		for _, n := range c.Nodes {
			dirs = append(dirs, n.Data)
		}
		disks, err := NewDisks(ctx, filepath.Join(out, "disks"), dirs, DiskSizeMB)
		if err != nil {
			return err
		}
		defer disks.Close() // after c.Close (deferred below): the servers must be gone
		c.Disks = disks
		rep.Notes = append(rep.Notes, fmt.Sprintf("every node's data directory is its own loop-mounted ext4 file system of %d MiB (disks/)", DiskSizeMB))
	}
	defer c.Close()
	defer func() {
		if ctx.Err() != nil {
			c.KillAll() // interrupted: no graceful stop
		}
	}()
	log.Info("starting cluster", "nodes", cfg.Nodes, "network", rep.Network, "addrs", strings.Join(c.Addrs(), ","))
	if err := c.Start(ctx, 60*time.Second); err != nil {
		return err
	}
	if err := c.StartWorkers(); err != nil {
		return err
	}

	h := NewHistory(time.Now())
	var schedules []*ScheduleEvidence
	if cfg.Schedules > 0 {
		sapi, err := client.New(client.Config{Addrs: c.Addrs(), CallTimeout: 5 * time.Second, Retry: 20 * time.Second, TLSFiles: c.clientTLS(), Token: token})
		if err != nil {
			return err
		}
		schedules, err = createSchedules(ctx, sapi, cfg.Schedules)
		sapi.Close()
		if err != nil {
			return err
		}
		log.Info("schedules created", "count", len(schedules), "every", scheduleEvery)
	}
	wl, err := NewWorkload(WorkloadConfig{Seed: cfg.Seed, Clients: cfg.Clients, JobRate: cfg.Rate, ReadRate: cfg.ReadRate,
		ShellRate: cfg.ShellRate, BatchShare: cfg.BatchShare, Tenants: cfg.Tenants,
		OpTimeout: cfg.OpTimeout, ExecLog: execLog, Addrs: c.Addrs(), TLSFiles: c.clientTLS(), Token: token}, h)
	if err != nil {
		return err
	}
	faults, err := NewFaults(FaultConfig{Mode: cfg.Faults, Seed: cfg.Seed, LeaseTTL: cfg.LeaseTTL,
		ElectionTimeout: cfg.ElectionTimeout, ExecLog: execLog, Log: log,
		Probe: func(jobs []JobRef) { wl.Probe(jobs, cfg.LeaseTTL) }}, c, h)
	if err != nil {
		wl.Wait(0)
		return err
	}
	warmup := min(max(cfg.Duration/8, 10*time.Second), 30*time.Second)
	wl.Start(ctx)
	log.Info("workload started", "rate", cfg.Rate, "clients", cfg.Clients, "warmup", warmup, "duration", cfg.Duration)
	faults.Run(ctx, warmup, cfg.Duration) // returns healed
	log.Info("faults over, healed; stopping the workload")
	wl.Wait(30 * time.Second)
	healedAt := h.Now()
	events := faults.Events()
	if ctx.Err() != nil {
		return fmt.Errorf("interrupted: %w", ctx.Err())
	}

	admin, err := client.New(client.Config{Addrs: c.Addrs(), CallTimeout: 5 * time.Second, Retry: 20 * time.Second, TLSFiles: c.clientTLS(), Token: token})
	if err != nil {
		return err
	}
	defer admin.Close()
	pauseSchedules(ctx, admin, schedules, 30*time.Second, log)

	ops := h.Ops()
	acked := map[JobKey]bool{}
	for _, op := range ops {
		if op.Kind == OpSubmit && op.Outcome == OK {
			acked[op.Job] = true
		}
	}
	rep.Drain = drain(ctx, admin, h, acked, healedAt, cfg.DrainBound, log)
	rep.Drain.FinalWriteOK, rep.Drain.FinalWriteErr = finalWrite(ctx, admin, h, cfg)

	finalStart := h.Now()
	final, ferr := listAll(ctx, admin)
	finalEnd := h.Now()
	if ferr == nil {
		final = readSchedules(ctx, admin, schedules, final)
	}
	rep.Schedules = schedules
	// the worker exports HODEI_LEASE_TOKEN: an execution without it means
	// fencing went unchecked, which must not pass silently
	ev := &Evidence{Drain: rep.Drain, RequireTokens: true, LeaseTTL: cfg.LeaseTTL, Schedules: schedules,
		WorkerFaults: WorkerFaultsOf(events, h.Start().UnixMilli())}
	if ferr != nil {
		ev.FinalErr = ferr.Error()
	}
	ev.Final = final
	ev.Convergence = converge(ctx, c, h, 30*time.Second)
	ev.Convergence.Divergences = c.Divergences()
	rep.Drain.Bound = cfg.DrainBound

	ops = h.Ops()
	if ferr == nil {
		// the final read is part of every job's linearizable history
		seen := map[JobKey]bool{}
		for _, f := range final {
			seen[f.Job] = true
			ops = append(ops, Op{Client: -1, Kind: OpFinalRead, Job: f.Job, JobID: f.ID, Invoke: finalStart, Return: finalEnd,
				Outcome: OK, Found: true, State: f.State, Attempts: f.Attempts, ResultToken: f.ResultToken, ResultAttempt: f.ResultAttempt})
		}
		for k := range acked {
			if !seen[k] {
				ops = append(ops, Op{Client: -1, Kind: OpFinalRead, Job: k, Invoke: finalStart, Return: finalEnd, Outcome: OK})
			}
		}
	}
	ev.Ops = ops
	if f, err := os.Open(execLog); err == nil {
		ev.Execs, ev.BadExecLine, _ = ParseExecLog(bufio.NewReader(f))
		f.Close()
	}
	if len(rep.Drain.StuckJobs) > 0 {
		rep.Drain.StuckExecs = map[string][]string{}
		for _, j := range rep.Drain.StuckJobs {
			for _, e := range ev.Execs {
				if e.JobID == j.ID || (e.Tenant == j.Job.Tenant && e.Key == j.Job.Key) {
					rep.Drain.StuckExecs[j.ID] = append(rep.Drain.StuckExecs[j.ID], fmt.Sprintf("attempt %d token %d on %s at %.1fs",
						e.Attempt, e.Token, e.Worker, float64(e.AtMs-rep.Drain.StartWallMs)/1000))
				}
			}
		}
		ev.Drain = rep.Drain
	}
	if err := writeHistory(filepath.Join(out, "history.jsonl"), ops, events); err != nil {
		log.Warn("history", "err", err)
	}
	t0 := time.Now()
	rep.Check = Check(ev)
	rep.CheckTimeNs = int64(time.Since(t0))
	for _, op := range ops {
		rep.Ops[string(op.Kind)+"/"+string(op.Outcome)]++
	}
	rep.Events, rep.Overall.Before, rep.Overall.During, rep.Overall.After = Recovery(ops, events, healedAt)
	first := cfg.Duration
	if len(events) > 0 {
		first = events[0].Start
	}
	rep.Warmup = okRate(ops, min(2*time.Second, first/2), first) // skip connection set-up
	rep.Offered = offeredRate(ops, rep.Warmup.From, first)
	rep.RateReached = rep.Warmup.OKPerSec >= 0.9*cfg.Rate
	return nil
}

// drain waits until every acknowledged job is terminal. At 1,000 jobs/s a
// list of every job is ~100k jobs, so a poll lists only the PENDING and
// RUNNING jobs; when none of them is acknowledged, one full list confirms
// (a job moving between the two states between the two lists escapes
// both, and a missing job is in neither).
func drain(ctx context.Context, api *client.Client, h *History, acked map[JobKey]bool, healedAt, bound time.Duration, log *slog.Logger) DrainResult {
	d := DrainResult{HealedAt: healedAt, Bound: bound, StartWallMs: h.Start().UnixMilli()}
	deadline := time.Now().Add(2 * bound) // keep waiting past the bound to measure
	lastLog := time.Now()
	for {
		jobs, err := listStates(ctx, api, hodeiv1.JobState_JOB_STATE_PENDING, hodeiv1.JobState_JOB_STATE_RUNNING)
		full := false
		if err == nil && !anyAcked(jobs, acked) {
			jobs, err = listAll(ctx, api)
			full = true
		}
		if err == nil {
			var stuck []string
			var stuckJobs []FinalJob
			byKey := map[JobKey]FinalJob{}
			for _, j := range jobs {
				byKey[j.Job] = j
			}
			for k := range acked {
				j, ok := byKey[k]
				if (full && !ok) || (ok && !IsTerminal(j.State)) {
					id := j.ID
					if id == "" {
						id = k.String()
					}
					stuck = append(stuck, id)
					if ok && len(stuckJobs) < 10 {
						stuckJobs = append(stuckJobs, j)
					}
				}
			}
			sort.Strings(stuck)
			if full && len(stuck) == 0 {
				d.Drained, d.DrainTime = true, h.Now()-healedAt
				log.Info("drained", "after", d.DrainTime.Round(time.Millisecond))
				return d
			}
			d.Stuck, d.StuckJobs = stuck, stuckJobs
			if time.Since(lastLog) > 5*time.Second {
				log.Info("draining", "not terminal", len(stuck), "since heal", (h.Now() - healedAt).Round(time.Second))
				lastLog = time.Now()
			}
			if len(d.Stuck) > maxListed {
				d.Stuck = d.Stuck[:maxListed]
			}
		}
		if err != nil {
			d.ListErrors++
			d.LastListErr = err.Error()
			if time.Since(lastLog) > 5*time.Second {
				log.Warn("draining: listing the jobs failed", "errors", d.ListErrors, "err", err, "since heal", (h.Now() - healedAt).Round(time.Second))
				lastLog = time.Now()
			}
		}
		if time.Now().After(deadline) || sleepCtx(ctx, 500*time.Millisecond) != nil {
			d.DrainTime = h.Now() - healedAt
			return d
		}
	}
}

func anyAcked(jobs []FinalJob, acked map[JobKey]bool) bool {
	for _, j := range jobs {
		if acked[j.Job] {
			return true
		}
	}
	return false
}

// listStates lists the jobs in any of states (linearizable, paged).
func listStates(ctx context.Context, api *client.Client, states ...hodeiv1.JobState) ([]FinalJob, error) {
	var out []FinalJob
	for _, st := range states {
		js, err := list(ctx, api, st)
		if err != nil {
			return nil, err
		}
		out = append(out, js...)
	}
	return out, nil
}

// finalWrite submits one job after the drain and waits for it to succeed.
func finalWrite(ctx context.Context, api *client.Client, h *History, cfg Config) (bool, string) {
	key := JobKey{"final", fmt.Sprintf("final-%d", cfg.Seed)}
	spec := &hodeiv1.JobSpec{Tenant: key.Tenant, IdempotencyKey: key.Key, Command: []string{"true"}, Shell: true}
	inv := h.Now()
	cctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	resp, err := api.Submit(cctx, spec)
	op := Op{Client: -2, Kind: OpSubmit, Job: key, Invoke: inv, Return: h.Now()}
	op.Outcome, op.Code = classify(err)
	if err != nil {
		op.Err = err.Error()
		h.Add(op)
		return false, err.Error()
	}
	observe(&op, resp.GetJob())
	h.Add(op)
	deadline := time.Now().Add(cfg.DrainBound)
	for {
		j, err := api.Get(cctx, op.JobID)
		if err == nil && j.GetState() == hodeiv1.JobState_JOB_STATE_SUCCEEDED {
			return true, ""
		}
		if time.Now().After(deadline) {
			return false, fmt.Sprintf("final job %s not SUCCEEDED within %v (state %v, err %v)", op.JobID, cfg.DrainBound, j.GetState(), err)
		}
		if sleepCtx(cctx, 200*time.Millisecond) != nil {
			return false, "interrupted"
		}
	}
}

// listAll reads every job of every tenant (linearizable, paged).
func listAll(ctx context.Context, api *client.Client) ([]FinalJob, error) {
	return list(ctx, api, hodeiv1.JobState_JOB_STATE_UNSPECIFIED)
}

// list reads every job in state (UNSPECIFIED: all) of every tenant
// (linearizable, paged).
func list(ctx context.Context, api *client.Client, state hodeiv1.JobState) ([]FinalJob, error) {
	var out []FinalJob
	token := ""
	for {
		cctx, cancel := context.WithTimeout(ctx, 30*time.Second)
		resp, err := api.List(cctx, &hodeiv1.ListJobsRequest{Limit: 2000, State: state, PageToken: token})
		cancel()
		if err != nil {
			return nil, err
		}
		for _, j := range resp.GetJobs() {
			var op Op
			observe(&op, j)
			f := FinalJob{Job: JobKey{j.GetSpec().GetTenant(), j.GetSpec().GetIdempotencyKey()}, ID: j.GetId(),
				State: op.State, Attempts: op.Attempts, ResultToken: op.ResultToken, ResultAttempt: op.ResultAttempt}
			if r := j.GetLastResult(); r != nil {
				f.ResultWorker, f.ResultStartedMs, f.ResultFinishMs = r.GetWorkerId(), r.GetStartedAtMs(), r.GetFinishedAtMs()
				f.ResultExpired = r.GetLeaseExpired()
			}
			f.CreatedAtMs, f.UpdatedAtMs, f.ReadyAtMs = j.GetCreatedAtMs(), j.GetUpdatedAtMs(), j.GetReadyAtMs()
			f.LeaseWorker, f.LeaseExpiresMs = j.GetLeaseWorker(), j.GetLeaseExpiresAtMs()
			f.ScheduleID, f.ScheduleSlotMs = j.GetScheduleId(), j.GetScheduleSlotMs()
			out = append(out, f)
		}
		token = resp.GetNextPageToken()
		if token == "" {
			return out, nil
		}
	}
}

// converge polls every node until, for every shard, all report the same
// applied index and digest, or the deadline passes.
func converge(ctx context.Context, c *Cluster, h *History, timeout time.Duration) Convergence {
	var cv Convergence
	deadline := time.Now().Add(timeout)
	for {
		samples, err := c.Digests(ctx, h.Now())
		cv.Samples = append(cv.Samples, samples...)
		if err == nil && agreed(samples, len(c.Members())) {
			cv.Converged = true
			return cv
		}
		if err != nil {
			cv.Err = err.Error()
		} else {
			cv.Err = "nodes at different applied indexes"
		}
		if time.Now().After(deadline) || sleepCtx(ctx, 250*time.Millisecond) != nil {
			return cv
		}
	}
}

func agreed(samples []DigestSample, nodes int) bool {
	type v struct {
		applied uint64
		digest  string
	}
	first := map[uint32]v{}
	count := map[uint32]int{}
	for _, s := range samples {
		count[s.Shard]++
		f, ok := first[s.Shard]
		if !ok {
			first[s.Shard] = v{s.Applied, s.Digest}
			continue
		}
		if f.applied != s.Applied || f.digest != s.Digest {
			return false
		}
	}
	for _, n := range count {
		if n != nodes {
			return false
		}
	}
	return len(count) > 0
}

func writeHistory(path string, ops []Op, events []FaultEvent) error {
	f, err := os.Create(path)
	if err != nil {
		return err
	}
	w := bufio.NewWriter(f)
	enc := json.NewEncoder(w)
	for _, e := range events {
		_ = enc.Encode(map[string]any{"fault": e})
	}
	for _, op := range ops {
		_ = enc.Encode(op)
	}
	if err := w.Flush(); err != nil {
		f.Close()
		return err
	}
	return f.Close()
}
