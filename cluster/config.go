package cluster

import (
	"errors"
	"fmt"
	"log/slog"
	"net"
	"strings"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/hodei-io/hodei/cluster/logstore"
	"github.com/hodei-io/hodei/fsm"
	"github.com/hodei-io/hodei/transport/tlsutil"
)

// Peer is one voter of the initial configuration.
type Peer struct {
	ID   string
	Addr string
}

// ParsePeers parses "id1=host:port,id2=host:port".
func ParsePeers(s string) ([]Peer, error) {
	var out []Peer
	seen := map[string]bool{}
	for _, part := range strings.Split(s, ",") {
		part = strings.TrimSpace(part)
		if part == "" {
			continue
		}
		id, addr, ok := strings.Cut(part, "=")
		if !ok || id == "" || addr == "" {
			return nil, fmt.Errorf("peer %q: want id=host:port", part)
		}
		if _, _, err := net.SplitHostPort(addr); err != nil {
			return nil, fmt.Errorf("peer %q: %w", part, err)
		}
		if seen[id] {
			return nil, fmt.Errorf("peer id %q listed twice", id)
		}
		seen[id] = true
		out = append(out, Peer{ID: id, Addr: addr})
	}
	return out, nil
}

// Config configures one server node.
type Config struct {
	NodeID   string
	DataDir  string
	GRPCAddr string // listen address, also the advertised Raft/gRPC address unless Advertise is set
	// Advertise is the address other nodes and clients use; defaults to the listener's address.
	Advertise string
	// Listener, when set, is used instead of listening on GRPCAddr (tests use 127.0.0.1:0).
	Listener net.Listener
	HTTPAddr string // metrics/health; empty disables
	// GossipAddr is the memberlist bind address (ip:port); empty: the gRPC
	// listener's IP with a free port.
	GossipAddr string
	// GossipAdvertise is the gossip address other nodes use ("host:port";
	// a host name is resolved at start; port 0 means the bound port).
	// Empty: see gossipAddrs (the advertised gRPC host when GossipAddr's IP
	// is unspecified).
	GossipAdvertise string

	// Shards is the number of shards of a new cluster (bootstrap). A node
	// that joins learns it from the cluster; a restarted node reads it from
	// its data dir.
	Shards int

	Bootstrap []Peer   // initial voters (every bootstrap node is given the same list)
	Join      []string // addresses of existing nodes to join through

	// Raft timing.
	HeartbeatTimeout   time.Duration
	ElectionTimeout    time.Duration
	LeaderLeaseTimeout time.Duration
	CommitTimeout      time.Duration
	SnapshotInterval   time.Duration
	SnapshotThreshold  uint64
	TrailingLogs       uint64
	ApplyTimeout       time.Duration

	// Proposal batching (group commit).
	BatchMaxCommands int
	BatchMaxBytes    int
	BatchMaxInflight int
	// ProposeWaves is how many proposal waves a node keeps in Raft at once:
	// the shards it leads cut their entries together when a wave opens
	// (wave.go). 0 disables waves (each shard pipelines up to
	// BatchMaxInflight entries on its own).
	ProposeWaves int
	// WaveStall: a wave in flight longer than this no longer holds the
	// next one back (a shard that cannot commit must not stop the others).
	WaveStall time.Duration

	// Scheduling.
	LeaseTTL    time.Duration // default lease TTL given to workers
	LeaderGrace time.Duration // after winning leadership, no lease expires before this has passed (default LeaseTTL)
	Retention   time.Duration // finished jobs are removed after this
	TimerTick   time.Duration // leader timers' resolution
	// CheckpointEvery is how often a shard leader proposes a replica
	// consistency checkpoint (fsm/chain.go) when the shard moved; <0
	// disables them.
	CheckpointEvery time.Duration

	// Keepalive: a node pings a client connection (workers' streams
	// included) that has been quiet this long, and closes it when the ping
	// is not answered within KeepaliveTimeout; connections to other nodes
	// are pinged the same way. Without it a connection that dies silently
	// (a host gone, a middlebox dropping state) is noticed only by TCP,
	// after many minutes, and a worker session's credit stays reserved for
	// a stream nobody reads. 0 disables; otherwise >= 1s.
	Keepalive        time.Duration
	KeepaliveTimeout time.Duration

	// SecurityWarnings: a node without TLS or without auth says so at WARN
	// (default). Off, it says so at INFO: for a caller that warns once for
	// all its nodes (hodei dev's single-process lab cluster).
	SecurityWarnings bool

	// IdentityProbeTimeout bounds each probe of a --peers or --join address
	// made at start to check the peer list and the data dir's cluster
	// (identity.go); a peer that does not answer in time is not judged.
	// 0 skips the probes (the data dir's node id is still checked).
	IdentityProbeTimeout time.Duration

	// BalanceInterval is how often the meta leader reconciles members and
	// moves shard leadership towards an even spread.
	BalanceInterval time.Duration
	// DeadNodeTimeout: a member gossip has seen dead this long is removed
	// automatically, if the remaining voters keep a quorum of at least 3.
	// Zero disables automatic removal.
	DeadNodeTimeout time.Duration

	FSM fsm.Config

	// Watch bounds the events each shard keeps for WatchJobs (eventbus.go);
	// zero means DefaultEventBusConfig.
	Watch EventBusConfig
	// CommitNudge: a shard leader follows the last entry of a burst with a
	// Raft barrier entry, so that followers learn the commit index within
	// a round trip instead of after CommitTimeout..2×CommitTimeout (50-100
	// ms by default). It bounds how late a watcher on a follower sees a
	// change on an idle cluster, for one extra log entry per burst.
	CommitNudge bool
	// DeadLetters (issue 11): every node of the cluster runs a binary that
	// knows entry version 4, so completions, lease expiries and GC are
	// proposed in version 4 entries (a job out of attempts ends DEAD with
	// its attempt history; fsm/dead.go). Default true. Set it false on the
	// upgraded nodes while a rolling upgrade from a release without it is
	// in progress: entries then keep the versions the old release applies
	// (jobs end FAILED), and only RetryJob/RequeueJobs need version 4.
	DeadLetters bool

	// PerGroupLogStore gives every Raft group its own raft-boltdb file
	// instead of the node's shared log store (for comparison benchmarks).
	PerGroupLogStore bool

	// UnsafeAckBeforeCommit acknowledges submits before Raft commit. It exists
	// only so that the chaos checker can be shown to catch lost jobs. Never use it.
	UnsafeAckBeforeCommit bool

	// ClockOffset shifts this node's clock: the time it stamps on the
	// entries it proposes (the replicated "now" of every state change) and
	// the time its leader timers compare lease deadlines and delays with.
	// It exists only for the chaos harness's clock-skew fault.
	ClockOffset time.Duration

	// LiveLogs bounds the node's store of live job log lines (zero values:
	// 16 KiB per line, 1 MiB per job, 256 MiB per node, 1 h retention).
	LiveLogs logstore.Config

	// ---- TLS (issue 12; cluster/tls.go) ----
	// TLS names the node's CA bundle, certificate and key. When set, the
	// node's one gRPC port speaks mutual TLS only (every client, worker and
	// node must present a certificate signed by the bundle), the node dials
	// other nodes with its certificate and verifies theirs (server role,
	// and the node's name when known), and node-only RPCs (Raft, LeaseFor,
	// group snapshots) need the server role. The certificate must have the
	// server role and name NodeID, or New refuses to start. The files are
	// read again on ReloadTLS (SIGHUP) and when they change on disk.
	TLS tlsutil.Files
	// TLSReloadInterval is how often the TLS files are looked at for a
	// change (0: tlsutil.DefaultPollInterval; negative: only ReloadTLS).
	TLSReloadInterval time.Duration
	// GossipKeys encrypt gossip (memberlist's keyring, AES-GCM): the first
	// key encrypts, every key decrypts. GossipKeyFile, read at start and on
	// ReloadTLS, is the other way to give them (exclusive). Neither:
	// gossip is plaintext.
	GossipKeys    [][]byte
	GossipKeyFile string
	// Auth: bearer tokens and roles (issue 12, auth.go); off by default.
	Auth AuthConfig

	Logger     *slog.Logger
	Registerer prometheus.Registerer // nil: a fresh registry per node
}

