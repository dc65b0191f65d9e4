package cluster

import (
	"bytes"
	"errors"
	"fmt"
	"sync"
	"sync/atomic"
	"time"

	"github.com/hashicorp/raft"
	"go.etcd.io/bbolt"

	"github.com/hodei-io/hodei/cluster/gossip"
	"github.com/hodei-io/hodei/cluster/logdb"
)

// Log-store health. Every group's raft.LogStore and raft.StableStore are
// wrapped (healthStore) so that the node sees each write's outcome. A write
// error marks the node's store failing (the groups share one log store, and
// one failed commit fails every group's writes in it); it is healthy again
// once a write has succeeded after the last error and no write has failed
// for storeRecoverAfter. A full disk lets small commits through now and
// then, so "the next write succeeded" alone would flap.
//
// While failing, the node gossips the condition (gossip.Meta.LogStoreFailing):
// the meta leader's balancer gives it no shard. While a write failed within
// the last storeErrorsFor ("erroring", gossiped as gossip.Meta.LogStoreErrors;
// a full disk fails the probe every second), moreover
//   - it hands the leadership of every group it leads to a live voter that
//     is not erroring, preferably not failing (LeadershipTransferToServer),
//     retrying every storeTick, and
//   - every node, itself included, refuses its vote to it as a candidate
//     (refuseVote below), as long as the other voters that are alive and
//     not erroring form a quorum of the group without it.
//     hashicorp/raft has no "do not campaign" switch and its vote granting
//     cannot be hooked, but it persists a vote before granting (or, for its
//     own, counting) it and gives none when that write fails: the
//     stable-store wrapper fails exactly that write. Refusing a vote is
//     always safe; without a healthy quorum the votes are given as before,
//     so a group whose only possible leader is the failing node still gets
//     one.
//
// A probe write (storeProbeSize bytes under storeProbeKey in the meta
// group's stable store) runs every storeTick while failing, so recovery is
// noticed on a node that leads nothing, and after storeProbeEvery without a
// successful write while healthy, so an idle node notices a full disk
// before it is given a leadership.

const (
	storeTick         = time.Second
	storeProbeEvery   = 5 * time.Second
	storeRecoverAfter = 5 * time.Second
	// storeErrorsFor: a write failed this recently, so the disk is still
	// failing (a full disk fails the 1 s probe every time), not just in
	// storeRecoverAfter. Only then does the node hand leaderships away and
	// get no votes: a node still flagged after its disk recovered must not
	// make the others count a second, really full, node electable (the
	// quorum condition of refuseVote).
	storeErrorsFor = 3 * time.Second
	storeTermRetry = 100 * time.Millisecond
	// storeProbeSize: larger than most log commits, so that a disk with a
	// few free pages left does not look healthy.
	storeProbeSize = 16 << 10
)

var (
	storeProbeKey = []byte("hodei.store-probe")
	// hashicorp/raft's stable keys of a vote (raft.go: persistVote writes
	// LastVoteTerm, then LastVoteCand; nothing else writes them).
	keyLastVoteTerm = []byte("LastVoteTerm")
	keyLastVoteCand = []byte("LastVoteCand")
	// keyCurrentTerm: raft panics when it cannot write it ("failed to save
	// current term"), so a failed write of it is retried (retryTerm).
	keyCurrentTerm = []byte("CurrentTerm")
	errInjected    = errors.New("injected log store failure (test)")
)

// storeInjection is a test-only failure mode of the wrappers.
type storeInjection int32

const (
	injectNone storeInjection = iota
	// injectProbe fails probe writes only: the store counts as failing
	// while the node's log stays current (a full disk that lets small
	// commits through), the case where it could otherwise win elections.
	injectProbe
	// injectWrites also fails every StoreLogs and DeleteRange. Stable-store
	// writes still go through: raft panics when it cannot persist a term.
	injectWrites
)

