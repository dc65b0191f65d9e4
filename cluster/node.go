// Package cluster runs one Hodei server node: the Raft groups it hosts (one
// per shard), their storage (raft-boltdb/v2 with a log cache, file
// snapshots), proposal batching, linearizable reads, membership changes and
// the gRPC and HTTP servers. Routing and forwarding between nodes live in
// package transport, against the Backend interface this package implements.
package cluster

import (
	"context"
	"errors"
	"fmt"
	"hash/fnv"
	"net"
	"net/http"
	"path/filepath"
	"sync"
	"sync/atomic"
	"time"

	"github.com/hashicorp/raft"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	"google.golang.org/grpc"
	"google.golang.org/grpc/health"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/reflection"

	"github.com/hodei-io/hodei/cluster/gossip"
	"github.com/hodei-io/hodei/cluster/logdb"
	"github.com/hodei-io/hodei/proto/hodeiv1"
	"github.com/hodei-io/hodei/scheduler"
	"github.com/hodei-io/hodei/transport"
	"github.com/hodei-io/hodei/transport/tlsutil"
)

// Node is one server of a Hodei cluster.
type Node struct {
	cfg          Config
	raftLog      *raftLog    // every group's raft logger (folds repeats across groups)
	addr         string      // advertised gRPC (and Raft) address
	clusterFile  clusterFile // DATA/cluster.json as read at start (identity.go)
	lis          net.Listener
	grpc         *grpc.Server
	health       *health.Server
	pool         *transport.Pool
	raftNet      *transport.RaftNetwork
	shards       []*shard
	meta         *metaGroup
	gossip       gossipView // nil without gossip
	gossipImpl   *gossip.Gossip
	gossipCancel context.CancelFunc
	logdb        *logdb.DB
	registry     *prometheus.Registry
	metrics      *metrics
	dispatch     atomic.Pointer[scheduler.Dispatcher] // set once the shards are open
	bus          *eventBus                            // job events for WatchJobs (eventbus.go)
	profiles     profileBook                          // worker profiles seen, for GetJob's unmatched (issue 11 quota)
	waves        *waveGate                            // nil: waves off (Config.ProposeWaves)
	storeHealth  *storeHealth                         // log-store write health (storehealth.go)
	logs         *nodeLogs                            // live log lines of jobs (logs.go)
	auth         *transport.Auth                      // interceptors (auth.go, issue 12)
	tokens       *tokenCache                          // verified bearer tokens
	auditEvents  *prometheus.CounterVec               // hodei_audit_events_total
	httpSrv      *http.Server
	httpLis      net.Listener
	tls          *tlsutil.Reloader // nil: TLS off (tls.go)

	wg        sync.WaitGroup
	closeOnce sync.Once
	closeErr  error
}

// ShardOf maps a tenant to its shard: FNV-1a (32 bit) of the tenant name,
// modulo the shard count. The empty tenant is "default".
func ShardOf(tenant string, shards int) uint32 {
	if tenant == "" {
		tenant = "default"
	}
	h := fnv.New32a()
	h.Write([]byte(tenant))
	return h.Sum32() % uint32(shards)
}

