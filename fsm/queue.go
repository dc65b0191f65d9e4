package fsm

import (
	"fmt"

	"github.com/google/btree"

	"github.com/hodei-io/hodei/proto/hodeiv1"
)

// maxSkipScan bounds how many ready entries of one tenant's queue a lease
// (or HasReadyFor) inspects looking for a job whose labels the worker
// carries.
const maxSkipScan = 64

// readyKey orders a tenant's ready queue: higher priority first, then FIFO.
type readyKey struct {
	prio int32
	seq  uint64
}

func readyLess(a, b readyKey) bool {
	if a.prio != b.prio {
		return a.prio > b.prio
	}
	return a.seq < b.seq
}

func readyKeyOf(j *hodeiv1.Job) readyKey { return readyKey{j.GetSpec().GetPriority(), j.GetSeq()} }

// scheduler is the fair-share structure over tenants' ready queues: deficit
// round robin over the tenants that have ready jobs, visited in tenant-name
// order (a pure function of the state, so a restored replica visits them in
// the same order). A tenant's quantum is its weight (SetTenantWeight;
// default 1): while every tenant stays backlogged, a tenant of weight w gets
// w jobs per round, in a row. Cancelled jobs are removed eagerly from the
// B-tree queues, so counts are exact without lazy deletion.
type scheduler struct {
	active *btree.BTreeG[string] // names of tenants with ready jobs
	cursor string                // the next tenant to visit is the first active name >= cursor (wrapping)
	ready  int                   // total ready jobs
	// weights holds the tenants whose weight is not 1 (2..MaxTenantWeight),
	// whether or not they have jobs: a weight outlives the tenant's jobs.
	// Only looked up by name, never iterated where order matters.
	weights map[string]int64
}

func newScheduler() scheduler {
	return scheduler{active: btree.NewOrderedG[string](btreeDegree), weights: map[string]int64{}}
}

// quantum is the credit a tenant gets per round: its weight.
func (sc *scheduler) quantum(t *tenant) int64 { return sc.weight(t.name) }

// weight is a tenant's fair-share weight (1 unless set).
func (sc *scheduler) weight(name string) int64 {
	if w, ok := sc.weights[name]; ok {
		return w
	}
	return 1
}

func (sc *scheduler) push(t *tenant, j *hodeiv1.Job) {
	if _, dup := t.ready.ReplaceOrInsert(readyKeyOf(j)); dup {
		panic(fmt.Sprintf("fsm: job %s queued twice", j.GetId()))
	}
	sc.ready++
	if t.ready.Len() == 1 {
		sc.active.ReplaceOrInsert(t.name)
	}
}

// remove takes j out of t's ready queue; false if it was not there.
func (sc *scheduler) remove(t *tenant, j *hodeiv1.Job) bool {
	if t == nil {
		return false
	}
	if _, ok := t.ready.Delete(readyKeyOf(j)); !ok {
		return false
	}
	sc.ready--
	if t.ready.Len() == 0 {
		sc.active.Delete(t.name)
		t.deficit = 0
	}
	return true
}

// nextActive returns the first active tenant name at or after the cursor,
// wrapping around.
func (sc *scheduler) nextActive() (string, bool) {
	var name string
	found := false
	sc.active.AscendGreaterOrEqual(sc.cursor, func(n string) bool {
		name, found = n, true
		return false
	})
	if !found {
		name, found = sc.active.Min()
	}
	return name, found
}

// ShellKind is the kind of command jobs (JobSpec.kind "" or "shell").
const ShellKind = "shell"

// matcher is what a worker can run: its labels and, when it names any, the
// kinds it has handlers for. The zero matcher runs every job.
type matcher struct {
	labels map[string]string
	kinds  map[string]struct{} // nil = every kind
	// tenants the worker's token allows (auth, issue 12); nil = every tenant.
	// pickReady and hasReadyFor pass over the other tenants' queues.
	tenants map[string]struct{}
}

// withTenants limits m to the given tenants (none given: no limit).
func (m matcher) withTenants(tenants []string) matcher {
	if len(tenants) > 0 {
		m.tenants = make(map[string]struct{}, len(tenants))
		for _, t := range tenants {
			m.tenants[t] = struct{}{}
		}
	}
	return m
}

// allowsTenant reports whether m may be leased jobs of tenant t.
func (m matcher) allowsTenant(t string) bool {
	if m.tenants == nil {
		return true
	}
	_, ok := m.tenants[t]
	return ok
}