// DefaultConfig returns the production defaults.
//
// LeaderLeaseTimeout is 500 ms, not 250: under load (8 shards = 9 groups on
// 2 shared cores) leaders lost their lease to late heartbeat replies and
// stepped down, 4-9 leadership changes per 10 s, each stalling a shard for
// an election. Failover after a crash is driven by the followers'
// HeartbeatTimeout, not by the lease. CommitTimeout is 50 ms (hashicorp's
// default), not 5: it only bounds how late followers learn the commit index
// when no new entries flow, and at 5 ms the resulting empty AppendEntries
// were ~70% of all AppendEntries under load and ~40% of an idle 8-shard
// cluster's CPU. Measurements: docs/benchmarks.md.
func DefaultConfig() Config {
	return Config{
		GRPCAddr:             "127.0.0.1:7401",
		HeartbeatTimeout:     500 * time.Millisecond,
		ElectionTimeout:      500 * time.Millisecond,
		LeaderLeaseTimeout:   500 * time.Millisecond,
		CommitTimeout:        50 * time.Millisecond,
		SnapshotInterval:     30 * time.Second,
		SnapshotThreshold:    16384,
		TrailingLogs:         10240,
		ApplyTimeout:         10 * time.Second,
		BatchMaxCommands:     2048,
		BatchMaxBytes:        4 << 20,
		BatchMaxInflight:     8,
		ProposeWaves:         1,
		WaveStall:            50 * time.Millisecond,
		LeaseTTL:             30 * time.Second,
		Retention:            24 * time.Hour,
		DeadLetters:          true,
		TimerTick:            50 * time.Millisecond,
		CheckpointEvery:      5 * time.Second,
		Shards:               8,
		BalanceInterval:      time.Second,
		Keepalive:            10 * time.Second,
		KeepaliveTimeout:     5 * time.Second,
		IdentityProbeTimeout: time.Second,
		SecurityWarnings:     true,
		FSM:                  fsm.DefaultConfig(),
		Watch:                DefaultEventBusConfig(),
	}
}

