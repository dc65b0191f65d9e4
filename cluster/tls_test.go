package cluster

import (
	"context"
	"crypto/tls"
	"errors"
	"net"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/status"

	"github.com/hodei-io/hodei/client"
	"github.com/hodei-io/hodei/proto/hodeiv1"
	"github.com/hodei-io/hodei/proto/internalpb"
	"github.com/hodei-io/hodei/transport"
	"github.com/hodei-io/hodei/transport/tlsutil"
	"github.com/hodei-io/hodei/worker"
)

// testPKI writes the TLS files of a test cluster's parties into a temp dir:
// each party has its own CA bundle file, so a rotation can change them one
// by one as an operator would.
type testPKI struct {
	t   *testing.T
	dir string
	ca  *tlsutil.CA
}

func newTestPKI(t *testing.T, name string) *testPKI {
	t.Helper()
	ca, _, err := tlsutil.NewCA(name, 0)
	if err != nil {
		t.Fatal(err)
	}
	return &testPKI{t: t, dir: t.TempDir(), ca: ca}
}

func (p *testPKI) files(name string) tlsutil.Files {
	return tlsutil.Files{CA: filepath.Join(p.dir, name+"-ca.pem"), Cert: filepath.Join(p.dir, name+".pem"), Key: filepath.Join(p.dir, name+"-key.pem")}
}

// issue writes (or replaces) the certificate and key of name, signed by ca.
func (p *testPKI) issue(ca *tlsutil.CA, name string, server bool) tlsutil.Files {
	p.t.Helper()
	f := p.files(name)
	cert, key, err := ca.Issue(tlsutil.LeafRequest{Name: name, Server: server, Hosts: []string{"127.0.0.1"}})
	if err != nil {
		p.t.Fatal(err)
	}
	// Key first, then the certificate: the reloader retries until they match.
	for _, w := range []struct {
		path string
		data []byte
	}{{f.Key, key}, {f.Cert, cert}} {
		if err := tlsutil.WriteFileAtomic(w.path, w.data, 0o600); err != nil {
			p.t.Fatal(err)
		}
	}
	return f
}

// bundle writes name's CA bundle.
func (p *testPKI) bundle(name string, cas ...*tlsutil.CA) {
	p.t.Helper()
	var b []byte
	for _, ca := range cas {
		b = append(b, ca.CertPEM...)
	}
	if err := tlsutil.WriteFileAtomic(p.files(name).CA, b, 0o644); err != nil {
		p.t.Fatal(err)
	}
}

// party makes name's files: a certificate of p's CA and a bundle of p's CA.
func (p *testPKI) party(name string, server bool) tlsutil.Files {
	p.bundle(name, p.ca)
	return p.issue(p.ca, name, server)
}

var testGossipKey = []byte("0123456789abcdef0123456789abcdef")

// tlsMod turns TLS on in a node's config with the files of p for its id
// (polled every 20 ms) and encrypted gossip.
func tlsMod(p *testPKI) func(*Config) {
	return func(c *Config) {
		c.TLS = p.files(c.NodeID)
		c.TLSReloadInterval = 20 * time.Millisecond
		c.GossipKeys = [][]byte{testGossipKey}
	}
}

func startTLSCluster(t *testing.T, p *testPKI, shards int) *testCluster {
	t.Helper()
	for _, n := range []string{"n1", "n2", "n3"} {
		p.party(n, true)
	}
	tc := startClusterWith(t, 3, shards, tlsMod(p))
	for _, n := range tc.nodes {
		if !n.TLSEnabled() || !n.GossipEncrypted() {
			t.Fatal("node started without TLS or gossip encryption")
		}
	}
	return tc
}