// storeHealth tracks the write health of this node's log store and acts on
// it (see above). One per node.
type storeHealth struct {
	n *Node

	lastOK, lastErr atomic.Int64 // unix nanos of the last successful / failed write
	lastErrText     atomic.Pointer[string]
	failingNow      atomic.Bool // published state: set and cleared by the loop
	erroringNow     atomic.Bool // published: a write failed within storeErrorsFor
	writeErrors     atomic.Uint64
	votesRefused    atomic.Uint64 // its own included
	handoffs        atomic.Uint64
	inject          atomic.Int32

	probeStable raft.StableStore // the meta group's unwrapped stable store
	payload     []byte
	probing     atomic.Bool
	lastProbe   time.Time // loop only

	votersMu sync.Mutex
	voters   map[uint32][]raft.Server // each group's configuration, refreshed by the loop
	// termBlocked: groups whose raft main goroutine waits in retryTerm;
	// the loop must not ask their raft anything that goes through it.
	termBlocked sync.Map // uint32 -> struct{}

	kick      chan struct{}
	stop      chan struct{}
	wg        sync.WaitGroup
	startOnce sync.Once
	stopOnce  sync.Once
}

func newStoreHealth(n *Node) *storeHealth {
	return &storeHealth{n: n, voters: map[uint32][]raft.Server{}, kick: make(chan struct{}, 1), stop: make(chan struct{}),
		payload: make([]byte, storeProbeSize)}
}

// failing reports whether this node's log store is failing writes.
func (h *storeHealth) failing() bool { return h != nil && h.failingNow.Load() }

// erroring reports whether a write failed within storeErrorsFor (read
// directly, not through the loop: the node's own votes depend on it).
func (h *storeHealth) erroring() bool {
	if h == nil {
		return false
	}
	last := h.lastErr.Load()
	return last != 0 && time.Since(time.Unix(0, last)) < storeErrorsFor
}

// setInjection sets the test-only failure mode.
func (h *storeHealth) setInjection(m storeInjection) {
	h.inject.Store(int32(m))
	h.poke()
}

func (h *storeHealth) injected(m storeInjection) bool { return storeInjection(h.inject.Load()) >= m }

func (h *storeHealth) poke() {
	select {
	case h.kick <- struct{}{}:
	default:
	}
}

// record notes the outcome of one write.
func (h *storeHealth) record(err error) {
	switch {
	case err == nil:
		h.lastOK.Store(time.Now().UnixNano())
	case errors.Is(err, logdb.ErrClosed), errors.Is(err, bbolt.ErrDatabaseNotOpen):
		// Shutting down, not a failing disk.
	default:
		h.writeErrors.Add(1)
		s := err.Error()
		h.lastErrText.Store(&s)
		first := !h.erroringNow.Load()
		h.lastErr.Store(time.Now().UnixNano())
		if first {
			h.poke()
		}
	}
}

// wrap returns the stores raft is given for group id.
func (h *storeHealth) wrap(id uint32, logs raft.LogStore, stable raft.StableStore) (raft.LogStore, raft.StableStore) {
	if id == MetaGroup {
		h.probeStable = stable
	}
	s := &healthStore{h: h, group: id, logs: logs, stable: stable}
	return s, s
}

func (h *storeHealth) start() {
	h.startOnce.Do(func() {
		h.wg.Add(1)
		go h.run()
	})
}

// close stops the loop and waits for it and a probe in flight.
func (h *storeHealth) close() {
	h.stopOnce.Do(func() { close(h.stop) })
	h.wg.Wait()
}

func (h *storeHealth) run() {
	defer h.wg.Done()
	t := time.NewTicker(storeTick)
	defer t.Stop()
	for {
		select {
		case <-h.stop:
			return
		case <-h.kick:
		case <-t.C:
		}
		// Publish first: peers refuse votes only once gossip tells them.
		h.evaluate()
		h.refreshVoters()
		h.maybeProbe()
		if h.erroring() {
			h.handOff()
		}
	}
}

func (h *storeHealth) maybeProbe() {
	if h.probeStable == nil || h.probing.Load() {
		return
	}
	now := time.Now()
	if h.failing() || h.injected(injectProbe) {
		if now.Sub(h.lastProbe) < storeTick {
			return
		}
	} else if now.Sub(time.Unix(0, h.lastOK.Load())) < storeProbeEvery || now.Sub(h.lastProbe) < storeProbeEvery {
		return
	}
	h.lastProbe = now
	h.probing.Store(true)
	h.wg.Add(1)
	go func() {
		defer h.wg.Done()
		defer h.probing.Store(false)
		if h.injected(injectProbe) {
			h.record(errInjected)
		} else {
			h.record(h.probeStable.Set(storeProbeKey, h.payload))
		}
		h.poke()
	}()
}

