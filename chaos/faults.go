package chaos

import (
	"context"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"sort"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/hodei-io/hodei/client"
	"github.com/hodei-io/hodei/proto/hodeiv1"
)

// Fault kinds.
const (
	FaultKillLeader        = "kill-leader"
	FaultKillRandom        = "kill-random"
	FaultPauseLeader       = "pause-leader"
	FaultPartitionLeader   = "partition-leader"
	FaultPartitionMajority = "partition-majority"
	FaultPartitionRing     = "partition-ring"
	FaultWorkers           = "workers" // kill or pause a worker for longer than the lease TTL
	// FaultMembership replaces a member under load: a spare node (started
	// without --bootstrap) is joined, then a random member (maybe a leader)
	// is removed and stopped. Not part of mixed (yet): selectable alone.
	FaultMembership = "membership"
	// FaultClockSkew restarts a leader with its clock shifted by one to
	// three lease TTLs (either way; the server's test-only
	// --test-clock-offset), keeps it so while the balancer hands it
	// shards to lead, then restarts it with the true time. Not part of
	// mixed (that would change the schedules of the recorded mixed seeds):
	// selectable alone.
	FaultClockSkew = "clock-skew"
	// FaultDiskFull fills the file system of the node leading the most
	// shards (every node's data directory is its own loop-mounted ext4
	// image in this mode) for 5-15 s, then frees it; a node that exited
	// meanwhile is restarted. Selectable alone.
	FaultDiskFull = "disk-full"
	// FaultSlowDisk throttles the file system of the node leading the most
	// shards to 10, 20 or 50 write IOPS (a blkio cgroup on its loop device,
	// see slowdisk.go) for 10-20 s, then lifts the limit: its log-store
	// commits take tens to hundreds of milliseconds while its heartbeats
	// stay fast, so it keeps its leaderships (a gray failure). Selectable
	// alone.
	FaultSlowDisk = "slow-disk"
	// FaultWorkerCrash is a worker stream cut mid-batch by the worker's
	// death: SIGKILL of the worker process group running the most jobs
	// (from the exec log: it holds their leases, and at this load it has
	// completions in flight), restarted after 1.5-2 lease TTLs. Its jobs
	// must come back only after their leases expire, and none of the
	// completions it could not send is accepted. Selectable alone.
	FaultWorkerCrash = "worker-crash"
	// FaultStreamNode kills (SIGKILL) the node holding the most worker
	// streams (from the workers' own "worker stream up" log lines) and
	// restarts it after 2-6 s: its workers reconnect to the next node and
	// complete with their still-valid tokens. Selectable alone.
	FaultStreamNode = "stream-node"
	// FaultWorkerPause stops (SIGSTOP) the worker running the most jobs for
	// 2.5-3 lease TTLs, past the expiry of every lease it holds even after
	// a leader change's grace, then continues it (SIGCONT): every late
	// completion it then sends must be refused. Selectable alone.
	FaultWorkerPause = "worker-pause"
	// FaultStreamCut resets every TCP connection of the worker running the
	// most jobs (the kernel's socket destroy, `ss -K`: both ends get a
	// reset), mid-batch, while the process lives: it reconnects to the next
	// node at once and re-sends the completions that had no answer, under
	// their still-valid tokens. Repeated 3-5 times per fault, 1-2 s apart.
	// Selectable alone.
	FaultStreamCut = "stream-cut"
	FaultMixed     = "mixed"
	FaultNone      = "none"
)

// AllFaults lists the selectable kinds (mixed picks among them).
var AllFaults = []string{FaultKillLeader, FaultKillRandom, FaultPauseLeader, FaultPartitionLeader,
	FaultPartitionMajority, FaultPartitionRing, FaultWorkers}

// soloFaults are selectable alone but not part of mixed.
var soloFaults = []string{FaultMembership, FaultClockSkew, FaultDiskFull, FaultSlowDisk, FaultWorkerCrash, FaultStreamNode, FaultWorkerPause, FaultStreamCut}

// IsWorkerFault reports whether kind needs worker processes.
func IsWorkerFault(kind string) bool {
	return kind == FaultWorkers || kind == FaultWorkerCrash || kind == FaultWorkerPause || kind == FaultStreamNode || kind == FaultStreamCut
}

