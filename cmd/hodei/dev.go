package main

import (
	"context"
	"fmt"
	"log/slog"
	"net"
	"os"
	"os/signal"
	"path/filepath"
	"strings"
	"syscall"
	"time"

	"github.com/spf13/cobra"

	"github.com/hodei-io/hodei/client"
	"github.com/hodei-io/hodei/cluster"
	"github.com/hodei-io/hodei/transport/tlsutil"
	"github.com/hodei-io/hodei/worker"
)

func init() { register(newDevCmd) }

// devCluster is a whole cluster inside one process, for `hodei dev` and `hodei bench`.
type devCluster struct {
	nodes  []*cluster.Node
	addrs  []string
	dir    string
	tmp    bool
	cancel context.CancelFunc
	done   chan error
	// clientTLS: with --tls, the client files for talking to the cluster.
	clientTLS tlsutil.Files
	// adminToken is the bootstrap admin token when auth is on (issue 12).
	adminToken string
}

type devOptions struct {
	nodes    int
	basePort int
	httpBase int
	dataDir  string
	workers  int
	leaseTTL time.Duration
	logLevel string
	shards   int
	perGroup bool
	nudge    bool // cluster.Config.CommitNudge
	waves    *int // Config.ProposeWaves; nil keeps the default
	tls      bool // mutual TLS everywhere, certificates in DATA/tls (dev_tls.go)
	auth     bool // issue 12: tokens on, a fresh node secret shared by the nodes
}

func startDev(ctx context.Context, o devOptions, log *slog.Logger) (*devCluster, error) {
	d := &devCluster{dir: o.dataDir}
	if d.dir == "" {
		dir, err := os.MkdirTemp("", "hodei-dev-")
		if err != nil {
			return nil, err
		}
		d.dir, d.tmp = dir, true
	}
	var peers []cluster.Peer
	var lis []net.Listener
	for i := 0; i < o.nodes; i++ {
		addr := fmt.Sprintf("127.0.0.1:%d", o.basePort+i)
		if o.basePort == 0 {
			addr = "127.0.0.1:0"
		}
		l, err := net.Listen("tcp", addr)
		if err != nil {
			for _, x := range lis {
				x.Close()
			}
			return nil, fmt.Errorf("listen on %s: %w", addr, err)
		}
		lis = append(lis, l)
		peers = append(peers, cluster.Peer{ID: fmt.Sprintf("n%d", i+1), Addr: l.Addr().String()})
		d.addrs = append(d.addrs, l.Addr().String())
	}
	var devTLS *devPKI
	if o.tls {
		var err error
		if devTLS, err = makeDevPKI(filepath.Join(d.dir, "tls"), peers); err != nil {
			for _, x := range lis {
				x.Close()
			}
			d.Close()
			return nil, err
		}
		d.clientTLS = devTLS.client
	}
	nodeSecret := ""
	if o.auth {
		nodeSecret = cluster.NewNodeSecret()
	}
	for i := 0; i < o.nodes; i++ {
		cfg := cluster.DefaultConfig()
		cfg.SecurityWarnings = false // one line for the whole lab cluster below, not a WARN per node
		cfg.Auth = cluster.AuthConfig{Enabled: o.auth, NodeSecret: nodeSecret}
		cfg.NodeID = peers[i].ID
		cfg.DataDir = filepath.Join(d.dir, peers[i].ID)
		cfg.Listener = lis[i]
		cfg.Bootstrap = peers
		if o.shards > 0 {
			cfg.Shards = o.shards
		}
		cfg.PerGroupLogStore = o.perGroup
		cfg.CommitNudge = o.nudge
		if o.waves != nil {
			cfg.ProposeWaves = *o.waves
		}
		if o.leaseTTL > 0 {
			cfg.LeaseTTL = o.leaseTTL
		}
		if o.httpBase > 0 {
			cfg.HTTPAddr = fmt.Sprintf("127.0.0.1:%d", o.httpBase+i)
		}
		cfg.Logger = log.With("node", cfg.NodeID)
		if devTLS != nil {
			devTLS.apply(&cfg)
		}
		n, err := cluster.New(cfg)
		if err != nil {
			for _, x := range lis[i:] {
				x.Close()
			}
			d.Close()
			return nil, err
		}
		d.nodes = append(d.nodes, n)
	}
	// Wait until every shard has a leader.
	deadline := time.Now().Add(30 * time.Second)
	for {
		ready := true
		for _, n := range d.nodes {
			if n.Ready() != nil {
				ready = false
			}
		}
		if ready {
			break
		}
		if time.Now().After(deadline) {
			d.Close()
			return nil, fmt.Errorf("cluster did not elect leaders within 30s")
		}
		select {
		case <-ctx.Done():
			d.Close()
			return nil, ctx.Err()
		case <-time.After(20 * time.Millisecond):
		}
	}
	workerToken := ""
	if o.auth {
		var dirs []string
		for _, p := range peers {
			dirs = append(dirs, filepath.Join(d.dir, p.ID))
		}
		tctx, cancel := context.WithTimeout(ctx, 30*time.Second)
		tok, err := readBootstrapToken(tctx, dirs)
		if err == nil && o.workers > 0 {
			workerToken, err = devWorkerToken(tctx, d.addrs, tok, d.clientTLS)
		}
		cancel()
		if err != nil {
			d.Close()
			return nil, err
		}
		d.adminToken = tok
	}
	if o.workers > 0 {
		cl, err := client.New(client.Config{Addrs: d.addrs, TLSFiles: d.clientTLS, Token: workerToken})
		if err != nil {
			d.Close()
			return nil, err
		}
		// The worker asks for its lease TTL (0: the default): ask for the
		// cluster's, so that --lease-ttl applies to the embedded workers.
		w, err := worker.New(worker.Config{Client: cl, ID: "dev-worker", Concurrency: o.workers, LeaseTTL: o.leaseTTL, Logger: log.With("component", "worker")})
		if err != nil {
			cl.Close()
			d.Close()
			return nil, err
		}
		wctx, cancel := context.WithCancel(context.Background())
		d.cancel = cancel
		d.done = make(chan error, 1)
		go func() {
			err := w.Run(wctx)
			cl.Close()
			d.done <- err
		}()
	}
	return d, nil
}