func tlsClient(t *testing.T, f tlsutil.Files, addrs ...string) *client.Client {
	t.Helper()
	c, err := client.New(client.Config{Addrs: addrs, Retry: 30 * time.Second, TLSFiles: f, TLSReloadInterval: -1})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

func startTLSWorker(t *testing.T, c *client.Client) {
	t.Helper()
	w, err := worker.New(worker.Config{Client: c, Concurrency: 4, LeaseTTL: 2 * time.Second, PollWait: 2 * time.Second,
		Executor: &recordingExec{}, DrainTimeout: 5 * time.Second, Logger: testLogger(t)})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { defer close(done); w.Run(ctx) }()
	t.Cleanup(func() { cancel(); <-done })
}

// waitTLSJobs waits until every job of ids has succeeded.
func waitTLSJobs(t *testing.T, c *client.Client, ids []string) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	for _, id := range ids {
		waitFor(t, 60*time.Second, "job "+id+" to succeed", func() bool {
			j, err := c.Get(ctx, id)
			return err == nil && j.GetState() == hodeiv1.JobState_JOB_STATE_SUCCEEDED
		})
	}
}

// TestTLSClusterRotationUnderLoad: a 3-node cluster with mutual TLS between
// all parties runs jobs; then, while a client keeps submitting, every
// party's CA bundle becomes old+new, every leaf is replaced by one of the
// new CA, and the bundles drop the old CA; a node restarted at the end
// dials and is dialled with new certificates only. No submit may fail
// (the client's retries absorb the restart), every job runs, and a party
// with only old-CA files is refused.
func TestTLSClusterRotationUnderLoad(t *testing.T) {
	oldCA := newTestPKI(t, "old-ca")
	tc := startTLSCluster(t, oldCA, 2)
	p := oldCA // the files live in oldCA's dir
	cf := p.party("alice", false)
	c := tlsClient(t, cf, tc.addrs()...)
	wc := tlsClient(t, cf, tc.addrs()...)
	startTLSWorker(t, wc)

	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	var ids []string
	for i := 0; i < 20; i++ {
		r, err := c.Submit(ctx, &hodeiv1.JobSpec{Tenant: "t" + string(rune('a'+i%4)), Command: []string{"true"}})
		if err != nil {
			t.Fatal(err)
		}
		ids = append(ids, r.GetJob().GetId())
	}
	waitTLSJobs(t, c, ids)

	// Load: two submitters until the rotation is over.
	var (
		mu       sync.Mutex
		loadIDs  []string
		failures []error
		stop     atomic.Bool
		wg       sync.WaitGroup
	)
	for g := 0; g < 2; g++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for !stop.Load() {
				r, err := c.Submit(ctx, &hodeiv1.JobSpec{Tenant: "load", Command: []string{"true"}})
				mu.Lock()
				if err != nil {
					failures = append(failures, err)
				} else {
					loadIDs = append(loadIDs, r.GetJob().GetId())
				}
				mu.Unlock()
			}
		}()
	}
	submitted := func() int { mu.Lock(); defer mu.Unlock(); return len(loadIDs) }
	progress := func(what string) {
		t.Helper()
		from := submitted()
		waitFor(t, 30*time.Second, "submits to go on after "+what, func() bool { return submitted() >= from+20 })
	}
	progress("start")

	newCA, _, err := tlsutil.NewCA("new-ca", 0)
	if err != nil {
		t.Fatal(err)
	}
	parties := []string{"n1", "n2", "n3", "alice"}
	gens := func() []uint64 {
		var g []uint64
		for _, n := range tc.nodes {
			g = append(g, n.tls.Generation())
		}
		return g
	}
	waitNodes := func(what string, before []uint64) {
		t.Helper()
		waitFor(t, 20*time.Second, "every node to reload "+what, func() bool {
			for i, n := range tc.nodes {
				if n.tls.Generation() <= before[i] {
					return false
				}
			}
			return true
		})
	}

	// 1. Every bundle trusts both CAs. Nodes pick it up by polling; the
	// client by ReloadTLS (the worker's SIGHUP path).
	before := gens()
	for _, name := range parties {
		p.bundle(name, oldCA.ca, newCA)
	}
	waitNodes("the old+new CA bundle", before)
	for _, cl := range []*client.Client{c, wc} {
		if err := cl.ReloadTLS(); err != nil {
			t.Fatal(err)
		}
	}
	progress("the bundle change")

	// 2. New leaves, signed by the new CA.
	before = gens()
	for _, name := range parties {
		p.issue(newCA, name, name != "alice")
	}
	waitNodes("the new leaves", before)
	for _, cl := range []*client.Client{c, wc} {
		if err := cl.ReloadTLS(); err != nil {
			t.Fatal(err)
		}
	}
	for i, n := range tc.nodes {
		if n.tls.Current().Leaf.Issuer.CommonName != "new-ca" {
			t.Fatalf("node %d still serves a leaf of %s", i, n.tls.Current().Leaf.Issuer.CommonName)
		}
	}
	progress("the new leaves")

	// 3. The bundles drop the old CA.
	before = gens()
	for _, name := range parties {
		p.bundle(name, newCA)
	}
	waitNodes("the new-only CA bundle", before)
	for _, cl := range []*client.Client{c, wc} {
		if err := cl.ReloadTLS(); err != nil {
			t.Fatal(err)
		}
	}
	progress("dropping the old CA")

	// 4. Restart a node: its connections to and from the others are new
	// handshakes with new-CA certificates only, both ways.
	r := followerOf(tc, tc.leader())
	tc.nodes[r].Close()
	tc.nodes[r] = nil
	var l net.Listener
	waitFor(t, 10*time.Second, "the old port to be free", func() bool {
		l, err = net.Listen("tcp", tc.peers[r].Addr)
		return err == nil
	})
	cfg := testConfig(t, tc.peers[r].ID, tc.dirs[r], l, tc.peers, tc.shards)
	tlsMod(p)(&cfg)
	if tc.nodes[r], err = New(cfg); err != nil {
		t.Fatal(err)
	}
	waitFor(t, 30*time.Second, "the restarted node to catch up", func() bool { return tc.nodes[r].Ready() == nil })
	progress("the restart")
	// Every node counted its three reloads and exports its new leaf's expiry.
	for i, n := range tc.nodes {
		got := map[string]float64{}
		mfs, err := n.Registry().Gather()
		if err != nil {
			t.Fatal(err)
		}
		for _, mf := range mfs {
			if m := mf.GetMetric(); len(m) == 1 && strings.HasPrefix(mf.GetName(), "hodei_tls_") {
				got[mf.GetName()] = m[0].GetGauge().GetValue() + m[0].GetCounter().GetValue()
			}
		}
		if want := float64(n.tls.Current().Leaf.NotAfter.Unix()); got["hodei_tls_cert_expiry_timestamp_seconds"] != want {
			t.Errorf("node %d: cert expiry metric %v, want %v", i, got["hodei_tls_cert_expiry_timestamp_seconds"], want)
		}
		if got["hodei_tls_ca_expiry_timestamp_seconds"] == 0 {
			t.Errorf("node %d: no CA expiry metric", i)
		}
		if i != r && got["hodei_tls_reloads_total"] < 3 {
			t.Errorf("node %d: %v reloads counted, want >= 3", i, got["hodei_tls_reloads_total"])
		}
	}

	stop.Store(true)
	wg.Wait()
	if len(failures) > 0 {
		t.Fatalf("%d submits failed during the rotation, first: %v", len(failures), failures[0])
	}
	t.Logf("%d submits during the rotation", len(loadIDs))
	waitTLSJobs(t, c, loadIDs)

	// A client that trusts only the old CA, with an old-CA certificate, is
	// refused now (and refuses the nodes).
	stale := newTestPKI(t, "unused")
	stale.ca = oldCA.ca
	old := stale.party("bob", false)
	oc, err := client.New(client.Config{Addrs: tc.addrs()[:1], Retry: -1, TLSFiles: old})
	if err != nil {
		t.Fatal(err)
	}
	defer oc.Close()
	sctx, scancel := context.WithTimeout(ctx, 5*time.Second)
	defer scancel()
	if _, err := oc.Status(sctx, ""); status.Code(err) != codes.Unavailable {
		t.Fatalf("an old-CA client after the rotation: %v, want Unavailable", err)
	}
}