// NeedsDisks reports whether kind needs a file system per node.
func NeedsDisks(kind string) bool { return kind == FaultDiskFull || kind == FaultSlowDisk }

// NeedsSpare reports whether kind needs a spare node slot.
func NeedsSpare(kind string) bool { return kind == FaultMembership }

// IsPartition reports whether kind needs network namespaces.
func IsPartition(kind string) bool { return strings.HasPrefix(kind, "partition-") }

// FaultEvent is one injected fault.
type FaultEvent struct {
	Kind   string        `json:"kind"`
	Target string        `json:"target"`
	Start  time.Duration `json:"start_ns"`
	Heal   time.Duration `json:"heal_ns"`
	Detail string        `json:"detail,omitempty"`
	Err    string        `json:"err,omitempty"`
	// Workers: the worker processes the fault hit (killed or stopped), or,
	// for stream-node, the workers whose streams the killed node held.
	Workers []string `json:"workers,omitempty"`
	// Signal: what the workers got, "kill" or "stop" (worker faults only).
	Signal string `json:"signal,omitempty"`
}

// FaultConfig drives the scheduler.
type FaultConfig struct {
	Mode            string
	Seed            int64
	LeaseTTL        time.Duration
	ElectionTimeout time.Duration
	ExecLog         string // the run's exec log: which worker runs what
	// Probe, if set, is given the jobs that were running in the workers a
	// worker fault hit, after its heal: the workload reads them while late
	// and re-sent completions arrive (Workload.Probe).
	Probe func(jobs []JobRef)
	Log   *slog.Logger
}

// JobRef names a job by key and id.
type JobRef struct {
	Key JobKey
	ID  string
}

// Faults injects faults into a cluster on a seeded schedule.
type Faults struct {
	cfg   FaultConfig
	c     *Cluster
	h     *History
	rng   *rand.Rand
	kinds []string

	mu     sync.Mutex
	events []FaultEvent
}

// NewFaults prepares a scheduler; partitions are dropped from mixed mode
// when there is no network.
func NewFaults(cfg FaultConfig, c *Cluster, h *History) (*Faults, error) {
	f := &Faults{cfg: cfg, c: c, h: h, rng: rand.New(rand.NewPCG(uint64(cfg.Seed), 0xfa17))}
	switch cfg.Mode {
	case FaultMixed:
		for _, k := range AllFaults {
			if IsPartition(k) && c.cfg.Network == nil {
				continue
			}
			if k == FaultWorkers && len(c.Workers) == 0 {
				continue
			}
			f.kinds = append(f.kinds, k)
		}
	case FaultNone:
	default:
		ok := false
		for _, k := range AllFaults {
			ok = ok || k == cfg.Mode
		}
		for _, k := range soloFaults {
			ok = ok || k == cfg.Mode
		}
		if !ok {
			return nil, fmt.Errorf("unknown fault kind %q (one of %s, %s, mixed, none)", cfg.Mode, strings.Join(AllFaults, ", "), strings.Join(soloFaults, ", "))
		}
		if IsWorkerFault(cfg.Mode) && len(c.Workers) == 0 {
			return nil, fmt.Errorf("%s needs workers", cfg.Mode)
		}
		if cfg.Mode == FaultMembership && c.Spare() == nil {
			return nil, fmt.Errorf("%s needs a spare node slot", cfg.Mode)
		}
		if IsPartition(cfg.Mode) && c.cfg.Network == nil {
			return nil, fmt.Errorf("%s needs network namespaces, unsupported on this host", cfg.Mode)
		}
		f.kinds = []string{cfg.Mode}
	}
	return f, nil
}

// Events returns the faults injected so far.
func (f *Faults) Events() []FaultEvent {
	f.mu.Lock()
	defer f.mu.Unlock()
	return append([]FaultEvent(nil), f.events...)
}

func (f *Faults) dur(lo, hi time.Duration) time.Duration {
	return lo + time.Duration(f.rng.Int64N(int64(hi-lo)+1))
}

