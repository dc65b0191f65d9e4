package main

import (
	"fmt"
	"io"
	"os"
	"runtime"
	"runtime/pprof"
	"runtime/trace"
	"sort"
	"syscall"
	"time"

	"github.com/hodei-io/hodei/cluster"
)

// benchProfile holds the diagnosis flags of hodei bench. Every profile covers
// the measured phase only (not the dev cluster's start-up).
type benchProfile struct {
	cpu, block, mutex, trace string
	stats                    bool

	files   []*os.File
	stopCPU bool
	stopTr  bool
}

func (p *benchProfile) start() error {
	if p.block != "" {
		runtime.SetBlockProfileRate(int(10 * time.Microsecond)) // sample blocking events >= ~10 µs
	}
	if p.mutex != "" {
		runtime.SetMutexProfileFraction(5)
	}
	if p.cpu != "" {
		f, err := os.Create(p.cpu)
		if err != nil {
			return err
		}
		p.files = append(p.files, f)
		if err := pprof.StartCPUProfile(f); err != nil {
			return err
		}
		p.stopCPU = true
	}
	if p.trace != "" {
		f, err := os.Create(p.trace)
		if err != nil {
			return err
		}
		p.files = append(p.files, f)
		if err := trace.Start(f); err != nil {
			return err
		}
		p.stopTr = true
	}
	return nil
}

func (p *benchProfile) stop() error {
	if p.stopCPU {
		pprof.StopCPUProfile()
		p.stopCPU = false
	}
	if p.stopTr {
		trace.Stop()
		p.stopTr = false
	}
	var first error
	write := func(name, path string) {
		if path == "" {
			return
		}
		f, err := os.Create(path)
		if err == nil {
			err = pprof.Lookup(name).WriteTo(f, 0)
			if cerr := f.Close(); err == nil {
				err = cerr
			}
		}
		if err != nil && first == nil {
			first = err
		}
	}
	write("block", p.block)
	write("mutex", p.mutex)
	for _, f := range p.files {
		if err := f.Close(); err != nil && first == nil {
			first = err
		}
	}
	p.files = nil
	return first
}

// cpuTime returns the user and system CPU time so far of this process and
// of its waited-for children (the jobs the embedded workers ran).
func cpuTime() (user, sys time.Duration) {
	for _, who := range []int{syscall.RUSAGE_SELF, syscall.RUSAGE_CHILDREN} {
		var ru syscall.Rusage
		if err := syscall.Getrusage(who, &ru); err == nil {
			user += time.Duration(ru.Utime.Nano())
			sys += time.Duration(ru.Stime.Nano())
		}
	}
	return user, sys
}

// devStats is every node's DebugStats at one moment, and its count of
// leadership gains and losses (hodei_raft_leader_changes_total).
type devStats struct {
	nodes         []cluster.DebugStats
	leaderChanges []float64
}

func snapshotStats(nodes []*cluster.Node) devStats {
	out := devStats{nodes: make([]cluster.DebugStats, len(nodes)), leaderChanges: make([]float64, len(nodes))}
	for i, n := range nodes {
		out.nodes[i] = n.DebugStats()
		mfs, err := n.Registry().Gather()
		if err != nil {
			continue
		}
		for _, mf := range mfs {
			if mf.GetName() == "hodei_raft_leader_changes_total" && len(mf.GetMetric()) > 0 {
				out.leaderChanges[i] = mf.GetMetric()[0].GetCounter().GetValue()
			}
		}
	}
	return out
}