func newMatcher(kvs []*hodeiv1.KeyValue, kinds []string) matcher {
	var m matcher
	if len(kvs) > 0 {
		m.labels = make(map[string]string, len(kvs))
		for _, kv := range kvs { // last value wins: deterministic in slice order
			m.labels[kv.GetKey()] = kv.GetValue()
		}
	}
	if len(kinds) > 0 {
		m.kinds = make(map[string]struct{}, len(kinds))
		for _, k := range kinds {
			m.kinds[k] = struct{}{}
		}
	}
	return m
}

// JobKind is the kind a job is run as: its spec's kind, or ShellKind for a
// command job.
func JobKind(spec *hodeiv1.JobSpec) string {
	if k := spec.GetKind(); k != "" {
		return k
	}
	return ShellKind
}

// runsOn reports whether a worker matching m may run j: it has a handler
// for the job's kind (or names no kinds), and carries every job label k=v
// with the same value.
func (m matcher) runsOn(j *hodeiv1.Job) bool {
	if m.kinds != nil {
		if _, ok := m.kinds[JobKind(j.GetSpec())]; !ok {
			return false
		}
	}
	for _, kv := range j.GetSpec().GetLabels() {
		v, ok := m.labels[kv.GetKey()]
		if !ok || v != kv.GetValue() {
			return false
		}
	}
	for _, c := range j.GetSpec().GetConstraints() {
		if !constraintHolds(c, m.labels) {
			return false
		}
	}
	return true
}

// firstMatching returns the first job of t's ready queue (in priority/FIFO
// order, looking at most maxSkipScan entries) that a worker matching ls may run.
func (s *state) firstMatching(t *tenant, ls matcher) (*hodeiv1.Job, bool) {
	var out *hodeiv1.Job
	n := 0
	t.ready.Ascend(func(k readyKey) bool {
		j := s.jobs[k.seq]
		if j == nil {
			panic(fmt.Sprintf("fsm: ready queue of %q holds unknown seq %d", t.name, k.seq))
		}
		if ls.runsOn(j) {
			out = j
			return false
		}
		n++
		return n < maxSkipScan
	})
	return out, out != nil
}

// pickReady chooses up to max jobs for a worker with labels ls, by deficit
// round robin over tenants, removing them from the ready queues. It
// updates the cursor and deficits. The order of the returned jobs is the
// order they were picked.
func (s *state) pickReady(max int, ls matcher) []*hodeiv1.Job {
	sc := &s.sched
	var out []*hodeiv1.Job
	idle := 0 // consecutive tenant visits that yielded nothing
	for len(out) < max && sc.active.Len() > 0 && idle < sc.active.Len() {
		name, _ := sc.nextActive()
		t := s.tenants[name]
		if !ls.allowsTenant(name) {
			// A tenant the worker's token does not allow is passed over
			// without touching its credit (auth, issue 12).
			idle++
			sc.cursor = name + "\x00"
			continue
		}
		if t.deficit <= 0 {
			t.deficit += sc.quantum(t)
		}
		got := 0
		exhausted := false
		room := s.runningCap(t) // max_running (quota.go)
		for t.deficit > 0 && len(out) < max {
			if got == room {
				exhausted = true // at its max-running: its turn ends, others go on
				break
			}
			j, ok := s.firstMatching(t, ls)
			if !ok {
				exhausted = true
				break
			}
			sc.remove(t, j) // may deactivate t and zero its deficit
			out = append(out, j)
			got++
			t.picked++
			if t.ready.Len() == 0 {
				exhausted = true
				break
			}
			t.deficit--
		}
		if got > 0 {
			idle = 0
		} else {
			idle++
		}
		if !exhausted && t.deficit > 0 {
			// Capacity ran out mid-turn: the tenant keeps its turn.
			sc.cursor = name
			break
		}
		if exhausted {
			t.deficit = 0
		}
		sc.cursor = name + "\x00" // the smallest name after this one
	}
	for _, j := range out {
		s.tenants[j.GetSpec().GetTenant()].picked = 0
	}
	return out
}

// hasReadyFor reports whether pickReady would find a job for ls (same
// bounded scan per tenant).
func (s *state) hasReadyFor(ls matcher) bool {
	found := false
	s.sched.active.Ascend(func(name string) bool {
		t := s.tenants[name]
		if !ls.allowsTenant(name) {
			return true // not the worker's tenant (auth, issue 12)
		}
		if s.runningCap(t) == 0 {
			return true // at its max-running: pickReady skips it
		}
		if _, ok := s.firstMatching(t, ls); ok {
			found = true
			return false
		}
		return true
	})
	return found
}
