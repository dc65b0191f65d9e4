package cluster

import (
	"fmt"
	"os"
	"path/filepath"
	"time"

	"github.com/hashicorp/raft"
	raftboltdb "github.com/hashicorp/raft-boltdb/v2"
	"go.etcd.io/bbolt"

	"github.com/hodei-io/hodei/transport"
)

// MetaGroup is the Raft group id of the meta group; shards are 0..N-1.
const MetaGroup uint32 = 1<<32 - 1

// openedGroup is a started Raft group and what closing it needs.
type openedGroup struct {
	raft       *raft.Raft
	trans      transport.RaftTransport
	closeStore func() error
}

// openGroup starts the Raft group id with file snapshots under dir and its
// log in the node's shared log store (cluster/logdb: one BoltDB file for
// every group, commits grouped across groups), or, with PerGroupLogStore,
// in its own raft-boltdb/v2 file under dir. Both: fsync on, no freelist
// sync, map freelist, behind a raft.LogCache.
func openGroup(n *Node, id uint32, name, dir string, f raft.FSM, notify chan bool) (*openedGroup, error) {
	cfg := n.cfg
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return nil, err
	}
	if !cfg.PerGroupLogStore {
		return startGroup(n, id, name, dir, f, notify, n.logdb.Group(id), n.logdb.Group(id), func() error { return nil })
	}
	store, err := raftboltdb.New(raftboltdb.Options{
		Path: filepath.Join(dir, "raft.db"),
		BoltOptions: &bbolt.Options{
			Timeout:        time.Second,
			NoFreelistSync: true,
			FreelistType:   bbolt.FreelistMapType,
		},
	})
	if err != nil {
		return nil, fmt.Errorf("open raft log of %s: %w", name, err)
	}
	return startGroup(n, id, name, dir, f, notify, store, store, store.Close)
}

func startGroup(n *Node, id uint32, name, dir string, f raft.FSM, notify chan bool, store raft.LogStore, stable raft.StableStore, closeStore func() error) (*openedGroup, error) {
	cfg := n.cfg
	store, stable = n.storeHealth.wrap(id, store, stable)
	hl := n.raftLog.hclog("raft[" + name + "]")
	snaps, err := raft.NewFileSnapshotStoreWithLogger(dir, 2, hl)
	if err != nil {
		closeStore()
		return nil, err
	}
	logs, err := raft.NewLogCache(4096, store)
	if err != nil {
		closeStore()
		return nil, err
	}
	rc := raft.DefaultConfig()
	rc.LocalID = raft.ServerID(cfg.NodeID)
	rc.HeartbeatTimeout = cfg.HeartbeatTimeout
	rc.ElectionTimeout = cfg.ElectionTimeout
	rc.LeaderLeaseTimeout = cfg.LeaderLeaseTimeout
	rc.CommitTimeout = cfg.CommitTimeout
	rc.SnapshotInterval = cfg.SnapshotInterval
	rc.SnapshotThreshold = cfg.SnapshotThreshold
	rc.TrailingLogs = cfg.TrailingLogs
	rc.MaxAppendEntries = 256
	// No BatchApplyCh: with it raft buffers MaxAppendEntries futures in
	// applyCh, and a future still in that buffer when raft shuts down is
	// never answered (nothing drains it), so the batcher's completer waited
	// for it forever (a Kill under load hung in TestKillLeaderWhileJobsInFlight).
	// Unbuffered, Apply returns only once the leader loop took the future
	// (answered on shutdown) or refused it; the leader loop still takes every
	// Apply already waiting into one dispatch, and proposals that arrive
	// while it stores go into the batcher's next entry instead of many
	// one-command entries (1 shard, 64 clients: 9 commands per entry
	// instead of 4.5, same submits/s).
	rc.BatchApplyCh = false
	rc.NotifyCh = notify
	rc.Logger = hl
	// Heartbeats that change raft's term or role go through raft's main
	// goroutine, not its fast path: an old leader could otherwise append
	// its waiting proposals in the new leader's term and apply them (chaos
	// F5, hashicorp/raft#695; transport/heartbeat.go).
	trans := transport.GuardHeartbeats(n.raftNet.Transport(id))
	r, err := raft.NewRaft(rc, f, logs, stable, snaps, trans)
	if err != nil {
		_ = trans.Close()
		closeStore()
		return nil, fmt.Errorf("start raft of %s: %w", name, err)
	}
	trans.Bind(r)
	// raft closes its transport only from the first Shutdown's future, and
	// not when it shut itself down on being removed from the group: close
	// the transport (idempotent) with the store in every case.
	closeAll := func() error {
		_ = trans.Close()
		return closeStore()
	}
	return &openedGroup{raft: r, trans: trans, closeStore: closeAll}, nil
}

// bootstrapGroup forms the initial configuration if the group has no state yet.
func bootstrapGroup(r *raft.Raft, peers []Peer) error {
	servers := make([]raft.Server, len(peers))
	for i, p := range peers {
		servers[i] = raft.Server{ID: raft.ServerID(p.ID), Address: raft.ServerAddress(p.Addr), Suffrage: raft.Voter}
	}
	err := r.BootstrapCluster(raft.Configuration{Servers: servers}).Error()
	if err != nil && err != raft.ErrCantBootstrap {
		return err
	}
	return nil
}