// evaluate decides the state and publishes a change.
func (h *storeHealth) evaluate() {
	lastErr, lastOK := h.lastErr.Load(), h.lastOK.Load()
	failing := lastErr != 0 && (lastOK <= lastErr || time.Since(time.Unix(0, lastErr)) < storeRecoverAfter)
	erroring := h.erroring()
	if failing == h.failingNow.Load() && erroring == h.erroringNow.Load() {
		return
	}
	wasFailing, wasErroring := h.failingNow.Load(), h.erroringNow.Load()
	h.failingNow.Store(failing)
	h.erroringNow.Store(erroring)
	log := h.n.cfg.Logger
	switch {
	case failing == wasFailing && !erroring && wasErroring:
		log.Info("log store writes succeed again: taking leaderships and votes again, given none by the balancer for a few seconds more")
	case failing == wasFailing:
		// erroring again while still flagged: published below
	case failing:
		text := ""
		if p := h.lastErrText.Load(); p != nil {
			text = *p
		}
		log.Warn("log store failing writes: handing leaderships away and asking for no votes until writes succeed again", "err", text)
	default:
		log.Info("log store healthy again: writes succeed", "failed_writes_total", h.writeErrors.Load())
	}
	if g := h.n.gossipImpl; g != nil {
		m := g.LocalMeta()
		m.LogStoreFailing, m.LogStoreErrors = failing, erroring
		if err := g.UpdateMeta(m, time.Second); err != nil && !errors.Is(err, gossip.ErrClosed) {
			log.Warn("gossip log store state", "failing", failing, "err", err)
		}
	}
}

// refreshVoters caches each group's configuration for refuseVote, which
// runs on raft's main goroutine and so cannot ask raft for it.
func (h *storeHealth) refreshVoters() {
	for _, id := range h.n.groups() {
		r, err := h.n.groupRaft(id)
		if err != nil {
			continue
		}
		if _, blocked := h.termBlocked.Load(id); blocked {
			continue
		}
		f := r.GetConfiguration()
		if f.Error() != nil {
			continue
		}
		servers := f.Configuration().Servers
		h.votersMu.Lock()
		h.voters[id] = servers
		h.votersMu.Unlock()
	}
}

func (h *storeHealth) votersOf(id uint32) []raft.Server {
	h.votersMu.Lock()
	defer h.votersMu.Unlock()
	return h.voters[id]
}

// storeFailing reports whether node id's log store is failing: this node's
// own tracker, or what id gossips.
func (n *Node) storeFailing(id string) bool {
	if id == n.cfg.NodeID {
		return n.storeHealth.failing()
	}
	return n.gossip != nil && n.gossip.LogStoreFailing(id)
}

// storeErroring reports whether a write of node id's log store failed in
// the last storeErrorsFor (for itself: read directly).
func (n *Node) storeErroring(id string) bool {
	if id == n.cfg.NodeID {
		return n.storeHealth.erroring()
	}
	return n.gossip != nil && n.gossip.LogStoreErrors(id)
}

// usable: a voter that may be given a leadership.
func (n *Node) usable(id string) bool { return n.alive(id) && !n.storeFailing(id) }

