package cluster

import (
	"context"
	"fmt"
	"sort"
	"sync"
	"time"

	"github.com/hashicorp/raft"
	"google.golang.org/protobuf/proto"

	"github.com/hodei-io/hodei/fsm"
	"github.com/hodei-io/hodei/proto/hodeiv1"
	"github.com/hodei-io/hodei/proto/internalpb"
	"github.com/hodei-io/hodei/scheduler"
	"github.com/hodei-io/hodei/transport"
)

// metaGroup is the small Raft group that holds the member list, the shard
// count and tenant settings. Its leader reconciles members and keeps shard
// leadership spread over the live nodes.
type metaGroup struct {
	n          *Node
	fsm        *fsm.MetaFSM
	raft       *raft.Raft
	closeStore func() error
	notify     chan bool
	// changed fires after every meta apply and restore: shard leaders wait
	// on it to bring their shards' tenant weights in line (tenants.go).
	changed *scheduler.Signal

	mu     sync.Mutex
	cancel context.CancelFunc // stops the leader loop
	// cooldown: a shard whose leadership transfer failed is left alone
	// until then (retrying every round keeps raft refusing writes: chaos F3).
	cooldown map[uint32]time.Time
	loopWG   sync.WaitGroup

	stop chan struct{}
	wg   sync.WaitGroup
}

func openMeta(n *Node, dir string) (*metaGroup, error) {
	m := &metaGroup{n: n, notify: make(chan bool, 16), stop: make(chan struct{}), changed: scheduler.NewSignal()}
	m.fsm = fsm.NewMeta(m.changed.Fire)
	g, err := openGroup(n, MetaGroup, "meta", dir, timedFSM{FSM: m.fsm, m: n.metrics.snapshots, group: "meta"}, m.notify)
	if err != nil {
		return nil, err
	}
	m.raft, m.closeStore = g.raft, g.closeStore
	m.wg.Add(2)
	go m.watchLeadership()
	go m.keepClusterFile()
	return m, nil
}

func (m *metaGroup) watchLeadership() {
	defer m.wg.Done()
	for {
		select {
		case <-m.stop:
			m.stopLoop()
			return
		case leader := <-m.notify:
			m.stopLoop()
			if leader {
				m.startLoop()
			}
		}
	}
}

func (m *metaGroup) startLoop() {
	m.mu.Lock()
	defer m.mu.Unlock()
	ctx, cancel := context.WithCancel(context.Background())
	m.cancel = cancel
	m.loopWG.Add(1)
	go func() {
		defer m.loopWG.Done()
		if err := m.raft.Barrier(m.n.cfg.ApplyTimeout).Error(); err != nil {
			return
		}
		t := time.NewTicker(m.n.cfg.BalanceInterval)
		defer t.Stop()
		for {
			m.reconcile(ctx)
			select {
			case <-ctx.Done():
				return
			case <-t.C:
			}
		}
	}()
}

func (m *metaGroup) stopLoop() {
	m.mu.Lock()
	c := m.cancel
	m.cancel = nil
	m.mu.Unlock()
	if c != nil {
		c()
		m.loopWG.Wait()
	}
}

func (m *metaGroup) close() error {
	close(m.stop)
	m.wg.Wait()
	err := m.raft.Shutdown().Error()
	if cerr := m.closeStore(); err == nil {
		err = cerr
	}
	return err
}

func (m *metaGroup) propose(cmd *internalpb.MetaCommand) error {
	return m.proposeCtx(context.Background(), cmd)
}

// proposeCtx replicates cmd in the meta group and returns the state
// machine's verdict (a *fsm.CodeError for a rejected command). An error
// from Raft or ctx means the outcome is unknown.
func (m *metaGroup) proposeCtx(ctx context.Context, cmd *internalpb.MetaCommand) error {
	cmd.Version = fsm.MetaVersionFor(cmd)
	cmd.NowMs = m.n.now().UnixMilli()
	b, err := proto.Marshal(cmd)
	if err != nil {
		return err
	}
	f := m.raft.Apply(b, m.n.cfg.ApplyTimeout)
	if err := waitFuture(ctx, f); err != nil {
		return err
	}
	if err, ok := f.Response().(error); ok && err != nil {
		return err
	}
	return nil
}