// TestTLSRefusals: with TLS on, a plaintext client, a client without a
// certificate and a client of another CA are refused at the handshake; a
// client certificate cannot call node-only RPCs; a client certificate
// serving as a node is refused by clients and nodes; and a node refuses to
// start on a certificate without the server role or of another node.
func TestTLSRefusals(t *testing.T) {
	p := newTestPKI(t, "ca")
	tc := startTLSCluster(t, p, 1)
	addr := tc.peers[0].Addr
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()

	good := tlsClient(t, p.party("alice", false), addr)
	if _, err := good.Status(ctx, ""); err != nil {
		t.Fatalf("a client with a good certificate: %v", err)
	}

	unavailable := func(what string, cfg client.Config) {
		t.Helper()
		cfg.Addrs, cfg.Retry = []string{addr}, -1
		c, err := client.New(cfg)
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		cctx, ccancel := context.WithTimeout(ctx, 5*time.Second)
		defer ccancel()
		_, err = c.Status(cctx, "")
		if status.Code(err) != codes.Unavailable {
			t.Fatalf("%s: %v, want Unavailable", what, err)
		}
		t.Logf("%s: %v", what, err)
	}
	unavailable("a plaintext client", client.Config{})
	unavailable("a TLS client without a certificate", client.Config{TLS: &tls.Config{RootCAs: tc.nodes[0].tls.Current().Pool}})
	other := newTestPKI(t, "other")
	foreign := other.party("mallory", false)
	p.bundle("mallory", p.ca) // trusts the cluster, holds another CA's certificate
	otherFiles := other.files("mallory")
	otherFiles.CA = p.files("mallory").CA
	// Its own check (the certificate chains to its bundle) stops the client
	// before it dials: build the tls.Config by hand to get it on the wire.
	fb, err := tlsutil.Load(tlsutil.Files{CA: p.files("mallory").CA, Cert: foreign.Cert, Key: foreign.Key})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := client.New(client.Config{Addrs: []string{addr}, TLSFiles: otherFiles}); err == nil || !strings.Contains(err.Error(), "unknown authority") {
		t.Fatalf("a client whose certificate is not of its own CA bundle: %v", err)
	}
	unavailable("a client of another CA", client.Config{TLS: &tls.Config{RootCAs: fb.Pool, Certificates: []tls.Certificate{fb.Cert}}})

	// Node-only RPCs with a client certificate: PermissionDenied.
	ab, err := tlsutil.Load(p.files("alice"))
	if err != nil {
		t.Fatal(err)
	}
	cc, err := grpc.NewClient(addr, grpc.WithTransportCredentials(credentials.NewTLS(&tls.Config{
		RootCAs: ab.Pool, ServerName: tlsutil.ServerRoleName, Certificates: []tls.Certificate{ab.Cert}})))
	if err != nil {
		t.Fatal(err)
	}
	defer cc.Close()
	_, err = internalpb.NewRaftTransportClient(cc).RequestVote(ctx, &internalpb.RaftRequestVoteRequest{})
	if status.Code(err) != codes.PermissionDenied {
		t.Fatalf("RequestVote with a client certificate: %v, want PermissionDenied", err)
	}
	_, err = hodeiv1.NewWorkerServiceClient(cc).LeaseFor(ctx, &hodeiv1.LeaseForRequest{})
	if status.Code(err) != codes.PermissionDenied {
		t.Fatalf("LeaseFor with a client certificate: %v, want PermissionDenied", err)
	}
	if _, err := hodeiv1.NewAdminServiceClient(cc).Status(ctx, &hodeiv1.StatusRequest{}); err != nil {
		t.Fatalf("Status with a client certificate: %v", err)
	}

	// A listener serving a client certificate (a client posing as a node):
	// refused by a client and by a node's pool.
	fake, err := tlsutil.NewReloader(p.files("alice"), tlsutil.Options{Interval: -1})
	if err != nil {
		t.Fatal(err)
	}
	defer fake.Close()
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	srv := grpc.NewServer(transport.ServerTLS(fake)...)
	hodeiv1.RegisterAdminServiceServer(srv, hodeiv1.UnimplementedAdminServiceServer{})
	go srv.Serve(lis)
	defer srv.Stop()
	c2 := tlsClient(t, p.files("alice"), lis.Addr().String())
	c2ctx, c2cancel := context.WithTimeout(ctx, 5*time.Second)
	defer c2cancel()
	if _, err := c2.Status(c2ctx, ""); status.Code(err) != codes.Unavailable || !strings.Contains(err.Error(), "certificate") {
		t.Fatalf("a client dialing a client certificate posing as a node: %v, want Unavailable (certificate)", err)
	}
	if _, err := tc.nodes[0].probe(ctx, lis.Addr().String()); status.Code(err) != codes.Unavailable {
		t.Fatalf("a node dialing a client certificate posing as a node: %v, want Unavailable", err)
	}

	// A node dialing an address known to be n2 verifies the name: n2's
	// certificate passes, the same address noted as n3 is refused.
	for _, c := range []struct {
		name string
		ok   bool
	}{{"n2", true}, {"n3", false}} {
		pool := transport.NewSecurePool(transport.PeerTLS(tc.nodes[0].tls))
		pool.NotePeer(tc.peers[1].Addr, c.name)
		conn, err := pool.Get(tc.peers[1].Addr)
		if err != nil {
			t.Fatal(err)
		}
		cctx, ccancel := context.WithTimeout(ctx, 5*time.Second)
		_, err = hodeiv1.NewAdminServiceClient(conn).Status(cctx, &hodeiv1.StatusRequest{})
		ccancel()
		pool.Close()
		if c.ok && err != nil {
			t.Fatalf("n1 dialing n2 as n2: %v", err)
		}
		if !c.ok && (status.Code(err) != codes.Unavailable || !strings.Contains(err.Error(), "names another node")) {
			t.Fatalf("n1 dialing n2 as n3: %v, want Unavailable (names another node)", err)
		}
	}

	// A node does not start on a client certificate or on another node's.
	startWith := func(id string, f tlsutil.Files) error {
		l, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		defer l.Close()
		cfg := testConfig(t, id, t.TempDir(), l, []Peer{{ID: id, Addr: l.Addr().String()}}, 1)
		cfg.TLS = f
		n, err := New(cfg)
		if err == nil {
			n.Close()
		}
		return err
	}
	err = startWith("n9", p.party("n9", false))
	if !errors.Is(err, tlsutil.ErrNotServer) || !strings.Contains(err.Error(), p.files("n9").Cert) {
		t.Fatalf("a node on a client certificate: %v", err)
	}
	if err := startWith("n8", p.files("n1")); !errors.Is(err, tlsutil.ErrWrongNode) {
		t.Fatalf("node n8 on n1's certificate: %v", err)
	}
	missing := p.files("n7")
	if err := startWith("n7", missing); err == nil || !strings.Contains(err.Error(), missing.CA) {
		t.Fatalf("a node without its files: %v", err)
	}
	if _, err := os.Stat(filepath.Join(p.dir, "n7")); err == nil {
		t.Fatal("a refused node created files")
	}
}