// Run injects faults from the first fault time until until, then heals
// everything (always, even when ctx ends) and returns.
func (f *Faults) Run(ctx context.Context, firstAt, until time.Duration) {
	defer f.healAll()
	if len(f.kinds) == 0 {
		return
	}
	if sleepCtx(ctx, firstAt-f.h.Now()) != nil {
		return
	}
	et := f.cfg.ElectionTimeout
	for f.h.Now() < until && ctx.Err() == nil {
		kind := f.kinds[f.rng.IntN(len(f.kinds))]
		hold := f.dur(2*time.Second, 6*time.Second)
		switch kind {
		case FaultPauseLeader:
			hold = f.dur(3*et, 5*et)
		case FaultWorkers, FaultWorkerCrash:
			hold = f.dur(f.cfg.LeaseTTL*3/2, f.cfg.LeaseTTL*2)
		case FaultWorkerPause:
			hold = f.dur(f.cfg.LeaseTTL*5/2, f.cfg.LeaseTTL*3)
		case FaultPartitionLeader, FaultPartitionMajority, FaultPartitionRing:
			hold = f.dur(max(5*time.Second, 3*et), max(10*time.Second, 6*et))
		case FaultClockSkew:
			hold = f.dur(10*time.Second, 20*time.Second) // the balancer moves leaders back within a few seconds
		case FaultDiskFull:
			hold = f.dur(5*time.Second, 15*time.Second)
		case FaultSlowDisk:
			hold = f.dur(10*time.Second, 20*time.Second)
		}
		if rem := until - f.h.Now(); hold > rem && kind != FaultWorkerPause {
			hold = max(rem, time.Second)
		}
		ev := f.inject(ctx, kind, hold)
		f.mu.Lock()
		f.events = append(f.events, ev)
		f.mu.Unlock()
		f.cfg.Log.Info("fault", "kind", ev.Kind, "target", ev.Target, "start", ev.Start.Round(time.Millisecond),
			"heal", ev.Heal.Round(time.Millisecond), "detail", ev.Detail, "err", ev.Err)
		quiet := f.dur(3*time.Second, 8*time.Second)
		if sleepCtx(ctx, quiet) != nil {
			return
		}
	}
}