// Close stops the workers, then the nodes, and removes a temporary data dir.
func (d *devCluster) Close() error {
	if d.cancel != nil {
		d.cancel()
		<-d.done
		d.cancel = nil
	}
	var first error
	for _, n := range d.nodes {
		n.ShuttingDown() // the others going away is expected: no warnings about it
	}
	for _, n := range d.nodes {
		if err := n.Close(); err != nil && first == nil {
			first = err
		}
	}
	d.nodes = nil
	if d.tmp {
		os.RemoveAll(d.dir)
	}
	return first
}

func newDevCmd() *cobra.Command {
	o := devOptions{}
	cmd := &cobra.Command{
		Use:   "dev",
		Short: "Run a local cluster (3 nodes by default) and a pool of workers in one process",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if o.nodes < 1 || o.nodes > 7 {
				return fmt.Errorf("--nodes must be in 1..7, got %d", o.nodes)
			}
			log, err := newLogger(o.logLevel)
			if err != nil {
				return err
			}
			ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
			defer stop()
			d, err := startDev(ctx, o, log)
			if err != nil {
				return err
			}
			out := cmd.OutOrStdout()
			for i, a := range d.addrs {
				http := ""
				if o.httpBase > 0 {
					http = fmt.Sprintf("  metrics http://127.0.0.1:%d/metrics", o.httpBase+i)
				}
				fmt.Fprintf(out, "node n%d  grpc %s%s\n", i+1, a, http)
			}
			fmt.Fprintf(out, "data in %s, %d embedded workers\n", d.dir, o.workers)
			if o.tls {
				f := d.clientTLS
				fmt.Fprintf(out, "mutual TLS on; for the CLI:\n  export HODEI_TLS_CA=%s HODEI_TLS_CERT=%s HODEI_TLS_KEY=%s\n", f.CA, f.Cert, f.Key)
			}
			if !o.tls || !o.auth {
				fmt.Fprintf(out, "a lab cluster: %s (hodei dev --tls --auth turns them on)\n", devOpenParts(o.tls, o.auth))
			}
			if o.auth {
				fmt.Fprintf(out, "auth on; admin token (also in %s under the first meta leader's data dir): %s\n", cluster.BootstrapTokenFile, d.adminToken)
				fmt.Fprintf(out, "  export HODEI_TOKEN=%s\n", d.adminToken)
			}
			fmt.Fprintf(out, "hodei dev ready: %d nodes at %s (try: hodei job submit -- echo hello)\n", len(d.addrs), strings.Join(d.addrs, ","))
			<-ctx.Done()
			fmt.Fprintln(out, "shutting down")
			return d.Close()
		},
	}
	f := cmd.Flags()
	f.IntVar(&o.nodes, "nodes", 3, "number of nodes")
	f.IntVar(&o.shards, "shards", 8, "number of shards")
	f.IntVar(&o.basePort, "port", 7401, "gRPC port of the first node (next nodes use the following ports)")
	f.IntVar(&o.httpBase, "http-port", 8401, "metrics port of the first node (0 disables)")
	f.StringVar(&o.dataDir, "data", "", "data directory (default: a temporary directory removed on exit)")
	f.IntVar(&o.workers, "workers", 8, "concurrency of the embedded worker pool (0: none)")
	f.DurationVar(&o.leaseTTL, "lease-ttl", 0, "lease TTL (default 30s)")
	f.StringVar(&o.logLevel, "log-level", "warn", "debug, info, warn or error")
	f.BoolVar(&o.tls, "tls", false, "mutual TLS between every party and encrypted gossip, with a CA and certificates made in DATA/tls (kept with --data)")
	f.BoolVar(&o.auth, "auth", false, "require bearer tokens; prints the bootstrap admin token")
	return cmd
}

// devOpenParts says what of TLS and auth a dev cluster runs without.
func devOpenParts(tls, auth bool) string {
	switch {
	case !tls && !auth:
		return "TLS and auth are OFF"
	case !tls:
		return "TLS is OFF"
	}
	return "auth is OFF"
}
