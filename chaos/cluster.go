package chaos

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/hodei-io/hodei/client"
	"github.com/hodei-io/hodei/proto/hodeiv1"
)

// Node is one server process slot: an address (and, with partitions, a
// network namespace) that a member or a spare runs at.
type Node struct {
	Index int // 1-based slot
	ID    string
	GRPC  string
	HTTP  string
	Data  string
	Proc  *Proc
	// Member: part of the cluster's Raft groups. Spares (started only by a
	// membership fault) are not, nor are nodes removed by one.
	Member bool
}

// ClusterConfig says how to start the cluster.
type ClusterConfig struct {
	Binary      string
	RunDir      string
	Nodes       int
	Workers     int
	Concurrency int
	Spares      int      // extra slots for membership faults (not started, not bootstrapped)
	Network     *Network // nil: every node on 127.0.0.1
	ServerArgs  []string // extra flags for every server (e.g. --unsafe-ack-before-commit)
	WorkerArgs  []string
	Log         *slog.Logger
	// TLS, when set, runs every server, worker and harness client with
	// mutual TLS and every server with encrypted gossip (tls.go).
	TLS   *PKI
	Token string // bearer token of the harness's clients (auth on)
}

// Cluster is a running set of server and worker processes.
type Cluster struct {
	cfg     ClusterConfig
	Nodes   []*Node
	Workers []*Proc
	admin   *client.Client
	mu      sync.Mutex
	nextID  int    // ids of nodes started by membership faults: n<nextID>
	Disks   *Disks // each slot's own file system (disk faults only), by slot index
	// insecure: the servers need --insecure (the binary has the flag and
	// the run is not both TLS and auth).
	insecure bool
}

// freePort picks a free loopback port below the kernel's ephemeral range
// (32768 and up by default). A port the kernel hands out for ":0" is
// closed again before the server binds it, and anything else on the
// machine that connects or listens meanwhile can get the same one (seen:
// a server failed to start with "address already in use" while tests ran
// beside the harness); ports below the range are only taken by programs
// that ask for them by number.
func freePort(taken map[int]bool) (int, error) {
	for range 200 {
		port := 20000 + rand.IntN(12000)
		if taken[port] {
			continue
		}
		l, err := net.Listen("tcp", "127.0.0.1:"+strconv.Itoa(port))
		if err != nil {
			continue
		}
		l.Close()
		taken[port] = true
		return port, nil
	}
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return 0, err
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port, nil
}

