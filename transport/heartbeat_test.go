package transport

import (
	"context"
	"fmt"
	"io"
	"net"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/hashicorp/go-hclog"
	"github.com/hashicorp/raft"
	raftboltdb "github.com/hashicorp/raft-boltdb/v2"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/hodei-io/hodei/proto/internalpb"
)

// Chaos F5: an old leader that takes the new leader's heartbeat on raft's
// fast path while its leader loop still runs stamps its next proposals with
// the new term, at indexes where the new leader has other entries of that
// term; it keeps and applies them, and its state machine diverges.
//
// The scenario is a paused leader, reproduced without pausing a process:
// n1 leads with a 30 s lease (it does not notice losing its followers, as a
// SIGSTOPped process does not), is cut off while n2 and n3 elect a leader
// of a newer term, then receives only heartbeats (so only the fast path can
// tell it about the new term), then gets a proposal, then the cut heals.

// recFSM records the data of every command applied, by index.
type recFSM struct {
	mu   sync.Mutex
	cmds map[uint64]string
	last uint64
}

func (f *recFSM) Apply(l *raft.Log) any {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.cmds == nil {
		f.cmds = make(map[uint64]string)
	}
	f.cmds[l.Index] = string(l.Data)
	f.last = l.Index
	return nil
}

func (f *recFSM) applied() (uint64, map[uint64]string) {
	f.mu.Lock()
	defer f.mu.Unlock()
	out := make(map[uint64]string, len(f.cmds))
	for k, v := range f.cmds {
		out[k] = v
	}
	return f.last, out
}

func (f *recFSM) Snapshot() (raft.FSMSnapshot, error) { return nil, fmt.Errorf("recFSM: no snapshots") }
func (f *recFSM) Restore(io.ReadCloser) error         { return fmt.Errorf("recFSM: no snapshots") }

// cut is a partition enforced by gRPC interceptors: the isolated node
// refuses every Raft RPC (or, with heartbeatsIn, every one but heartbeats)
// and the others refuse every Raft RPC from it.
type cut struct {
	mu           sync.Mutex
	isolated     string // address; "" = no cut
	heartbeatsIn bool
}

func (c *cut) set(isolated string, heartbeatsIn bool) {
	c.mu.Lock()
	c.isolated, c.heartbeatsIn = isolated, heartbeatsIn
	c.mu.Unlock()
}

func (c *cut) refuse(local, from string, heartbeat bool) bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	switch {
	case c.isolated == "":
		return false
	case local == c.isolated:
		return !(c.heartbeatsIn && heartbeat)
	default:
		return from == c.isolated
	}
}

// check refuses msg (a RaftTransport request) arriving at local.
func (c *cut) check(local string, msg any) error {
	var h *internalpb.RaftRPCHeader
	heartbeat := false
	switch m := msg.(type) {
	case *internalpb.RaftAppendEntriesRequest:
		h, heartbeat = m.GetHeader(), isHeartbeat(appendReqFromPB(m))
	case *internalpb.RaftSnapshotChunk:
		h = m.GetRequest().GetHeader()
	case interface {
		GetHeader() *internalpb.RaftRPCHeader
	}:
		h = m.GetHeader()
	default:
		return nil
	}
	if h == nil || !c.refuse(local, string(h.GetAddr()), heartbeat) {
		return nil
	}
	return status.Error(codes.Unavailable, "test partition")
}

type cutStream struct {
	grpc.ServerStream
	c     *cut
	local string
}

func (s *cutStream) RecvMsg(m any) error {
	if err := s.ServerStream.RecvMsg(m); err != nil {
		return err
	}
	return s.c.check(s.local, m)
}

type hbNode struct {
	id, addr string
	srv      *grpc.Server
	pool     *Pool
	net      *RaftNetwork
	done     chan struct{}
	store    *raftboltdb.BoltStore
	logs     *raft.LogCache
	fsm      *recFSM
	raft     *raft.Raft
}

