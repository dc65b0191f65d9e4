package transport

import (
	"encoding/binary"
	"errors"
	"fmt"
	"hash/crc32"
	"io"
	"net"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/hashicorp/go-hclog"
	"github.com/hashicorp/raft"
	raftboltdb "github.com/hashicorp/raft-boltdb/v2"
	"go.uber.org/goleak"
	"google.golang.org/grpc"
)

func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m)
}

// waitFor polls cond until it holds or timeout passes.
func waitFor(tb testing.TB, timeout time.Duration, what string, cond func() bool) {
	tb.Helper()
	deadline := time.Now().Add(timeout)
	for !cond() {
		if time.Now().After(deadline) {
			tb.Fatalf("timed out after %v waiting for %s", timeout, what)
		}
		time.Sleep(10 * time.Millisecond) // polling interval, not synchronisation
	}
}

// logWriter sends raft's logs to tb.Log until the test is over.
type logWriter struct {
	mu sync.Mutex
	tb testing.TB
}

func (w *logWriter) Write(p []byte) (int, error) {
	w.mu.Lock()
	defer w.mu.Unlock()
	if w.tb != nil {
		w.tb.Log(string(p))
	}
	return len(p), nil
}

func (w *logWriter) stop() {
	w.mu.Lock()
	w.tb = nil
	w.mu.Unlock()
}

// counterFSM counts distinct applied commands (the first 8 bytes are the
// command id, so a retried command counts once, as with Hodei's request
// ids) and folds them, in log order, into a checksum; its snapshot carries
// pad extra bytes so that snapshots span several stream chunks.
type counterFSM struct {
	pad int

	mu       sync.Mutex
	seen     map[uint64]bool
	sum      uint64
	restores atomic.Int64
}

func (f *counterFSM) Apply(l *raft.Log) any {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.seen == nil {
		f.seen = make(map[uint64]bool)
	}
	id := binary.BigEndian.Uint64(l.Data)
	if !f.seen[id] {
		f.seen[id] = true
		f.sum = f.sum*1099511628211 ^ uint64(crc32.ChecksumIEEE(l.Data))
	}
	return nil
}

func (f *counterFSM) state() (count, sum uint64) {
	f.mu.Lock()
	defer f.mu.Unlock()
	return uint64(len(f.seen)), f.sum
}

func (f *counterFSM) Snapshot() (raft.FSMSnapshot, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	ids := make([]uint64, 0, len(f.seen))
	for id := range f.seen {
		ids = append(ids, id)
	}
	return &counterSnap{ids: ids, sum: f.sum, pad: f.pad}, nil
}

func (f *counterFSM) Restore(rc io.ReadCloser) error {
	defer func() { _ = rc.Close() }()
	var hdr [24]byte
	if _, err := io.ReadFull(rc, hdr[:]); err != nil {
		return err
	}
	n := binary.BigEndian.Uint64(hdr[0:])
	seen := make(map[uint64]bool, n)
	var b [8]byte
	for i := uint64(0); i < n; i++ {
		if _, err := io.ReadFull(rc, b[:]); err != nil {
			return err
		}
		seen[binary.BigEndian.Uint64(b[:])] = true
	}
	pad := binary.BigEndian.Uint64(hdr[16:])
	got, err := io.Copy(io.Discard, rc)
	if err != nil {
		return err
	}
	if uint64(got) != pad {
		return fmt.Errorf("snapshot padding is %d bytes, want %d", got, pad)
	}
	f.mu.Lock()
	f.seen = seen
	f.sum = binary.BigEndian.Uint64(hdr[8:])
	f.mu.Unlock()
	f.restores.Add(1)
	return nil
}

type counterSnap struct {
	ids []uint64
	sum uint64
	pad int
}

func (s *counterSnap) Persist(sink raft.SnapshotSink) error {
	buf := make([]byte, 24+8*len(s.ids)+s.pad)
	binary.BigEndian.PutUint64(buf[0:], uint64(len(s.ids)))
	binary.BigEndian.PutUint64(buf[8:], s.sum)
	binary.BigEndian.PutUint64(buf[16:], uint64(s.pad))
	for i, id := range s.ids {
		binary.BigEndian.PutUint64(buf[24+8*i:], id)
	}
	if _, err := sink.Write(buf); err != nil {
		_ = sink.Cancel()
		return err
	}
	return sink.Close()
}

func (s *counterSnap) Release() {}

// testNode is one server: a gRPC server, a pool, a RaftNetwork and one
// raft.Raft per group.
type testNode struct {
	id   string
	addr string
	srv  *grpc.Server
	pool *Pool
	net  *RaftNetwork
	done chan struct{}
	// pipelines counts AppendEntriesPipeline streams served.
	pipelines atomic.Int64

	mu    sync.Mutex
	rafts map[uint32]*raft.Raft
	fsms  map[uint32]*counterFSM
}