// NewCluster lays out addresses and data directories; Start starts it.
func NewCluster(cfg ClusterConfig) (*Cluster, error) {
	c := &Cluster{cfg: cfg, nextID: cfg.Nodes + cfg.Spares + 1,
		insecure: (cfg.TLS == nil || cfg.Token == "") && ServerSupports(cfg.Binary, "--insecure")}
	var boot []string
	taken := map[int]bool{}
	for i := 1; i <= cfg.Nodes+cfg.Spares; i++ {
		n := &Node{Index: i, ID: fmt.Sprintf("n%d", i), Member: i <= cfg.Nodes}
		if cfg.Network != nil {
			ip := cfg.Network.IP(i)
			n.GRPC, n.HTTP = ip+":7401", ip+":8401"
		} else {
			gp, err := freePort(taken)
			if err != nil {
				return nil, err
			}
			hp, err := freePort(taken)
			if err != nil {
				return nil, err
			}
			n.GRPC, n.HTTP = "127.0.0.1:"+strconv.Itoa(gp), "127.0.0.1:"+strconv.Itoa(hp)
		}
		if n.Member {
			boot = append(boot, n.ID+"="+n.GRPC)
		}
		c.Nodes = append(c.Nodes, n)
	}
	for _, n := range c.Nodes {
		var extra []string
		if n.Member {
			extra = []string{"--bootstrap", strings.Join(boot, ",")}
		}
		if err := c.setNodeID(n, n.ID, extra); err != nil {
			return nil, err
		}
	}
	all := c.Addrs()
	for i := 1; i <= cfg.Workers; i++ {
		dir := filepath.Join(cfg.RunDir, "workers")
		if err := os.MkdirAll(dir, 0o755); err != nil {
			return nil, err
		}
		// The worker runtime connects to its first address first and moves
		// to the next on failure: worker i starts on member i, so that the
		// streams are spread like a deployment's (then faults move them).
		first := (i - 1) % cfg.Nodes
		addrs := strings.Join(append(append([]string(nil), all[first:]...), all[:first]...), ",")
		args := []string{"worker", "--server", addrs, "--id", fmt.Sprintf("w%d", i),
			"--concurrency", strconv.Itoa(cfg.Concurrency), "--drain-timeout", "2s"}
		args = append(args, cfg.WorkerArgs...)
		if cfg.TLS != nil {
			args = append(args, cfg.TLS.ClientArgs()...)
		}
		c.Workers = append(c.Workers, &Proc{Name: fmt.Sprintf("w%d", i), Path: cfg.Binary, Args: args,
			LogPath: filepath.Join(dir, fmt.Sprintf("w%d.log", i))})
	}
	cl, err := client.New(client.Config{Addrs: c.Addrs(), CallTimeout: 2 * time.Second, Retry: -1, TLSFiles: c.clientTLS(), Token: cfg.Token})
	if err != nil {
		return nil, err
	}
	c.admin = cl
	return c, nil
}

// setNodeID (re)defines the process of slot n: a node with this id, a data
// directory and log of its own, and extra flags (--bootstrap for initial
// members; none for a node that will be joined).
func (c *Cluster) setNodeID(n *Node, id string, extra []string) error {
	n.ID = id
	n.Data = filepath.Join(c.cfg.RunDir, "nodes", id, "data")
	if err := os.MkdirAll(n.Data, 0o755); err != nil {
		return err
	}
	args := []string{"server", "--id", n.ID, "--data", n.Data, "--grpc", n.GRPC, "--http", n.HTTP}
	args = append(append(args, extra...), c.cfg.ServerArgs...)
	if c.insecure {
		args = append(args, "--insecure") // a lab cluster on purpose (the servers refuse to start open otherwise)
	}
	if c.cfg.TLS != nil {
		targs, err := c.cfg.TLS.ServerArgs(id)
		if err != nil {
			return err
		}
		args = append(args, targs...)
	}
	n.Proc = &Proc{Name: n.ID, Path: c.cfg.Binary, Args: args,
		LogPath: filepath.Join(c.cfg.RunDir, "nodes", n.ID, "server.log")}
	if c.cfg.Network != nil {
		n.Proc.NetNS = c.cfg.Network.NS(n.Index)
	}
	return nil
}

// Members are the nodes that are part of the cluster now.
func (c *Cluster) Members() []*Node {
	c.mu.Lock()
	defer c.mu.Unlock()
	var out []*Node
	for _, n := range c.Nodes {
		if n.Member {
			out = append(out, n)
		}
	}
	return out
}

// Spare returns a slot that is not a member and not running, or nil.
func (c *Cluster) Spare() *Node {
	c.mu.Lock()
	defer c.mu.Unlock()
	for _, n := range c.Nodes {
		if !n.Member && !n.Proc.Running() {
			return n
		}
	}
	return nil
}

func (c *Cluster) setMember(n *Node, m bool) {
	c.mu.Lock()
	n.Member = m
	c.mu.Unlock()
}

// Addrs are the nodes' gRPC addresses.
func (c *Cluster) Addrs() []string {
	out := make([]string, len(c.Nodes))
	for i, n := range c.Nodes {
		out[i] = n.GRPC
	}
	return out
}

// Start starts every server and waits until every shard has a leader that
// every node agrees on.
func (c *Cluster) Start(ctx context.Context, timeout time.Duration) error {
	for _, n := range c.Members() {
		if err := n.Proc.Start(); err != nil {
			return err
		}
	}
	return c.WaitHealthy(ctx, timeout)
}