// Validate checks the configuration, including cross-field rules.
func (c *Config) Validate() error {
	var errs []error
	if c.NodeID == "" {
		errs = append(errs, errors.New("node id is required"))
	}
	if c.DataDir == "" {
		errs = append(errs, errors.New("data dir is required"))
	}
	if c.Listener == nil && c.GRPCAddr == "" {
		errs = append(errs, errors.New("grpc address is required"))
	}
	if len(c.Bootstrap) > 0 && len(c.Join) > 0 {
		errs = append(errs, errors.New("--bootstrap and --join are exclusive"))
	}
	if len(c.Bootstrap) > 0 {
		found := false
		for _, p := range c.Bootstrap {
			if p.ID == c.NodeID {
				found = true
			}
		}
		if !found {
			errs = append(errs, fmt.Errorf("bootstrap peers do not include this node %q", c.NodeID))
		}
	}
	if c.LeaderLeaseTimeout > c.HeartbeatTimeout {
		errs = append(errs, errors.New("leader lease timeout must be <= heartbeat timeout"))
	}
	if c.ElectionTimeout < c.HeartbeatTimeout {
		errs = append(errs, errors.New("election timeout must be >= heartbeat timeout"))
	}
	if c.BatchMaxCommands < 1 || c.BatchMaxCommands > 65535 {
		errs = append(errs, errors.New("batch max commands must be in 1..65535"))
	}
	if c.BatchMaxInflight < 1 {
		errs = append(errs, errors.New("batch max inflight must be >= 1"))
	}
	if c.ProposeWaves < 0 {
		errs = append(errs, errors.New("propose waves must be >= 0"))
	}
	if c.ProposeWaves > 0 && c.WaveStall <= 0 {
		errs = append(errs, errors.New("wave stall must be > 0 when propose waves are on"))
	}
	if c.LeaseTTL < 100*time.Millisecond {
		errs = append(errs, errors.New("lease ttl must be >= 100ms"))
	}
	if c.Shards < 1 || c.Shards > 256 {
		errs = append(errs, fmt.Errorf("shards must be in 1..256, got %d", c.Shards))
	}
	if c.BalanceInterval <= 0 {
		errs = append(errs, errors.New("balance interval must be > 0"))
	}
	if c.DeadNodeTimeout < 0 {
		errs = append(errs, errors.New("dead node timeout must be >= 0"))
	}
	if c.TimerTick <= 0 {
		errs = append(errs, errors.New("timer tick must be > 0"))
	}
	if c.Retention <= 0 {
		errs = append(errs, errors.New("retention must be > 0"))
	}
	if err := c.FSM.Validate(); err != nil {
		errs = append(errs, err)
	}
	if c.LeaderGrace < 0 {
		errs = append(errs, errors.New("leader grace must be >= 0"))
	}
	if c.Keepalive < 0 || (c.Keepalive > 0 && c.Keepalive < time.Second) {
		errs = append(errs, fmt.Errorf("keepalive must be 0 (off) or >= 1s, got %v", c.Keepalive))
	}
	if c.IdentityProbeTimeout < 0 {
		errs = append(errs, errors.New("identity probe timeout must be >= 0"))
	}
	if c.Keepalive > 0 && c.KeepaliveTimeout <= 0 {
		errs = append(errs, errors.New("keepalive timeout must be > 0 when keepalive is on"))
	}
	if err := c.Auth.Validate(); err != nil {
		errs = append(errs, err)
	}
	if c.Watch != (EventBusConfig{}) { // zero: the defaults (resolved)
		if err := c.Watch.Validate(); err != nil {
			errs = append(errs, err)
		}
	}
	errs = append(errs, c.validateTLS()...) // tls.go
	return errors.Join(errs...)
}

// resolved returns c with the values that are derived from other fields
// filled in: a zero Watch means DefaultEventBusConfig, LeaderGrace 0 means
// one LeaseTTL, a nil Logger discards. It is
// the one place those derivations live (Validate changes nothing).
func (c Config) resolved() Config {
	if c.Watch == (EventBusConfig{}) {
		c.Watch = DefaultEventBusConfig()
	}
	if c.LeaderGrace == 0 {
		c.LeaderGrace = c.LeaseTTL
	}
	if c.Logger == nil {
		c.Logger = slog.New(slog.DiscardHandler)
	}
	return c
}