type clusterOpts struct {
	bolt      bool // raft-boltdb + LogCache instead of InmemStore
	snapPad   int
	tweakConf func(*raft.Config)
}

type testCluster struct {
	tb    testing.TB
	opts  clusterOpts
	logw  *logWriter
	dir   string
	nodes []*testNode

	nextID  atomic.Uint64
	closers []func() error
}

func newTestCluster(tb testing.TB, n int, groups []uint32, opts clusterOpts) *testCluster {
	tb.Helper()
	c := &testCluster{tb: tb, opts: opts, logw: &logWriter{tb: tb}, dir: tb.TempDir()}
	tb.Cleanup(c.shutdown)
	for i := 0; i < n; i++ {
		c.addNode()
	}
	var servers []raft.Server
	for _, nd := range c.nodes {
		servers = append(servers, raft.Server{ID: raft.ServerID(nd.id), Address: raft.ServerAddress(nd.addr)})
	}
	for _, g := range groups {
		for _, nd := range c.nodes {
			c.startRaft(nd, g, &raft.Configuration{Servers: servers})
		}
	}
	return c
}

// addNode starts a server without any raft group.
func (c *testCluster) addNode() *testNode {
	c.tb.Helper()
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		c.tb.Fatal(err)
	}
	nd := &testNode{
		id:    fmt.Sprintf("n%d", len(c.nodes)+1),
		addr:  lis.Addr().String(),
		pool:  NewPool(),
		done:  make(chan struct{}),
		rafts: make(map[uint32]*raft.Raft),
		fsms:  make(map[uint32]*counterFSM),
	}
	countPipelines := func(srv any, ss grpc.ServerStream, info *grpc.StreamServerInfo, h grpc.StreamHandler) error {
		if strings.HasSuffix(info.FullMethod, "/AppendEntriesPipeline") {
			nd.pipelines.Add(1)
		}
		return h(srv, ss)
	}
	nd.srv = grpc.NewServer(append(ServerOptions(), grpc.ChainStreamInterceptor(countPipelines))...)
	nd.net = NewRaftNetwork(RaftConfig{LocalAddr: nd.addr, Timeout: 2 * time.Second, SnapshotTimeout: 20 * time.Second}, nd.pool)
	nd.net.Register(nd.srv)
	go func() {
		defer close(nd.done)
		_ = nd.srv.Serve(lis)
	}()
	c.nodes = append(c.nodes, nd)
	return nd
}

func (c *testCluster) raftConfig(id string, group uint32) *raft.Config {
	conf := raft.DefaultConfig()
	conf.LocalID = raft.ServerID(id)
	// Tolerant of a loaded 2-core machine running -race.
	conf.HeartbeatTimeout = 500 * time.Millisecond
	conf.ElectionTimeout = 500 * time.Millisecond
	conf.LeaderLeaseTimeout = 300 * time.Millisecond
	conf.CommitTimeout = 5 * time.Millisecond
	conf.Logger = hclog.New(&hclog.LoggerOptions{
		Name:   fmt.Sprintf("raft-%s-g%d", id, group),
		Level:  hclog.Warn,
		Output: c.logw,
	})
	if c.opts.tweakConf != nil {
		c.opts.tweakConf(conf)
	}
	return conf
}

// startRaft starts group on nd; boot, if set, bootstraps the group.
func (c *testCluster) startRaft(nd *testNode, group uint32, boot *raft.Configuration) *raft.Raft {
	c.tb.Helper()
	var logs raft.LogStore
	var stable raft.StableStore
	if c.opts.bolt {
		path := filepath.Join(c.dir, nd.id, fmt.Sprintf("g%d", group))
		if err := os.MkdirAll(path, 0o755); err != nil {
			c.tb.Fatal(err)
		}
		bs, err := raftboltdb.New(raftboltdb.Options{Path: filepath.Join(path, "raft.db")})
		if err != nil {
			c.tb.Fatal(err)
		}
		c.closers = append(c.closers, bs.Close) // after raft shut down
		cache, err := raft.NewLogCache(4096, bs)
		if err != nil {
			c.tb.Fatal(err)
		}
		logs, stable = cache, bs
	} else {
		s := raft.NewInmemStore()
		logs, stable = s, s
	}
	snaps := raft.NewInmemSnapshotStore()
	trans := nd.net.Transport(group)
	fsm := &counterFSM{pad: c.opts.snapPad}
	conf := c.raftConfig(nd.id, group)
	if boot != nil {
		if err := raft.BootstrapCluster(conf, logs, stable, snaps, trans, *boot); err != nil {
			c.tb.Fatal(err)
		}
	}
	r, err := raft.NewRaft(conf, fsm, logs, stable, snaps, trans)
	if err != nil {
		c.tb.Fatal(err)
	}
	nd.mu.Lock()
	nd.rafts[group] = r
	nd.fsms[group] = fsm
	nd.mu.Unlock()
	return r
}