// StartWorkers starts every worker process.
func (c *Cluster) StartWorkers() error {
	for _, w := range c.Workers {
		if err := w.Start(); err != nil {
			return err
		}
	}
	return nil
}

// Status of one node, one attempt.
func (c *Cluster) Status(ctx context.Context, n *Node) (*hodeiv1.StatusResponse, error) {
	ctx, cancel := context.WithTimeout(ctx, 2*time.Second)
	defer cancel()
	return c.admin.Status(ctx, n.GRPC)
}

// WaitHealthy waits until every node answers Status and they all name the
// same leader for every shard.
func (c *Cluster) WaitHealthy(ctx context.Context, timeout time.Duration) error {
	deadline := time.Now().Add(timeout)
	var last error
	for {
		last = c.healthy(ctx)
		if last == nil {
			return nil
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("cluster not healthy after %v: %w", timeout, last)
		}
		if err := sleepCtx(ctx, 200*time.Millisecond); err != nil {
			return err
		}
	}
}

func (c *Cluster) healthy(ctx context.Context) error {
	leaders := map[uint32]string{}
	for _, n := range c.Members() {
		if !n.Proc.Running() {
			return fmt.Errorf("%s is not running (see %s)", n.ID, n.Proc.LogPath)
		}
		st, err := c.Status(ctx, n)
		if err != nil {
			return fmt.Errorf("%s: %w", n.ID, err)
		}
		if len(st.GetShards()) == 0 {
			return fmt.Errorf("%s reports no shards", n.ID)
		}
		for _, s := range st.GetShards() {
			if s.GetLeaderId() == "" {
				return fmt.Errorf("%s: shard %d has no leader", n.ID, s.GetShard())
			}
			if l, ok := leaders[s.GetShard()]; ok && l != s.GetLeaderId() {
				return fmt.Errorf("shard %d: leaders disagree (%s, %s)", s.GetShard(), l, s.GetLeaderId())
			}
			leaders[s.GetShard()] = s.GetLeaderId()
		}
	}
	return nil
}

// Leader returns the node that leads the most shards, as reported by any
// reachable, running, unpaused node (ties: lowest index). nil if none known.
func (c *Cluster) Leader(ctx context.Context) *Node {
	members := c.Members()
	for _, n := range members {
		if !n.Proc.Running() || n.Proc.Paused() {
			continue
		}
		st, err := c.Status(ctx, n)
		if err != nil {
			continue
		}
		count := map[string]int{}
		for _, s := range st.GetShards() {
			if s.GetLeaderId() != "" {
				count[s.GetLeaderId()]++
			}
		}
		best, bestN := "", 0
		ids := make([]string, 0, len(count))
		for id := range count {
			ids = append(ids, id)
		}
		sort.Strings(ids)
		for _, id := range ids {
			if count[id] > bestN {
				best, bestN = id, count[id]
			}
		}
		for _, m := range members {
			if m.ID == best {
				return m
			}
		}
	}
	return nil
}

// Digests polls every node once.
func (c *Cluster) Digests(ctx context.Context, at time.Duration) ([]DigestSample, error) {
	var out []DigestSample
	var errs []error
	for _, n := range c.Members() {
		st, err := c.Status(ctx, n)
		if err != nil {
			errs = append(errs, fmt.Errorf("%s: %w", n.ID, err))
			continue
		}
		for _, s := range st.GetShards() {
			out = append(out, DigestSample{At: at, Node: n.ID, Shard: s.GetShard(), Applied: s.GetAppliedIndex(), Digest: s.GetFsmDigest()})
		}
	}
	return out, errors.Join(errs...)
}