// TestTLSJoin: a node joins a TLS cluster (its shard count, Join call and
// then Raft all over mutual TLS; gossip with the cluster's key), runs a
// share of the work, and a node with another gossip key stays out of gossip.
func TestTLSJoin(t *testing.T) {
	p := newTestPKI(t, "ca")
	tc := startTLSCluster(t, p, 2)
	p.party("n4", true)
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	cfg := testConfig(t, "n4", filepath.Join(t.TempDir(), "n4"), l, nil, 0)
	cfg.Shards = 8 // ignored: a joining node learns the cluster's count
	cfg.Join = tc.addrs()
	tlsMod(p)(&cfg)
	n4, err := New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	tc.nodes = append(tc.nodes, n4)
	tc.peers = append(tc.peers, Peer{ID: "n4", Addr: n4.Addr()})
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	if err := n4.JoinCluster(ctx); err != nil {
		t.Fatal(err)
	}
	if len(n4.shards) != 2 {
		t.Fatalf("n4 hosts %d shards, want the cluster's 2", len(n4.shards))
	}
	waitFor(t, 30*time.Second, "n4 to be ready and seen alive by gossip", func() bool {
		if n4.Ready() != nil {
			return false
		}
		m, ok := tc.nodes[0].gossipImpl.Member("n4")
		return ok && m.State == 0 // gossip.Alive
	})
	c := tlsClient(t, p.party("alice", false), n4.Addr())
	startTLSWorker(t, tlsClient(t, p.files("alice"), n4.Addr()))
	var ids []string
	for i := 0; i < 10; i++ {
		r, err := c.Submit(ctx, &hodeiv1.JobSpec{Tenant: "t" + string(rune('a'+i)), Command: []string{"true"}})
		if err != nil {
			t.Fatal(err)
		}
		ids = append(ids, r.GetJob().GetId())
	}
	waitTLSJobs(t, c, ids)
	// The pool knows the node behind each shard leader's address (noted by
	// LeaderOf, which forwarding uses), so a dial there verifies that name.
	for _, sh := range n4.shards {
		local, addr := n4.LeaderOf(sh.id)
		if local {
			continue
		}
		_, leader := sh.raft.LeaderWithID()
		if got := n4.pool.PeerName(addr); got != string(leader) {
			t.Errorf("shard %d: n4's pool names %s %q, want the leader %q", sh.id, addr, got, leader)
		}
	}
}