// reconcile runs on the meta leader: it records the shard count, keeps the
// member list equal to the meta group's Raft configuration, and moves one
// shard's leadership per round towards an even spread.
func (m *metaGroup) reconcile(ctx context.Context) {
	log := m.n.cfg.Logger
	if m.fsm.ShardCount() == 0 {
		if err := m.propose(&internalpb.MetaCommand{Kind: &internalpb.MetaCommand_InitShards{InitShards: uint32(len(m.n.shards))}}); err != nil {
			log.Warn("meta: record shard count", "err", err)
			return
		}
	}
	if m.fsm.ClusterID() == "" {
		m.recordClusterID(ctx)
	}
	cf := m.raft.GetConfiguration()
	if cf.Error() != nil {
		return
	}
	inConfig := map[string]raft.Server{}
	for _, srv := range cf.Configuration().Servers {
		inConfig[string(srv.ID)] = srv
	}
	known := map[string]*internalpb.Member{}
	for _, mem := range m.fsm.State().GetMembers() {
		known[mem.GetId()] = mem
	}
	for id, srv := range inConfig {
		if mem, ok := known[id]; !ok || mem.GetGrpcAddr() != string(srv.Address) {
			if err := m.propose(&internalpb.MetaCommand{Kind: &internalpb.MetaCommand_PutMember{PutMember: &internalpb.Member{Id: id, GrpcAddr: string(srv.Address)}}}); err != nil {
				log.Warn("meta: add member", "id", id, "err", err)
			}
		}
	}
	for id := range known {
		if _, ok := inConfig[id]; !ok {
			if err := m.propose(&internalpb.MetaCommand{Kind: &internalpb.MetaCommand_RemoveMember{RemoveMember: id}}); err != nil {
				log.Warn("meta: remove member", "id", id, "err", err)
			}
		}
	}
	m.n.ensureBootstrapToken(ctx) // auth (issue 12)
	m.n.removeDeadNodes(ctx)
	m.balance(ctx, cf.Configuration())
}

// balance moves the leadership of one shard from the node leading the most
// shards to the live voter leading the fewest, when they differ by more
// than one. Nodes whose log store is failing take no part.
func (m *metaGroup) balance(ctx context.Context, cfg raft.Configuration) {
	counts := map[string]int{}
	var live []string
	for _, srv := range cfg.Servers {
		// A node whose log store is failing is neither given a leadership
		// nor counted: it hands its own away (storehealth.go).
		if srv.Suffrage == raft.Voter && m.n.usable(string(srv.ID)) {
			counts[string(srv.ID)] = 0
			live = append(live, string(srv.ID))
		}
	}
	if len(live) < 2 {
		return
	}
	sort.Strings(live)
	led := map[string][]uint32{}
	for _, s := range m.n.shards {
		_, id := s.raft.LeaderWithID()
		if id == "" {
			return // an election is going on: wait for it
		}
		if _, ok := counts[string(id)]; ok {
			counts[string(id)]++
			led[string(id)] = append(led[string(id)], s.id)
		}
	}
	maxID, minID := live[0], live[0]
	for _, id := range live {
		if counts[id] > counts[maxID] {
			maxID = id
		}
		if counts[id] < counts[minID] {
			minID = id
		}
	}
	if counts[maxID]-counts[minID] <= 1 {
		return
	}
	// The shard must have the target as a voter.
	if m.cooldown == nil {
		m.cooldown = map[uint32]time.Time{}
	}
	var target *hodeiv1.StatusResponse // minID's status, probed once per round
	for _, sh := range led[maxID] {
		if !m.n.shards[sh].hasVoter(minID) || time.Now().Before(m.cooldown[sh]) {
			continue
		}
		// Only to a replica that has caught up: a node that just came back
		// replays its log and fetches what it missed first, and a transfer
		// to it now would time out (and cool the shard down for 15 s).
		if target == nil {
			st, err := m.n.probe(ctx, addrOf(cfg, minID))
			if err != nil {
				m.n.cfg.Logger.Debug("meta: balance target unreachable", "node", minID, "err", err)
				return
			}
			target = st
		}
		if lag, ok := replicaLag(target, sh, m.n.shards[sh].raft.CommitIndex()); !ok || lag > balanceMaxLag {
			m.n.cfg.Logger.Debug("meta: balance target not caught up on shard", "node", minID, "shard", sh, "lag", lag)
			continue
		}
		cctx, cancel := context.WithTimeout(ctx, 5*time.Second)
		err := m.n.transferShard(cctx, sh, minID)
		cancel()
		if err != nil {
			m.cooldown[sh] = time.Now().Add(15 * time.Second)
			m.n.cfg.Logger.Warn("meta: leadership transfer failed", "shard", sh, "from", maxID, "to", minID, "err", err)
		} else {
			m.n.cfg.Logger.Info("meta: moved shard leadership", "shard", sh, "from", maxID, "to", minID)
		}
		return
	}
}