// inject applies one fault, holds it, heals it.
func (f *Faults) inject(ctx context.Context, kind string, hold time.Duration) FaultEvent {
	ev := FaultEvent{Kind: kind}
	members := f.c.Members()
	leader := func() *Node {
		if l := f.c.Leader(ctx); l != nil {
			return l
		}
		return members[f.rng.IntN(len(members))]
	}
	var heal func() error
	switch kind {
	case FaultKillLeader, FaultKillRandom:
		n := members[f.rng.IntN(len(members))]
		if kind == FaultKillLeader {
			n = leader()
		}
		ev.Target, ev.Start = n.ID, f.h.Now()
		if err := n.Proc.Kill(); err != nil {
			ev.Err = err.Error()
		}
		ev.Detail = fmt.Sprintf("SIGKILL, restart after %v", hold.Round(time.Millisecond))
		heal = n.Proc.Start
	case FaultPauseLeader:
		n := leader()
		ev.Target, ev.Start = n.ID, f.h.Now()
		if err := n.Proc.Pause(); err != nil {
			ev.Err = err.Error()
		}
		ev.Detail = fmt.Sprintf("SIGSTOP for %v", hold.Round(time.Millisecond))
		heal = n.Proc.Resume
	case FaultWorkers:
		w := f.c.Workers[f.rng.IntN(len(f.c.Workers))]
		ev.Target, ev.Start, ev.Workers = w.Name, f.h.Now(), []string{w.Name}
		if f.rng.IntN(2) == 0 {
			ev.Detail = fmt.Sprintf("worker SIGKILL, restart after %v", hold.Round(time.Millisecond))
			ev.Signal = "kill"
			if err := w.Kill(); err != nil {
				ev.Err = err.Error()
			}
			heal = w.Start
		} else {
			ev.Detail = fmt.Sprintf("worker SIGSTOP for %v", hold.Round(time.Millisecond))
			ev.Signal = "stop"
			if err := w.Pause(); err != nil {
				ev.Err = err.Error()
			}
			heal = w.Resume
		}
	case FaultWorkerCrash, FaultWorkerPause:
		w, running := f.busiestWorker()
		ev.Target, ev.Workers = w.Name, []string{w.Name}
		ev.Start = f.h.Now()
		if kind == FaultWorkerCrash {
			ev.Signal = "kill"
			if err := w.Kill(); err != nil {
				ev.Err = err.Error()
			}
			ev.Detail = fmt.Sprintf("worker SIGKILL while running %d jobs (exec log), restart after %v", running, hold.Round(time.Millisecond))
			heal = w.Start
		} else {
			ev.Signal = "stop"
			if err := w.Pause(); err != nil {
				ev.Err = err.Error()
			}
			ev.Detail = fmt.Sprintf("worker SIGSTOP while running %d jobs (exec log) for %v (%.1f lease TTLs), then SIGCONT", running, hold.Round(time.Millisecond), float64(hold)/float64(f.cfg.LeaseTTL))
			heal = w.Resume
		}
	case FaultStreamCut:
		w, running := f.busiestWorker()
		ev.Target, ev.Workers, ev.Signal = w.Name, []string{w.Name}, "reset"
		ev.Start = f.h.Now()
		cuts := 3 + f.rng.IntN(3)
		var done []string
		for i := 0; i < cuts && ctx.Err() == nil; i++ {
			if i > 0 {
				_ = sleepCtx(ctx, f.dur(time.Second, 2*time.Second))
			}
			n, err := ResetConnections(ctx, w.Pid())
			if err != nil && ev.Err == "" {
				ev.Err = err.Error()
			}
			done = append(done, strconv.Itoa(n))
		}
		ev.Detail = fmt.Sprintf("TCP connections of the worker reset (ss -K) %d times while it ran %d jobs (exec log); connections reset each time: %s",
			len(done), running, strings.Join(done, ","))
		hold = 0
		heal = func() error { return nil }
	case FaultStreamNode:
		streams := f.c.WorkerStreams()
		var n *Node
		for _, m := range members {
			if n == nil || len(streams[m.ID]) > len(streams[n.ID]) {
				n = m
			}
		}
		ev.Target, ev.Workers = n.ID, streams[n.ID]
		ev.Start = f.h.Now()
		if err := n.Proc.Kill(); err != nil {
			ev.Err = err.Error()
		}
		ev.Detail = fmt.Sprintf("SIGKILL of the node holding %d of %d worker streams %v, restart after %v", len(streams[n.ID]), len(f.c.Workers), streams[n.ID], hold.Round(time.Millisecond))
		heal = n.Proc.Start
	case FaultMembership:
		return f.replaceMember(ctx, hold)
	case FaultDiskFull:
		n := leader()
		ev.Target, ev.Start = n.ID, f.h.Now()
		took, err := f.c.Disks.Fill(n.Index)
		if err != nil {
			ev.Err = err.Error()
		}
		ev.Detail = fmt.Sprintf("file system filled (%d MiB taken) for %v", took>>20, hold.Round(time.Millisecond))
		heal = func() error {
			err := f.c.Disks.Free(n.Index)
			if !n.Proc.Running() {
				ev.Detail += "; the server exited while its disk was full, restarted"
				if serr := n.Proc.Start(); err == nil {
					err = serr
				}
			}
			return err
		}
	case FaultSlowDisk:
		n := leader()
		iops := []int{10, 20, 50}[f.rng.IntN(3)]
		ev.Target, ev.Start = n.ID, f.h.Now()
		if err := f.c.Disks.Slow(n.Index, n.Proc.Pid(), iops); err != nil {
			ev.Err = err.Error()
		}
		ev.Detail = fmt.Sprintf("file system throttled to %d write IOPS for %v", iops, hold.Round(time.Millisecond))
		heal = func() error { return f.c.Disks.Unslow(n.Index) }
	case FaultClockSkew:
		n := leader()
		ttl := max(f.cfg.LeaseTTL, time.Second)
		off := f.dur(ttl, 3*ttl).Round(100 * time.Millisecond)
		if f.rng.IntN(2) == 0 {
			off = -off
		}
		ev.Target, ev.Start = n.ID, f.h.Now()
		if err := n.Proc.Kill(); err != nil {
			ev.Err = err.Error()
		}
		if err := n.Proc.StartWith("--test-clock-offset=" + off.String()); err != nil && ev.Err == "" {
			ev.Err = err.Error()
		}
		sign := "+"
		if off < 0 {
			sign = ""
		}
		ev.Detail = fmt.Sprintf("SIGKILL, restart with its clock %s%v off for %v, then SIGKILL and restart on true time", sign, off, hold.Round(time.Millisecond))
		heal = func() error {
			if err := n.Proc.Kill(); err != nil {
				return err
			}
			return n.Proc.Start()
		}
	default: // partitions
		groups := f.partition(kind, leader(), members)
		ev.Target = describeGroups(groups)
		ev.Start = f.h.Now()
		nw := f.c.cfg.Network
		for _, p := range groups.cut {
			if err := nw.Cut(ctx, p[0], p[1]); err != nil && ev.Err == "" {
				ev.Err = err.Error()
			}
		}
		ev.Detail = fmt.Sprintf("%d links cut for %v", len(groups.cut), hold.Round(time.Millisecond))
		heal = func() error { return nw.HealAll(context.Background()) }
	}
	_ = sleepCtx(ctx, hold)
	if err := heal(); err != nil && ev.Err == "" {
		ev.Err = "heal: " + err.Error()
	}
	ev.Heal = f.h.Now()
	if f.cfg.Probe != nil && len(ev.Workers) > 0 {
		f.cfg.Probe(f.runningJobs(ev.Workers, f.h.Start().UnixMilli()+ev.Start.Milliseconds(), 300))
	}
	return ev
}