// handOff transfers the leadership of every group this node leads to a
// healthy live voter, the one leading the fewest shards.
func (h *storeHealth) handOff() {
	n := h.n
	led := map[string]int{}
	for _, s := range n.shards {
		if _, id := s.raft.LeaderWithID(); id != "" {
			led[string(id)]++
		}
	}
	var wg sync.WaitGroup
	for _, id := range n.groups() {
		r, err := n.groupRaft(id)
		if err != nil || r.State() != raft.Leader {
			continue
		}
		// A healthy voter leading the fewest shards; else one that is
		// only recovering (flagged, but its writes succeed again).
		var to *raft.Server
		toFlagged := false
		for _, srv := range h.votersOf(id) {
			sid := string(srv.ID)
			if srv.Suffrage != raft.Voter || sid == n.cfg.NodeID || !n.alive(sid) || n.storeErroring(sid) {
				continue
			}
			flagged := n.storeFailing(sid)
			if to == nil || (toFlagged && !flagged) || (toFlagged == flagged && led[sid] < led[string(to.ID)]) {
				to, toFlagged = &srv, flagged
			}
		}
		if to == nil {
			n.cfg.Logger.Debug("log store failing: no healthy voter to hand leadership to", "group", GroupName(id))
			continue
		}
		led[string(to.ID)]++
		wg.Add(1)
		go func(id uint32, r *raft.Raft, to raft.Server) {
			defer wg.Done()
			if err := r.LeadershipTransferToServer(to.ID, to.Address).Error(); err != nil {
				if errors.Is(err, raft.ErrLeadershipTransferInProgress) {
					return // the previous round's is still going
				}
				n.cfg.Logger.Warn("log store failing: leadership transfer failed", "group", GroupName(id), "to", to.ID, "err", err)
				return
			}
			h.handoffs.Add(1)
			n.cfg.Logger.Info("log store failing: leadership handed away", "group", GroupName(id), "to", to.ID)
		}(id, r, *to)
	}
	wg.Wait()
}

// refuseVote is called before this node persists a vote for the candidate
// at address cand in group id (hashicorp/raft's persistVote): non-nil means
// the vote is not given.
//
// A failing node also refuses its own vote when it campaigns (raft's
// electSelf persists it before counting it; on the error it counts no vote
// at all in that term), so it cannot win before gossip has told the others
// — the chaos disk-full run saw a full node win twice in the second after
// its first failed write. The same quorum condition applies.
func (h *storeHealth) refuseVote(id uint32, cand []byte) error {
	n := h.n
	candID, refuse := voteRefused(h.votersOf(id), string(cand), n.storeErroring, n.alive)
	if !refuse {
		return nil
	}
	h.votesRefused.Add(1)
	if string(cand) == n.addr {
		return fmt.Errorf("not voting for itself: this node's log store is failing writes (and the healthy voters form a quorum)")
	}
	return fmt.Errorf("vote for %s refused: its log store is failing writes (and the healthy voters form a quorum)", candID)
}

// voteRefused decides refuseVote: refuse when the candidate (by Raft
// address) is a known server whose store is failing (erroring) and the
// voters other than it that are alive and not failing are a quorum.
func voteRefused(servers []raft.Server, candAddr string, failing, alive func(id string) bool) (candID string, refuse bool) {
	voters := 0
	for _, srv := range servers {
		if string(srv.Address) == candAddr {
			candID = string(srv.ID)
		}
		if srv.Suffrage == raft.Voter {
			voters++
		}
	}
	if candID == "" || !failing(candID) {
		return candID, false
	}
	healthy := 0
	for _, srv := range servers {
		id := string(srv.ID)
		if srv.Suffrage == raft.Voter && id != candID && alive(id) && !failing(id) {
			healthy++
		}
	}
	return candID, healthy >= voters/2+1
}

// healthStore is one group's log and stable store as raft sees them.
type healthStore struct {
	h      *storeHealth
	group  uint32
	logs   raft.LogStore
	stable raft.StableStore

	// voteTerm holds persistVote's LastVoteTerm until its LastVoteCand
	// comes: a refused vote then leaves both keys as they were (writing the
	// term alone would let raft's "duplicate request in the same term"
	// path grant a repeated request from the refused candidate without
	// persisting anything).
	voteMu      sync.Mutex
	voteTerm    uint64
	voteTermSet bool
}

func (s *healthStore) FirstIndex() (uint64, error)            { return s.logs.FirstIndex() }
func (s *healthStore) LastIndex() (uint64, error)             { return s.logs.LastIndex() }
func (s *healthStore) GetLog(index uint64, l *raft.Log) error { return s.logs.GetLog(index, l) }

// logWrite runs one log-store write (or fails it, under the test-only
// injection) and records its outcome.
func (s *healthStore) logWrite(write func() error) error {
	err := errInjected
	if !s.h.injected(injectWrites) {
		err = write()
	}
	s.h.record(err)
	return err
}