// Close stops every process (workers first) and the admin client.
func (c *Cluster) Close() {
	var wg sync.WaitGroup
	for _, w := range c.Workers {
		wg.Add(1)
		go func(p *Proc) { defer wg.Done(); _ = p.Stop(3 * time.Second) }(w)
	}
	wg.Wait()
	for _, n := range c.Nodes {
		wg.Add(1)
		go func(p *Proc) { defer wg.Done(); _ = p.Stop(5 * time.Second) }(n.Proc)
	}
	wg.Wait()
	if c.admin != nil {
		_ = c.admin.Close()
	}
}

// KillAll sends SIGKILL to every process group (used on abnormal exit).
func (c *Cluster) KillAll() {
	for _, w := range c.Workers {
		_ = w.Kill()
	}
	for _, n := range c.Nodes {
		_ = n.Proc.Kill()
	}
}

// ServerSupports reports whether `binary server --help` mentions flag.
func ServerSupports(binary, flag string) bool {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	out, _ := exec.CommandContext(ctx, binary, "server", "--help").CombinedOutput()
	return strings.Contains(string(out), flag)
}

func sleepCtx(ctx context.Context, d time.Duration) error {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
		return ctx.Err()
	case <-t.C:
		return nil
	}
}

// divergenceMarker is what a node logs when a replica consistency checkpoint
// fails (cluster/shard.go onDivergence).
const divergenceMarker = "replica divergence"

// Divergences returns every node log line reporting a replica divergence,
// prefixed with the node (at most 20 per node).
func (c *Cluster) Divergences() []string {
	var out []string
	c.mu.Lock()
	nodes := append([]*Node(nil), c.Nodes...)
	c.mu.Unlock()
	for _, n := range nodes {
		out = append(out, scanLog(n.ID, n.Proc.LogPath, divergenceMarker, 20)...)
	}
	return out
}

func scanLog(node, path, marker string, limit int) []string {
	f, err := os.Open(path)
	if err != nil {
		return nil
	}
	defer f.Close()
	var out []string
	sc := bufio.NewScanner(f)
	sc.Buffer(make([]byte, 64<<10), 1<<20)
	for sc.Scan() && len(out) < limit {
		if line := sc.Text(); strings.Contains(line, marker) {
			out = append(out, node+": "+line)
		}
	}
	return out
}

// WorkerStreams returns, per node id, the workers whose stream is up on it
// now, from the workers' own logs: the node named by a worker's last
// "worker stream up" line, unless a "worker stream ended" or "drained"
// line came after it. A worker that is not running has no stream.
func (c *Cluster) WorkerStreams() map[string][]string {
	out := map[string][]string{}
	for _, w := range c.Workers {
		if !w.Running() {
			continue
		}
		if node := streamNode(w.LogPath); node != "" {
			out[node] = append(out[node], w.Name)
		}
	}
	return out
}

// streamNode returns the node a worker log says its stream is up on ("" if
// none).
func streamNode(path string) string {
	f, err := os.Open(path)
	if err != nil {
		return ""
	}
	defer f.Close()
	node := ""
	sc := bufio.NewScanner(f)
	sc.Buffer(make([]byte, 64<<10), 1<<20)
	for sc.Scan() {
		line := sc.Text()
		switch {
		case strings.Contains(line, `msg="worker stream up"`):
			node = logField(line, "node")
		case strings.Contains(line, `msg="worker stream ended"`), strings.Contains(line, "worker stream drained"),
			strings.HasPrefix(line, "==== chaos: start"):
			node = ""
		}
	}
	return node
}

// logField returns the value of key=value in a log/slog text line.
func logField(line, key string) string {
	i := strings.Index(line, " "+key+"=")
	if i < 0 {
		return ""
	}
	v := line[i+len(key)+2:]
	if strings.HasPrefix(v, `"`) {
		if j := strings.Index(v[1:], `"`); j >= 0 {
			return v[1 : j+1]
		}
		return v[1:]
	}
	if j := strings.IndexByte(v, ' '); j >= 0 {
		return v[:j]
	}
	return v
}