type partitionPlan struct {
	kind string
	cut  [][2]int // node index pairs (1-based)
	desc string
}

func describeGroups(p partitionPlan) string { return p.desc }

// partition plans which links to cut.
func (f *Faults) partition(kind string, leader *Node, members []*Node) partitionPlan {
	n := len(members)
	idx := f.rng.Perm(n)
	slots := make([]int, n) // the members' slot indexes, ascending
	for i, m := range members {
		slots[i] = m.Index
	}
	for i := range idx {
		idx[i] = slots[idx[i]]
	}
	plan := partitionPlan{kind: kind}
	split := func(a []int) {
		in := map[int]bool{}
		for _, x := range a {
			in[x] = true
		}
		var b []int
		for _, i := range slots {
			if !in[i] {
				b = append(b, i)
			}
		}
		for _, x := range a {
			for _, y := range b {
				plan.cut = append(plan.cut, [2]int{x, y})
			}
		}
		sort.Ints(a)
		sort.Ints(b)
		plan.desc = fmt.Sprintf("%v | %v", names(a), names(b))
	}
	switch kind {
	case FaultPartitionLeader:
		split([]int{leader.Index})
	case FaultPartitionMajority:
		split(idx[:(n-1)/2]) // a random minority vs the majority
	case FaultPartitionRing:
		// nodes in a random ring each see only their two neighbours: every
		// node sees a majority, but no two see the same one (for n >= 4; for
		// n = 3 one link is cut and the middle node bridges the ends)
		pos := map[int]int{}
		for i, x := range idx {
			pos[x] = i
		}
		for ai, a := range slots {
			for _, b := range slots[ai+1:] {
				d := (pos[a] - pos[b] + n) % n
				if d != 1 && d != n-1 {
					plan.cut = append(plan.cut, [2]int{a, b})
				}
			}
		}
		if n == 3 {
			plan.cut = [][2]int{{idx[0], idx[2]}}
		}
		plan.desc = "ring " + strings.Join(names(idx), "-")
	}
	return plan
}

func names(ix []int) []string {
	out := make([]string, len(ix))
	for i, x := range ix {
		out[i] = fmt.Sprintf("n%d", x)
	}
	return out
}

// healAll restarts dead nodes and workers, resumes paused ones and heals the
// network.
func (f *Faults) healAll() {
	if nw := f.c.cfg.Network; nw != nil {
		if err := nw.HealAll(context.Background()); err != nil {
			f.cfg.Log.Warn("heal network", "err", err)
		}
	}
	for _, n := range f.c.Members() {
		f.revive(n.Proc)
	}
	for _, w := range f.c.Workers {
		f.revive(w)
	}
}