// TestTLSConfigValidate: the TLS fields are checked without reading files.
func TestTLSConfigValidate(t *testing.T) {
	base := DefaultConfig()
	base.NodeID, base.DataDir = "n1", t.TempDir()
	cases := []struct {
		name string
		mod  func(*Config)
		want string
	}{
		{"partial files", func(c *Config) { c.TLS.CA = "/nonexistent/ca.pem" }, "go together"},
		{"node id not a DNS label", func(c *Config) {
			c.NodeID = "node_1"
			c.TLS = tlsutil.Files{CA: "a", Cert: "b", Key: "c"}
		}, "DNS label"},
		{"short gossip key", func(c *Config) { c.GossipKeys = [][]byte{[]byte("short")} }, "16, 24 or 32"},
		{"keys and key file", func(c *Config) {
			c.GossipKeys = [][]byte{testGossipKey}
			c.GossipKeyFile = "/nonexistent/gossip.key"
		}, "exclusive"},
	}
	for _, c := range cases {
		cfg := base
		c.mod(&cfg)
		if err := cfg.Validate(); err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("%s: %v, want %q", c.name, err, c.want)
		}
	}
	ok := base
	ok.TLS = tlsutil.Files{CA: "/nonexistent/ca.pem", Cert: "/nonexistent/n1.pem", Key: "/nonexistent/n1-key.pem"}
	ok.GossipKeyFile = "/nonexistent/gossip.key"
	if err := ok.Validate(); err != nil {
		t.Fatalf("Validate read files or refused good names: %v", err)
	}
	if !ok.TLSEnabled() || !ok.GossipEncrypted() || base.TLSEnabled() || base.GossipEncrypted() {
		t.Fatal("TLSEnabled/GossipEncrypted disagree with the config")
	}
}