func (s *healthStore) StoreLog(l *raft.Log) error {
	return s.logWrite(func() error { return s.logs.StoreLog(l) })
}

func (s *healthStore) StoreLogs(logs []*raft.Log) error {
	return s.logWrite(func() error { return s.logs.StoreLogs(logs) })
}

func (s *healthStore) DeleteRange(min, max uint64) error {
	return s.logWrite(func() error { return s.logs.DeleteRange(min, max) })
}

// IsMonotonic forwards raft.MonotonicLogStore (raft.LogCache asks its store).
func (s *healthStore) IsMonotonic() bool {
	m, ok := s.logs.(raft.MonotonicLogStore)
	return ok && m.IsMonotonic()
}

func (s *healthStore) Set(key, val []byte) error {
	if bytes.Equal(key, keyLastVoteCand) {
		s.voteMu.Lock()
		term, ok := s.voteTerm, s.voteTermSet
		s.voteTermSet = false
		s.voteMu.Unlock()
		if err := s.h.refuseVote(s.group, val); err != nil {
			return err
		}
		if ok {
			err := s.stable.SetUint64(keyLastVoteTerm, term)
			s.h.record(err)
			if err != nil {
				return err
			}
		}
	}
	err := s.stable.Set(key, val)
	s.h.record(err)
	return err
}

func (s *healthStore) SetUint64(key []byte, val uint64) error {
	if bytes.Equal(key, keyLastVoteTerm) {
		s.voteMu.Lock()
		s.voteTerm, s.voteTermSet = val, true
		s.voteMu.Unlock()
		return nil // written with the candidate (Set)
	}
	err := s.stable.SetUint64(key, val)
	s.h.record(err)
	if err != nil && bytes.Equal(key, keyCurrentTerm) {
		err = s.h.retryTerm(s.group, val, err, func() error { return s.stable.SetUint64(key, val) })
	}
	return err
}

// retryTerm retries a failed write of group's current term until it
// succeeds or the node closes. raft panics when setCurrentTerm's write
// fails, and a node whose disk is full meets new terms all the time (every
// RequestVote or AppendEntries of a newer term, and the elections its own
// handing off starts): the first chaos disk-full run with hand-offs lost
// the node that way. Waiting blocks only this group's raft main goroutine,
// which is never a leader's at that point (raft steps down before it
// persists a newer term); the node's other groups go on, and the group
// resumes when space comes back. On close the error is returned (and raft
// panics, as it did before).
func (h *storeHealth) retryTerm(group uint32, term uint64, err error, write func() error) error {
	if errors.Is(err, logdb.ErrClosed) || errors.Is(err, bbolt.ErrDatabaseNotOpen) {
		return err
	}
	h.termBlocked.Store(group, struct{}{})
	defer h.termBlocked.Delete(group)
	log := h.n.cfg.Logger
	log.Error("cannot persist the Raft term: retrying until it can be written (raft stops the process otherwise)",
		"group", GroupName(group), "term", term, "err", err)
	start := time.Now()
	lastLog := start
	t := time.NewTicker(storeTermRetry)
	defer t.Stop()
	for {
		select {
		case <-h.stop:
			return err
		case <-t.C:
		}
		if err = write(); err == nil {
			h.record(nil)
			log.Warn("Raft term persisted after retrying", "group", GroupName(group), "term", term, "waited", time.Since(start).Round(time.Millisecond))
			return nil
		}
		h.record(err)
		if errors.Is(err, logdb.ErrClosed) || errors.Is(err, bbolt.ErrDatabaseNotOpen) {
			return err
		}
		if time.Since(lastLog) >= 10*time.Second {
			lastLog = time.Now()
			log.Error("still cannot persist the Raft term", "group", GroupName(group), "term", term, "waited", time.Since(start).Round(time.Second), "err", err)
		}
	}
}

func (s *healthStore) Get(key []byte) ([]byte, error)       { return s.stable.Get(key) }
func (s *healthStore) GetUint64(key []byte) (uint64, error) { return s.stable.GetUint64(key) }