func (f *Faults) revive(p *Proc) {
	if p.Paused() {
		if err := p.Resume(); err != nil {
			f.cfg.Log.Warn("resume", "proc", p.Name, "err", err)
		}
	}
	if !p.Running() {
		if err := p.Start(); err != nil {
			f.cfg.Log.Warn("restart", "proc", p.Name, "err", err)
		}
	}
}

// replaceMember joins a spare node, holds, then removes a random member
// (which may lead some groups) and stops it; its slot becomes the spare,
// with a fresh node id and data directory for the next join.
func (f *Faults) replaceMember(ctx context.Context, hold time.Duration) FaultEvent {
	ev := FaultEvent{Kind: FaultMembership, Start: f.h.Now()}
	members := f.c.Members()
	victim := members[f.rng.IntN(len(members))]
	spare := f.c.Spare()
	if spare == nil {
		ev.Err, ev.Heal = "no spare node slot", f.h.Now()
		return ev
	}
	ev.Target = "+" + spare.ID + " -" + victim.ID
	fail := func(what string, err error) FaultEvent {
		ev.Err, ev.Heal = what+": "+err.Error(), f.h.Now()
		return ev
	}
	if err := spare.Proc.Start(); err != nil {
		return fail("start spare", err)
	}
	// the new node must answer before it can be joined
	var st interface{ GetNodeId() string }
	err := retryFor(ctx, 30*time.Second, func() error {
		s, err := f.c.Status(ctx, spare)
		st = s
		return err
	})
	if err != nil {
		return fail("spare never answered", err)
	}
	// Join and Remove go to the current members only: the spare's own
	// address (a reused slot) is in the harness's address list too, and a
	// node that is not yet a member cannot add itself.
	var maddrs []string
	for _, m := range members {
		maddrs = append(maddrs, m.GRPC)
	}
	admin, err := client.New(client.Config{Addrs: maddrs, CallTimeout: 30 * time.Second, Retry: -1, TLSFiles: f.c.clientTLS(), Token: f.c.cfg.Token})
	if err != nil {
		return fail("admin client", err)
	}
	defer admin.Close()
	err = retryFor(ctx, 90*time.Second, func() error {
		cctx, cancel := context.WithTimeout(ctx, 30*time.Second)
		defer cancel()
		_, err := admin.Admin().Join(cctx, &hodeiv1.JoinRequest{NodeId: st.GetNodeId(), Address: spare.GRPC, Voter: true})
		return err
	})
	if err != nil {
		return fail("join "+spare.ID, err)
	}
	f.c.setMember(spare, true)
	joined := f.h.Now()
	_ = sleepCtx(ctx, hold)
	err = retryFor(ctx, 90*time.Second, func() error {
		cctx, cancel := context.WithTimeout(ctx, 30*time.Second)
		defer cancel()
		_, err := admin.Admin().Remove(cctx, &hodeiv1.RemoveRequest{NodeId: victim.ID})
		return err
	})
	if err != nil {
		return fail("remove "+victim.ID, err)
	}
	f.c.setMember(victim, false)
	if err := victim.Proc.Stop(5 * time.Second); err != nil && ev.Err == "" {
		ev.Err = "stop removed node: " + err.Error()
	}
	f.c.mu.Lock()
	id := fmt.Sprintf("n%d", f.c.nextID)
	f.c.nextID++
	f.c.mu.Unlock()
	if err := f.c.setNodeID(victim, id, nil); err != nil && ev.Err == "" {
		ev.Err = "next spare: " + err.Error()
	}
	ev.Heal = f.h.Now()
	ev.Detail = fmt.Sprintf("joined after %v, removed %v later", (joined - ev.Start).Round(time.Millisecond), (ev.Heal - joined).Round(time.Millisecond))
	return ev
}

// retryFor calls fn until it succeeds or d has passed.
func retryFor(ctx context.Context, d time.Duration, fn func() error) error {
	deadline := time.Now().Add(d)
	for {
		err := fn()
		if err == nil || time.Now().After(deadline) {
			return err
		}
		if sleepCtx(ctx, 500*time.Millisecond) != nil {
			return err
		}
	}
}