// printStatsDelta prints what the log stores and the shard batchers did
// between two snapshots taken over el.
func printStatsDelta(w io.Writer, bs, as devStats, el time.Duration, submitted int64) {
	sec := el.Seconds()
	before, after := bs.nodes, as.nodes
	var changes float64
	for i := range as.leaderChanges {
		changes += as.leaderChanges[i] - bs.leaderChanges[i]
	}
	fmt.Fprintf(w, "leadership gained or lost %.0f times (all groups, all nodes)\n", changes)
	var commits, requests, groups uint64
	for i := range after {
		a, b := after[i].LogStore, before[i].LogStore
		c, r, g := a.Commits-b.Commits, a.Requests-b.Requests, a.Groups-b.Groups
		commits, requests, groups = commits+c, requests+r, groups+g
		ct, wt := a.CommitTime-b.CommitTime, a.WaitTime-b.WaitTime
		lg, lt := a.Lingers-b.Lingers, a.LingerTime-b.LingerTime
		fmt.Fprintf(w, "node n%d log store: %d commits (%.0f/s, %.2f ms each of which %.2f ms writing and syncing %.1f pages, writer busy %.0f%%), %.2f requests and %.2f groups per commit, request wait %.2f ms, %d lingers of %.2f ms\n",
			i+1, c, float64(c)/sec, perMs(ct, c), perMs(a.WriteTime-b.WriteTime, c), ratio(a.PageWrites-b.PageWrites, c), 100*ct.Seconds()/sec,
			ratio(r, c), ratio(g, c), perMs(wt, r), lg, perMs(lt, lg))
	}
	if submitted > 0 {
		fmt.Fprintf(w, "all nodes: %d log store commits, %.2f submits per commit, %.2f requests per commit\n",
			commits, float64(submitted)/float64(commits), ratio(requests, commits))
	}
	for i := range after {
		a, b := after[i].Waves, before[i].Waves
		if n := a.Waves - b.Waves; n > 0 {
			fmt.Fprintf(w, "node n%d proposal waves: %d (%.0f/s), %.2f shard entries per wave\n", i+1, n, float64(n)/sec, ratio(a.Entries-b.Entries, n))
		}
	}
	type row struct {
		shard       uint32
		node        int
		entries     uint64
		commands    uint64
		full, wave  time.Duration
		queue, raft time.Duration
	}
	var rows []row
	for i := range after {
		for k, s := range after[i].Shards {
			e := s.Batch.Entries - before[i].Shards[k].Batch.Entries
			if e == 0 {
				continue
			}
			pb := before[i].Shards[k].Batch
			rows = append(rows, row{s.Shard, i + 1, e, s.Batch.Commands - pb.Commands, s.Batch.Full - pb.Full, s.Batch.Wave - pb.Wave, s.Batch.Queue - pb.Queue, s.Batch.Raft - pb.Raft})
		}
	}
	sort.Slice(rows, func(i, j int) bool { return rows[i].shard < rows[j].shard })
	var entries, commands uint64
	var queue, raft time.Duration
	for _, r := range rows {
		entries, commands = entries+r.entries, commands+r.commands
		queue, raft = queue+r.queue, raft+r.raft
		fmt.Fprintf(w, "shard %d (leader n%d): %d entries (%.0f/s), %.1f commands per entry, in-flight window full %.0f%% and waiting for a wave %.0f%% of the time, batcher wait %.2f ms, raft commit+apply %.2f ms\n",
			r.shard, r.node, r.entries, float64(r.entries)/sec, ratio(r.commands, r.entries), 100*r.full.Seconds()/sec, 100*r.wave.Seconds()/sec, perMs(r.queue, r.commands), perMs(r.raft, r.entries))
	}
	fmt.Fprintf(w, "all shards: %d entries (%.0f/s), %.1f commands per entry, batcher wait %.2f ms, raft commit+apply %.2f ms\n",
		entries, float64(entries)/sec, ratio(commands, entries), perMs(queue, commands), perMs(raft, entries))
}

func ratio(a, b uint64) float64 {
	if b == 0 {
		return 0
	}
	return float64(a) / float64(b)
}

func perMs(d time.Duration, n uint64) float64 {
	if n == 0 {
		return 0
	}
	return d.Seconds() * 1000 / float64(n)
}