// runHeartbeatRace runs the scenario and returns how the replicas'
// applied commands and logs differ (empty: they agree).
func runHeartbeatRace(t *testing.T, guard bool) string {
	c := &cut{}
	logw := &logWriter{tb: t}
	defer logw.stop()
	dir := t.TempDir()
	nodes := make([]*hbNode, 3)
	var servers []raft.Server
	for i := range nodes {
		lis, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		nd := &hbNode{id: fmt.Sprintf("n%d", i+1), addr: lis.Addr().String(), pool: NewPool(), done: make(chan struct{}), fsm: &recFSM{}}
		local := nd.addr
		unary := func(ctx context.Context, req any, info *grpc.UnaryServerInfo, h grpc.UnaryHandler) (any, error) {
			if err := c.check(local, req); err != nil {
				return nil, err
			}
			return h(ctx, req)
		}
		stream := func(srv any, ss grpc.ServerStream, info *grpc.StreamServerInfo, h grpc.StreamHandler) error {
			return h(srv, &cutStream{ServerStream: ss, c: c, local: local})
		}
		nd.srv = grpc.NewServer(append(ServerOptions(), grpc.ChainUnaryInterceptor(unary), grpc.ChainStreamInterceptor(stream))...)
		nd.net = NewRaftNetwork(RaftConfig{LocalAddr: nd.addr, Timeout: 2 * time.Second}, nd.pool)
		nd.net.Register(nd.srv)
		go func() {
			defer close(nd.done)
			_ = nd.srv.Serve(lis)
		}()
		path := filepath.Join(dir, nd.id)
		if err := os.MkdirAll(path, 0o755); err != nil {
			t.Fatal(err)
		}
		if nd.store, err = raftboltdb.New(raftboltdb.Options{Path: filepath.Join(path, "raft.db")}); err != nil {
			t.Fatal(err)
		}
		if nd.logs, err = raft.NewLogCache(4096, nd.store); err != nil {
			t.Fatal(err)
		}
		nodes[i] = nd
		servers = append(servers, raft.Server{ID: raft.ServerID(nd.id), Address: raft.ServerAddress(nd.addr)})
	}
	defer func() {
		for _, nd := range nodes {
			if nd.raft != nil {
				_ = nd.raft.Shutdown().Error()
			}
		}
		for _, nd := range nodes {
			_ = nd.net.Close()
			nd.srv.Stop()
			<-nd.done
			_ = nd.pool.Close()
			_ = nd.store.Close()
		}
	}()
	for i, nd := range nodes {
		conf := raft.DefaultConfig()
		conf.LocalID = raft.ServerID(nd.id)
		conf.HeartbeatTimeout = 500 * time.Millisecond
		conf.ElectionTimeout = 500 * time.Millisecond
		conf.LeaderLeaseTimeout = 300 * time.Millisecond
		conf.CommitTimeout = 5 * time.Millisecond
		if i == 0 {
			// n1 never campaigns by itself and, leading, does not step
			// down for want of contact within the test: a paused process.
			conf.HeartbeatTimeout = 30 * time.Second
			conf.ElectionTimeout = 30 * time.Second
			conf.LeaderLeaseTimeout = 30 * time.Second
		}
		conf.Logger = hclog.New(&hclog.LoggerOptions{Name: "raft-" + nd.id, Level: hclog.Warn, Output: logw})
		var trans raft.Transport = nd.net.Transport(0)
		var g *HeartbeatGuard
		if guard {
			g = GuardHeartbeats(nd.net.Transport(0))
			trans = g
		}
		snaps := raft.NewInmemSnapshotStore()
		if err := raft.BootstrapCluster(conf, nd.logs, nd.store, snaps, trans, raft.Configuration{Servers: servers}); err != nil {
			t.Fatal(err)
		}
		r, err := raft.NewRaft(conf, nd.fsm, nd.logs, nd.store, snaps, trans)
		if err != nil {
			t.Fatal(err)
		}
		if g != nil {
			g.Bind(r)
		}
		nd.raft = r
	}
	n1 := nodes[0]
	leaderOf := func(cands []*hbNode, minTerm uint64) *hbNode {
		for _, nd := range cands {
			if nd.raft.State() == raft.Leader && nd.raft.CurrentTerm() >= minTerm {
				return nd
			}
		}
		return nil
	}
	appliedEverywhere := func(idx uint64) func() bool {
		return func() bool {
			for _, nd := range nodes {
				if last, _ := nd.fsm.applied(); last < idx {
					return false
				}
			}
			return true
		}
	}

	// 1. n1 leads (by transfer: it never campaigns itself).
	waitFor(t, 20*time.Second, "n1 leads", func() bool {
		if n1.raft.State() == raft.Leader {
			return true
		}
		if l := leaderOf(nodes[1:], 0); l != nil {
			_ = l.raft.LeadershipTransferToServer(raft.ServerID(n1.id), raft.ServerAddress(n1.addr)).Error()
		}
		return n1.raft.State() == raft.Leader
	})
	f := n1.raft.Apply([]byte("n1-committed"), 5*time.Second)
	if err := f.Error(); err != nil {
		t.Fatalf("apply on n1: %v", err)
	}
	waitFor(t, 20*time.Second, "first command applied everywhere", appliedEverywhere(f.Index()))
	oldTerm := n1.raft.CurrentTerm()

	// 2. Cut n1 off; n2 and n3 elect a leader of a newer term, which
	// commits an entry of its own.
	c.set(n1.addr, false)
	var nl *hbNode
	waitFor(t, 20*time.Second, "a new leader among n2, n3", func() bool {
		nl = leaderOf(nodes[1:], oldTerm+1)
		return nl != nil
	})
	if err := nl.raft.Apply([]byte("new-leader-1"), 5*time.Second).Error(); err != nil {
		t.Fatalf("apply on the new leader %s: %v", nl.id, err)
	}
	if n1.raft.State() != raft.Leader {
		t.Fatalf("n1 stopped leading by itself (state %v): the scenario needs a leader that does not notice", n1.raft.State())
	}
	newTerm := nl.raft.CurrentTerm()

	// 3. n1 hears heartbeats only: it learns the new term, its leader
	// loop does not run meanwhile.
	c.set(n1.addr, true)
	waitFor(t, 20*time.Second, "n1 in the new term", func() bool { return n1.raft.CurrentTerm() >= newTerm })

	// 4. A proposal reaches n1 (one already queued in its batcher, say).
	err := n1.raft.Apply([]byte("n1-stale"), 2*time.Second).Error()
	t.Logf("proposal on the deposed n1: %v (term %d, new leader %s in term %d)", err, n1.raft.CurrentTerm(), nl.id, newTerm)

	// 5. Heal; the new leader commits more; every replica applies it.
	c.set("", false)
	var last raft.ApplyFuture
	waitFor(t, 30*time.Second, "a command committed after the heal", func() bool {
		l := leaderOf(nodes, newTerm)
		if l == nil {
			return false
		}
		last = l.raft.Apply([]byte("after-heal"), 5*time.Second)
		return last.Error() == nil
	})
	waitFor(t, 30*time.Second, "every replica applied the last command", appliedEverywhere(last.Index()))

	// Compare what was applied, and the logs, index by index.
	var diffs []string
	all := make([]map[uint64]string, len(nodes))
	idxs := map[uint64]bool{}
	for i, nd := range nodes {
		_, all[i] = nd.fsm.applied()
		for k := range all[i] {
			if k <= last.Index() {
				idxs[k] = true
			}
		}
	}
	var sorted []uint64
	for k := range idxs {
		sorted = append(sorted, k)
	}
	sort.Slice(sorted, func(i, j int) bool { return sorted[i] < sorted[j] })
	for _, k := range sorted {
		var vals []string
		same := true
		for i := range nodes {
			v, ok := all[i][k]
			if !ok {
				v = "(nothing)"
			}
			if v0, ok0 := all[0][k]; v != v0 && (ok || ok0) {
				same = false
			}
			vals = append(vals, fmt.Sprintf("%s=%q", nodes[i].id, v))
		}
		if !same {
			diffs = append(diffs, fmt.Sprintf("applied at %d: %s", k, strings.Join(vals, " ")))
		}
	}
	for idx := uint64(1); idx <= last.Index(); idx++ {
		var ls []raft.Log
		for _, nd := range nodes {
			var l raft.Log
			if err := nd.logs.GetLog(idx, &l); err != nil {
				t.Fatalf("%s: log %d: %v", nd.id, idx, err)
			}
			ls = append(ls, l)
		}
		for i := 1; i < len(ls); i++ {
			if ls[i].Term == ls[0].Term && (ls[i].Type != ls[0].Type || string(ls[i].Data) != string(ls[0].Data)) {
				diffs = append(diffs, fmt.Sprintf("log %d, term %d: %s has %v %q, %s has %v %q", idx, ls[0].Term,
					nodes[0].id, ls[0].Type, ls[0].Data, nodes[i].id, ls[i].Type, ls[i].Data))
			}
		}
	}
	return strings.Join(diffs, "\n")
}

// TestHeartbeatGuardKeepsReplicasEqual: with the guard (what cluster
// uses), the deposed leader learns the new term on raft's main goroutine,
// refuses the proposal, and every replica applies the same log.
func TestHeartbeatGuardKeepsReplicasEqual(t *testing.T) {
	if d := runHeartbeatRace(t, true); d != "" {
		t.Fatalf("replicas diverged with the heartbeat guard:\n%s", d)
	}
}

// TestUnguardedHeartbeatDivergesReplicas documents why the guard exists:
// over the bare transport, hashicorp/raft v1.8.0 (issue #695) lets the
// deposed leader append its proposal in the new leader's term, keep it, and
// apply it. If this starts failing, raft no longer has the race: check
// whether HeartbeatGuard is still needed.
func TestUnguardedHeartbeatDivergesReplicas(t *testing.T) {
	d := runHeartbeatRace(t, false)
	if d == "" {
		t.Fatalf("the unguarded transport did not diverge: has hashicorp/raft fixed its heartbeat fast path (#695)?")
	}
	t.Logf("diverged as expected without the guard:\n%s", d)
}