// balanceMaxLag is how many entries behind this node's commit index a
// replica may be and still be given a shard's leadership by the balancer.
const balanceMaxLag = 256

// replicaLag is how far the replica described by st is behind commit on
// shard sh; ok is false when st has no healthy follower replica of sh.
func replicaLag(st *hodeiv1.StatusResponse, sh uint32, commit uint64) (lag uint64, ok bool) {
	for _, ss := range st.GetShards() {
		if ss.GetShard() != sh {
			continue
		}
		if ss.GetState() != raft.Follower.String() {
			return 0, false
		}
		if ss.GetAppliedIndex() >= commit {
			return 0, true
		}
		return commit - ss.GetAppliedIndex(), true
	}
	return 0, false
}

func addrOf(cfg raft.Configuration, id string) string {
	for _, srv := range cfg.Servers {
		if string(srv.ID) == id {
			return string(srv.Address)
		}
	}
	return ""
}

func (s *shard) hasVoter(id string) bool {
	cf := s.raft.GetConfiguration()
	if cf.Error() != nil {
		return false
	}
	for _, srv := range cf.Configuration().Servers {
		if string(srv.ID) == id && srv.Suffrage == raft.Voter {
			return true
		}
	}
	return false
}

// discoverShardCount asks the nodes to join for their shard count.
func discoverShardCount(cfg Config, probe probeFunc) (int, error) {
	deadline := time.Now().Add(30 * time.Second)
	var last error
	for time.Now().Before(deadline) {
		for _, addr := range cfg.Join {
			st, err := probe(context.Background(), addr)
			if err == nil && len(st.GetShards()) > 0 {
				return len(st.GetShards()), nil
			}
			last = err
		}
		time.Sleep(500 * time.Millisecond)
	}
	return 0, fmt.Errorf("cannot learn the shard count from %v: %v", cfg.Join, last)
}

// probe asks one node for its status over the node's pooled connection to
// it (join catch-up polls every 50 ms, the balancer every round: no dial per
// call).
func (n *Node) probe(ctx context.Context, addr string) (*hodeiv1.StatusResponse, error) {
	cc, err := n.pool.Get(addr)
	if err != nil {
		return nil, err
	}
	// The node's own credential, not a caller's token: the probed node may
	// be joining, its meta replica not yet holding any token.
	ctx, cancel := context.WithTimeout(transport.AsNode(ctx), 2*time.Second)
	defer cancel()
	return hodeiv1.NewAdminServiceClient(cc).Status(ctx, &hodeiv1.StatusRequest{})
}

// probeFunc asks the node at addr for its status (Node.probe: over the
// node's pool, so with the node's TLS credentials).
type probeFunc func(ctx context.Context, addr string) (*hodeiv1.StatusResponse, error)
