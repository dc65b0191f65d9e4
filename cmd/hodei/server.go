package main

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/signal"
	"strings"
	"syscall"
	"time"

	"github.com/spf13/cobra"

	"github.com/hodei-io/hodei/cluster"
)

func init() { register(newServerCmd) }

func parseLevel(s string) (slog.Level, error) {
	var l slog.Level
	err := l.UnmarshalText([]byte(s))
	return l, err
}

func newLogger(level string) (*slog.Logger, error) {
	l, err := parseLevel(level)
	if err != nil {
		return nil, fmt.Errorf("--log-level: %w", err)
	}
	opts := &slog.HandlerOptions{Level: l}
	switch global.logFmt {
	case "text", "":
		return slog.New(slog.NewTextHandler(os.Stderr, opts)), nil
	case "json":
		return slog.New(slog.NewJSONHandler(os.Stderr, opts)), nil
	}
	return nil, fmt.Errorf("--log-format: want text or json, got %q", global.logFmt)
}

func newServerCmd() *cobra.Command {
	cfg := cluster.DefaultConfig()
	var bootstrap, join, logLevel string
	applyDead := func() {}
	applyTLS := func() error { return nil }
	applyAuth := func() error { return nil }
	checkGate := func(cluster.Config, *slog.Logger, io.Writer) error { return nil }
	cmd := &cobra.Command{
		Use:   "server",
		Short: "Run one Hodei server node",
		Long: `Run one Hodei server node. One gRPC port serves clients, workers, operators and Raft.

Start a new 3-node cluster by giving every node the same --bootstrap list:
  hodei server --id n1 --data /var/lib/hodei --grpc 10.0.0.1:7401 --bootstrap n1=10.0.0.1:7401,n2=10.0.0.2:7401,n3=10.0.0.3:7401
Add a node to a running cluster with --join ADDR (any member).

The server refuses to start without mutual TLS (--tls-ca/--tls-cert/--tls-key)
and tokens (--auth) unless --insecure is given (docs/security.md).`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			log, err := newLogger(logLevel)
			if err != nil {
				return err
			}
			cfg.Logger = log.With("node", cfg.NodeID)
			applyDead()
			if err := applyTLS(); err != nil {
				return err
			}
			if err := applyAuth(); err != nil {
				return err
			}
			if err := checkGate(cfg, cfg.Logger, cmd.ErrOrStderr()); err != nil { // server_secure.go
				return err
			}
			if bootstrap != "" {
				if cfg.Bootstrap, err = cluster.ParsePeers(bootstrap); err != nil {
					return fmt.Errorf("--bootstrap: %w", err)
				}
			}
			for _, a := range strings.Split(join, ",") {
				if a = strings.TrimSpace(a); a != "" {
					cfg.Join = append(cfg.Join, a)
				}
			}
			ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
			defer stop()
			n, err := cluster.New(cfg)
			if err != nil {
				return err
			}
			stopHUP := onSIGHUP(log, "tls files and gossip keys", n.ReloadTLS) // tls.go
			defer stopHUP()
			fmt.Fprintf(cmd.OutOrStdout(), "hodei node %s serving gRPC on %s, HTTP on %s, data in %s\n", cfg.NodeID, n.Addr(), n.HTTPAddr(), cfg.DataDir)
			if len(cfg.Join) > 0 {
				if err := n.JoinCluster(ctx); err != nil {
					stopHUP()
					n.Close()
					return err
				}
				fmt.Fprintf(cmd.OutOrStdout(), "joined the cluster through %s\n", join)
			}
			<-ctx.Done()
			log.Info("shutting down")
			stopHUP()
			return n.Close()
		},
	}
	f := cmd.Flags()
	f.StringVar(&cfg.NodeID, "id", "", "unique, stable node id (required)")
	f.StringVar(&cfg.DataDir, "data", "", "data directory (required)")
	f.StringVar(&cfg.GRPCAddr, "grpc", cfg.GRPCAddr, "gRPC listen address (clients, workers, admin and Raft)")
	f.StringVar(&cfg.Advertise, "advertise", "", "address other nodes and clients use (default: the --grpc address)")
	f.StringVar(&cfg.HTTPAddr, "http", "", "metrics and health listen address (/metrics, /healthz, /readyz); empty disables")
	f.StringVar(&cfg.GossipAddr, "gossip", "", "memberlist gossip bind address ip:port, TCP and UDP (default: the --grpc IP with a free port)")
	f.StringVar(&cfg.GossipAdvertise, "gossip-advertise", "", "gossip address other nodes use, host:port (a name is resolved at start; port 0: the bound port; default: the --advertise host when --gossip binds all interfaces)")
	f.StringVar(&bootstrap, "bootstrap", "", "initial voters id=host:port,... (same list on every initial node)")
	f.StringVar(&join, "join", "", "addresses of existing members to join through")
	f.IntVar(&cfg.Shards, "shards", cfg.Shards, "number of shards of a new cluster (with --bootstrap; joining nodes learn it)")
	f.DurationVar(&cfg.DeadNodeTimeout, "dead-node-timeout", cfg.DeadNodeTimeout, "remove a node gossip has seen dead this long (0: never), keeping >= 3 voters")
	f.DurationVar(&cfg.LeaseTTL, "lease-ttl", cfg.LeaseTTL, "default lease TTL given to workers")
	f.DurationVar(&cfg.Retention, "retention", cfg.Retention, "how long finished jobs are kept")
	f.DurationVar(&cfg.HeartbeatTimeout, "raft-heartbeat-timeout", cfg.HeartbeatTimeout, "Raft heartbeat timeout")
	f.DurationVar(&cfg.ElectionTimeout, "raft-election-timeout", cfg.ElectionTimeout, "Raft election timeout")
	f.DurationVar(&cfg.LeaderLeaseTimeout, "raft-leader-lease-timeout", cfg.LeaderLeaseTimeout, "Raft leader lease timeout")
	f.IntVar(&cfg.ProposeWaves, "propose-waves", cfg.ProposeWaves, "proposal waves a node keeps in Raft at once (the shards it leads cut their entries together); 0 lets every shard pipeline alone")
	f.StringVar(&logLevel, "log-level", "info", "debug, info, warn or error")
	// issue 11 watch
	f.IntVar(&cfg.Watch.MaxEvents, "watch-max-events", cfg.Watch.MaxEvents, "job events each shard keeps for WatchJobs resumes")
	f.IntVar(&cfg.Watch.MaxBytes, "watch-max-bytes", cfg.Watch.MaxBytes, "estimated bytes of job events each shard keeps for WatchJobs resumes")
	f.BoolVar(&cfg.CommitNudge, "commit-nudge", cfg.CommitNudge, "follow each burst of entries with a Raft barrier so that followers (and their watchers) learn commits within a round trip")
	f.BoolVar(&cfg.UnsafeAckBeforeCommit, "unsafe-ack-before-commit", false, "TEST ONLY: acknowledge submits before commit (loses jobs; used to show the chaos checker fails)")
	_ = f.MarkHidden("unsafe-ack-before-commit")
	f.DurationVar(&cfg.ClockOffset, "test-clock-offset", 0, "TEST ONLY: shift this node's clock by this much (the chaos harness's clock-skew fault)")
	_ = f.MarkHidden("test-clock-offset")
	applyDead = addDeadServerFlags(cmd, &cfg) // issue 11 dead, job_dead.go
	applyTLS = addTLSFlags(cmd, &cfg)         // issue 12 tls, tls.go
	applyAuth = addAuthServerFlags(cmd, &cfg) // issue 12 auth, auth_server.go
	checkGate = addInsecureFlag(cmd)          // issue 12: refuse an open production node, server_secure.go
	_ = time.Second
	return cmd
}