func (nd *testNode) raft(group uint32) *raft.Raft {
	nd.mu.Lock()
	defer nd.mu.Unlock()
	return nd.rafts[group]
}

func (nd *testNode) fsm(group uint32) *counterFSM {
	nd.mu.Lock()
	defer nd.mu.Unlock()
	return nd.fsms[group]
}

// stopRaft shuts group down on nd (which closes its transport).
func (nd *testNode) stopRaft(tb testing.TB, group uint32) {
	tb.Helper()
	nd.mu.Lock()
	r := nd.rafts[group]
	delete(nd.rafts, group)
	delete(nd.fsms, group)
	nd.mu.Unlock()
	if r != nil {
		if err := r.Shutdown().Error(); err != nil {
			tb.Fatalf("shutdown %s group %d: %v", nd.id, group, err)
		}
	}
}

func (c *testCluster) shutdown() {
	for _, nd := range c.nodes {
		nd.mu.Lock()
		var rs []*raft.Raft
		for _, r := range nd.rafts {
			rs = append(rs, r)
		}
		nd.rafts = map[uint32]*raft.Raft{}
		nd.mu.Unlock()
		for _, r := range rs {
			if err := r.Shutdown().Error(); err != nil {
				c.tb.Errorf("shutdown %s: %v", nd.id, err)
			}
		}
	}
	for _, nd := range c.nodes {
		_ = nd.net.Close()
		nd.srv.Stop()
		<-nd.done
		_ = nd.pool.Close()
	}
	for _, closeFn := range c.closers {
		_ = closeFn()
	}
	c.logw.stop()
}

// leader waits until exactly one live node leads group and returns it.
func (c *testCluster) leader(group uint32) *testNode {
	c.tb.Helper()
	var lead *testNode
	waitFor(c.tb, 10*time.Second, fmt.Sprintf("a leader of group %d", group), func() bool {
		lead = nil
		n := 0
		for _, nd := range c.nodes {
			if r := nd.raft(group); r != nil && r.State() == raft.Leader {
				lead = nd
				n++
			}
		}
		return n == 1
	})
	return lead
}

// applyN applies n new commands of size bytes to group from conc
// goroutines, each retried on the current leader until it commits (a
// command's id makes a retry after an unknown outcome harmless).
func (c *testCluster) applyN(group uint32, n, conc, size int) {
	c.tb.Helper()
	if err := c.tryApplyN(group, n, conc, size); err != nil {
		c.tb.Fatal(err)
	}
}

// tryApplyN is applyN for any goroutine: it returns the failures.
func (c *testCluster) tryApplyN(group uint32, n, conc, size int) error {
	var wg sync.WaitGroup
	var next atomic.Int64
	base := c.nextID.Add(uint64(n)) - uint64(n)
	errc := make(chan error, conc)
	for w := 0; w < conc; w++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				i := next.Add(1)
				if i > int64(n) {
					return
				}
				// raft keeps the slice in its log: never reuse it.
				buf := make([]byte, size)
				binary.BigEndian.PutUint64(buf, base+uint64(i))
				if err := c.applyOne(group, buf); err != nil {
					errc <- fmt.Errorf("apply %d: %w", i, err)
					return
				}
			}
		}()
	}
	wg.Wait()
	close(errc)
	var errs []error
	for err := range errc {
		errs = append(errs, err)
	}
	return errors.Join(errs...)
}

func (c *testCluster) applyOne(group uint32, cmd []byte) error {
	deadline := time.Now().Add(30 * time.Second)
	for {
		var err error
		r := c.currentLeader(group)
		if r == nil {
			err = raft.ErrNotLeader
		} else {
			err = r.Apply(cmd, 5*time.Second).Error()
		}
		if err == nil {
			return nil
		}
		if time.Now().After(deadline) {
			return err
		}
		time.Sleep(20 * time.Millisecond) // back off before retrying elsewhere
	}
}

// currentLeader returns a live raft of group that believes it leads, or nil.
func (c *testCluster) currentLeader(group uint32) *raft.Raft {
	for _, nd := range c.nodes {
		if r := nd.raft(group); r != nil && r.State() == raft.Leader {
			return r
		}
	}
	return nil
}

// converged waits until the group's FSM on every live node has applied
// want commands with the same checksum.
func (c *testCluster) converged(group uint32, want uint64) {
	c.tb.Helper()
	waitFor(c.tb, 20*time.Second, fmt.Sprintf("group %d replicas at %d commands", group, want), func() bool {
		var sum0 uint64
		first := true
		for _, nd := range c.nodes {
			f := nd.fsm(group)
			if f == nil {
				continue
			}
			cnt, sum := f.state()
			if cnt != want {
				return false
			}
			if first {
				sum0, first = sum, false
			} else if sum != sum0 {
				c.tb.Fatalf("group %d: %s diverged (sum %x, want %x)", group, nd.id, sum, sum0)
			}
		}
		return !first
	})
}
