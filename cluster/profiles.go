package cluster

import (
	"fmt"
	"sort"
	"strings"
	"sync"
	"time"

	"github.com/hodei-io/hodei/fsm"
	"github.com/hodei-io/hodei/proto/hodeiv1"
)

// Worker profiles seen, for "unmatched" in GetJob (issue 11 quota).
//
// A job that no worker can run stays PENDING silently; GetJob says so
// instead. The node answering a (non-stale) GetJob is the job's shard
// leader, and what it knows of workers is cheap to keep: the sessions of
// its own dispatcher, and the lease demands it serves for its shards —
// every node's dispatcher asks each shard's leader for work on behalf of
// its connected workers with free slots (LeaseFor, labels and kinds
// included) while that shard has ready jobs, which a PENDING unmatched job
// keeps true. So the leader remembers each distinct (labels, kinds)
// profile it saw in the last profileWindow, and GetJob tests a PENDING
// job's labels, constraints and kind against them (fsm.Unmatched).
//
// A node's dispatcher only sends a demand for a worker that can run some
// job the shard has ready (per its replica), so the leader sees every
// remote worker that can run the job and has a free slot, and of the
// others only those that can run other ready jobs of the shard. Hence:
// with some profile seen, the answer names the first requirement no seen
// worker meets (or is empty when one meets all); with none seen, after the
// job has been ready for unmatchedGrace, it says that no worker that can
// run it asked for work in the window.
//
// Limits: a worker that can run the job but whose slots were all busy for
// the whole window sent no demand and is not counted; a stale GetJob
// answered by a follower sees only that node's sessions and the demands it
// served as a leader of other shards; a node that just became leader has
// seen little yet. The book holds at most maxProfiles
// profiles (the oldest go first). It is not replicated: it is a report,
// never an input to leasing.

const (
	// unmatchedGrace is how long a job must have been ready before GetJob
	// calls it unmatched for want of any worker seen.
	unmatchedGrace = 5 * time.Second
	profileWindow  = 30 * time.Second
	maxProfiles    = 1024
)

type profileBook struct {
	mu   sync.Mutex
	seen map[string]seenProfile
}

type seenProfile struct {
	p  fsm.WorkerProfile
	at time.Time
}

func profileKey(labels []*hodeiv1.KeyValue, kinds []string) string {
	var b strings.Builder
	for _, kv := range labels {
		b.WriteString(kv.GetKey())
		b.WriteByte('=')
		b.WriteString(kv.GetValue())
		b.WriteByte(0)
	}
	b.WriteByte(1)
	for _, k := range kinds {
		b.WriteString(k)
		b.WriteByte(0)
	}
	return b.String()
}

// note records a profile seen now.
func (pb *profileBook) note(labels []*hodeiv1.KeyValue, kinds []string, now time.Time) {
	k := profileKey(labels, kinds)
	pb.mu.Lock()
	defer pb.mu.Unlock()
	if pb.seen == nil {
		pb.seen = map[string]seenProfile{}
	}
	if sp, ok := pb.seen[k]; ok {
		sp.at = now
		pb.seen[k] = sp
		return
	}
	if len(pb.seen) >= maxProfiles {
		oldK, oldAt := "", now
		for key, sp := range pb.seen {
			if sp.at.Before(oldAt) || oldK == "" {
				oldK, oldAt = key, sp.at
			}
		}
		delete(pb.seen, oldK)
	}
	pb.seen[k] = seenProfile{p: fsm.WorkerProfile{Labels: labels, Kinds: kinds}, at: now}
}

// recent returns the profiles seen within the window, in key order.
func (pb *profileBook) recent(now time.Time) []fsm.WorkerProfile {
	pb.mu.Lock()
	defer pb.mu.Unlock()
	keys := make([]string, 0, len(pb.seen))
	for k, sp := range pb.seen {
		if now.Sub(sp.at) > profileWindow {
			delete(pb.seen, k)
			continue
		}
		keys = append(keys, k)
	}
	sort.Strings(keys)
	out := make([]fsm.WorkerProfile, len(keys))
	for i, k := range keys {
		out[i] = pb.seen[k].p
	}
	return out
}

// unmatched is GetJob's report for job (see the top of this file).
func (n *Node) unmatched(job *hodeiv1.Job) string {
	if job.GetState() != hodeiv1.JobState_JOB_STATE_PENDING {
		return ""
	}
	now := time.Now()
	if d := n.dispatch.Load(); d != nil {
		for _, p := range d.Profiles() {
			n.profiles.note(p.Labels, p.Kinds, now)
		}
	}
	ps := n.profiles.recent(now)
	if why := fsm.Unmatched(job.GetSpec(), ps); why != "" || len(ps) > 0 {
		return why // why, or "": a worker seen can run it
	}
	// No worker seen at all. A worker that can run the job and has a free
	// slot asks for it (its node's dispatcher sees the job ready on its
	// replica): after unmatchedGrace of being ready, none did.
	if ready := job.GetReadyAtMs(); ready > 0 && now.UnixMilli()-ready >= unmatchedGrace.Milliseconds() {
		return fmt.Sprintf("no worker that can run it asked for work in the last %v", profileWindow)
	}
	return ""
}