// New opens storage, starts the Raft groups and the gRPC and HTTP servers.
func New(cfg Config) (*Node, error) {
	if err := cfg.Validate(); err != nil {
		return nil, fmt.Errorf("invalid config: %w", err)
	}
	cfg = cfg.resolved()
	n := &Node{cfg: cfg, waves: newWaveGate(cfg.ProposeWaves, cfg.WaveStall), raftLog: newRaftLog(cfg.Logger)}
	// TLS files and gossip keys first: a node whose certificate or keys
	// are unusable refuses to start before it binds or opens anything.
	var err error
	if n.tls, err = openTLS(cfg); err != nil {
		return nil, err
	}
	gkeys, err := gossipKeys(cfg)
	if err != nil {
		n.closeTLS()
		return nil, err
	}
	lis := cfg.Listener
	if lis == nil {
		if lis, err = net.Listen("tcp", cfg.GRPCAddr); err != nil {
			n.closeTLS()
			return nil, fmt.Errorf("listen on %s: %w", cfg.GRPCAddr, err)
		}
	}
	n.lis = lis
	n.addr = cfg.Advertise
	if n.addr == "" {
		n.addr = lis.Addr().String()
	}
	n.registry = prometheus.NewRegistry()
	reg := cfg.Registerer
	if reg == nil {
		reg = n.registry
	}
	n.storeHealth = newStoreHealth(n)
	n.metrics = newMetrics(reg, n)
	n.registerTLSMetrics(reg) // tls.go

	n.auth = n.newAuth(reg) // issue 12: before the pool and the server, which use it
	n.pool = n.newPool(n.auth.DialOptions()...)
	n.raftNet = transport.NewRaftNetwork(transport.RaftConfig{LocalAddr: n.addr, Logger: cfg.Logger}, n.pool)
	n.grpc = grpc.NewServer(append(append(append(cfg.serverOptions(),
		grpc.ChainUnaryInterceptor(n.metrics.grpc.unary), grpc.ChainStreamInterceptor(n.metrics.grpc.stream)),
		n.tlsServerOptions()...), // metrics first: they count refusals too
		n.auth.ServerOptions()...)...)
	n.raftNet.Register(n.grpc)
	api := transport.NewAPI(n, &workerBackend{n: n}, n.pool, cfg.Logger)
	logs, err := newNodeLogs(n, cfg.LiveLogs)
	if err != nil {
		lis.Close()
		n.pool.Close()
		n.closeTLS()
		return nil, fmt.Errorf("live logs: %w", err)
	}
	n.logs = logs
	api.SetLogs(logs)
	api.SetAuth(&authBackend{n: n})
	api.Register(n.grpc)
	n.health = health.NewServer()
	healthpb.RegisterHealthServer(n.grpc, n.health)
	reflection.Register(n.grpc)

	fail := func(err error) (*Node, error) {
		n.stopDispatcher()
		n.storeHealth.close()
		n.stopGossip()
		for _, s := range n.shards {
			s.close()
		}
		if n.meta != nil {
			n.meta.close()
		}
		if n.logdb != nil {
			n.logdb.Close()
		}
		n.raftNet.Close()
		n.pool.Close()
		lis.Close()
		n.closeTLS()
		return nil, err
	}
	cf, fresh, err := loadClusterFile(cfg, n.probe)
	if err == nil {
		err = checkIdentity(cfg, cf, fresh, n.addr, n.probe)
	}
	if err != nil {
		lis.Close()
		n.pool.Close()
		n.closeTLS()
		return nil, err
	}
	n.clusterFile = cf
	count := cf.Shards
	if !cfg.PerGroupLogStore {
		if n.logdb, err = logdb.Open(logdb.Options{Path: filepath.Join(cfg.DataDir, "raft.db"), Logger: cfg.Logger}); err != nil {
			lis.Close()
			n.pool.Close()
			n.closeTLS()
			return nil, fmt.Errorf("open log store: %w", err)
		}
	}
	// Gossip first: the meta leader's loops read n.gossip.
	if err := n.startGossip(gkeys); err != nil {
		return fail(err)
	}
	if n.meta, err = openMeta(n, filepath.Join(cfg.DataDir, "meta")); err != nil {
		return fail(err)
	}
	n.bus = newEventBus(cfg.Watch, count)
	for i := 0; i < count; i++ {
		s, err := openShard(n, uint32(i), filepath.Join(cfg.DataDir, "shards", fmt.Sprint(i)))
		if err != nil {
			return fail(err)
		}
		n.shards = append(n.shards, s)
	}
	d, err := newDispatcher(n)
	if err != nil {
		return fail(err)
	}
	n.dispatch.Store(d)
	n.startGossipJoins()
	n.storeHealth.start()
	n.logs.start()
	n.wg.Add(1)
	go func() {
		defer n.wg.Done()
		if err := n.grpc.Serve(lis); err != nil && !errors.Is(err, grpc.ErrServerStopped) {
			cfg.Logger.Error("grpc server stopped", "err", err)
		}
	}()
	if len(cfg.Bootstrap) > 0 {
		if err := bootstrapGroup(n.meta.raft, cfg.Bootstrap); err != nil {
			return fail(fmt.Errorf("bootstrap meta group: %w", err))
		}
		for _, s := range n.shards {
			if err := s.bootstrap(cfg.Bootstrap); err != nil {
				return fail(fmt.Errorf("bootstrap shard %d: %w", s.id, err))
			}
		}
	}
	if cfg.HTTPAddr != "" {
		if err := n.startHTTP(); err != nil {
			n.Close()
			return nil, err
		}
	}
	n.health.SetServingStatus("", healthpb.HealthCheckResponse_SERVING)
	n.logSecurity()
	cfg.Logger.Info("node started", "id", cfg.NodeID, "grpc", n.addr, "data", cfg.DataDir, "tls", n.tls != nil)
	return n, nil
}

// Addr is the node's advertised gRPC address.
func (n *Node) Addr() string { return n.addr }

// now is this node's clock: wall time plus the test-only ClockOffset.
func (n *Node) now() time.Time { return time.Now().Add(n.cfg.ClockOffset) }

// HTTPAddr is the bound metrics/health address ("" when disabled).
func (n *Node) HTTPAddr() string {
	if n.httpLis == nil {
		return ""
	}
	return n.httpLis.Addr().String()
}

// Registry is the node's own Prometheus registry.
func (n *Node) Registry() *prometheus.Registry { return n.registry }

// Ready reports whether every shard has a known leader and this node has
// applied what it knows to be committed.
func (n *Node) Ready() error {
	if addr, _ := n.meta.raft.LeaderWithID(); addr == "" {
		return fmt.Errorf("meta group has no leader")
	}
	for _, s := range n.shards {
		if addr, _ := s.raft.LeaderWithID(); addr == "" {
			return fmt.Errorf("shard %d has no leader", s.id)
		}
	}
	return nil
}

func (n *Node) startHTTP() error {
	lis, err := net.Listen("tcp", n.cfg.HTTPAddr)
	if err != nil {
		return fmt.Errorf("listen on %s: %w", n.cfg.HTTPAddr, err)
	}
	n.httpLis = lis
	mux := http.NewServeMux()
	mux.Handle("/metrics", promhttp.HandlerFor(n.registry, promhttp.HandlerOpts{}))
	mux.HandleFunc("/healthz", func(w http.ResponseWriter, _ *http.Request) { fmt.Fprintln(w, "ok") })
	mux.HandleFunc("/readyz", func(w http.ResponseWriter, _ *http.Request) {
		if err := n.Ready(); err != nil {
			http.Error(w, err.Error(), http.StatusServiceUnavailable)
			return
		}
		fmt.Fprintln(w, "ready")
	})
	n.httpSrv = &http.Server{Handler: mux, ReadHeaderTimeout: 5 * time.Second}
	n.wg.Add(1)
	go func() {
		defer n.wg.Done()
		if err := n.httpSrv.Serve(lis); err != nil && !errors.Is(err, http.ErrServerClosed) {
			n.cfg.Logger.Error("http server stopped", "err", err)
		}
	}()
	return nil
}

// JoinCluster asks the nodes in cfg.Join, one after another, to add this node.
func (n *Node) JoinCluster(ctx context.Context) error {
	var last error
	for {
		for _, addr := range n.cfg.Join {
			cc, err := n.pool.Get(addr)
			if err != nil {
				last = err
				continue
			}
			cctx, cancel := context.WithTimeout(ctx, 2*time.Minute)
			_, err = hodeiv1.NewAdminServiceClient(cc).Join(cctx, &hodeiv1.JoinRequest{NodeId: n.cfg.NodeID, Address: n.addr, Voter: true})
			cancel()
			if err == nil {
				return nil
			}
			last = err
			n.cfg.Logger.Warn("join attempt failed", "via", addr, "err", err)
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("join: %w (last error: %v)", ctx.Err(), last)
		case <-time.After(time.Second):
		}
	}
}

// Close shuts the node down: gRPC first (no new requests), then each
// shard's batcher and Raft, then the transport and storage.
// ShuttingDown tells the node that it and its peers are about to stop
// (Close calls it too): raft's complaints about unreachable peers are
// logged at debug from then on.
func (n *Node) ShuttingDown() { n.raftLog.quiet() }

func (n *Node) Close() error {
	n.closeOnce.Do(func() {
		n.ShuttingDown()
		n.stopGossip()
		n.health.Shutdown()
		if n.httpSrv != nil {
			ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
			n.httpSrv.Shutdown(ctx)
			cancel()
		}
		// Workers are told to drain and their streams end: they reconnect
		// to other nodes and complete there with their tokens.
		n.stopDispatcher()
		stopped := make(chan struct{})
		go func() { n.grpc.GracefulStop(); close(stopped) }()
		select {
		case <-stopped:
		case <-time.After(2 * time.Second):
			n.grpc.Stop()
			<-stopped
		}
		n.storeHealth.close()
		n.logs.close()
		var errs []error
		for _, s := range n.shards {
			if err := s.close(); err != nil && !errors.Is(err, raft.ErrRaftShutdown) {
				errs = append(errs, err)
			}
		}
		if err := n.meta.close(); err != nil && !errors.Is(err, raft.ErrRaftShutdown) {
			errs = append(errs, err)
		}
		if n.logdb != nil {
			errs = append(errs, n.logdb.Close())
		}
		errs = append(errs, n.raftNet.Close(), n.pool.Close())
		n.closeTLS()
		n.wg.Wait()
		n.closeErr = errors.Join(errs...)
	})
	return n.closeErr
}

// Kill stops the node abruptly for tests: the listener and transport close
// without a graceful goodbye. Storage is closed so the data dir can be reopened.
func (n *Node) Kill() error {
	n.closeOnce.Do(func() {
		if n.gossipCancel != nil {
			n.gossipCancel()
		}
		if n.gossipImpl != nil {
			n.gossipImpl.Shutdown()
		}
		n.grpc.Stop()
		n.stopDispatcher()
		n.storeHealth.close()
		n.logs.close()
		n.raftNet.Close()
		for _, s := range n.shards {
			s.close()
		}
		n.meta.close()
		if n.logdb != nil {
			n.logdb.Close()
		}
		n.pool.Close()
		n.closeTLS()
		if n.httpSrv != nil {
			n.httpSrv.Close()
		}
		n.wg.Wait()
	})
	return nil
}

// stopDispatcher drains the workers connected here and stops the
// dispatcher's lanes.
func (n *Node) stopDispatcher() {
	if d := n.dispatch.Load(); d != nil {
		d.Drain("node shutting down")
		d.Stop()
	}
}
