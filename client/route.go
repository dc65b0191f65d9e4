package client

import (
	"context"
	"strconv"
	"strings"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	hodeiv1 "github.com/hodei-io/hodei/proto/hodeiv1"
)

// Routing chooses where the client sends a call that belongs to one shard.
type Routing int

const (
	// RouteLeader sends a call of one shard to that shard's leader when the
	// client knows it, saving the hop of a forward (the default).
	RouteLeader Routing = iota
	// RouteAny sends every call to the current node, which forwards writes
	// to the leader itself.
	RouteAny
)

// DefaultRefreshInterval is the default of Config.RefreshInterval.
const DefaultRefreshInterval = 3 * time.Second

// noShard marks a call that belongs to no single shard (or whose shard the
// client does not know): it goes to the current node.
const noShard = -1

// shardOf maps a tenant to its shard exactly like the server
// (cluster.ShardOf): FNV-1a (32 bit) of the tenant name modulo the shard
// count, the empty tenant being "default". route_test.go pins values
// computed by the server's function.
func shardOf(tenant string, shards int) int {
	if tenant == "" {
		tenant = "default"
	}
	const (
		offset32 = 2166136261
		prime32  = 16777619
	)
	h := uint32(offset32)
	for i := 0; i < len(tenant); i++ {
		h ^= uint32(tenant[i])
		h *= prime32
	}
	return int(h % uint32(shards))
}

// jobIDShard returns the shard of a job id "<shard>-<seq>" (canonical
// decimal numbers, seq > 0), or false if id is not one.
func jobIDShard(id string) (int, bool) {
	a, b, ok := strings.Cut(id, "-")
	if !ok || !canonicalUint(a) || !canonicalUint(b) {
		return 0, false
	}
	sh, err1 := strconv.ParseUint(a, 10, 31)
	seq, err2 := strconv.ParseUint(b, 10, 64)
	if err1 != nil || err2 != nil || seq == 0 {
		return 0, false
	}
	return int(sh), true
}

func canonicalUint(s string) bool {
	if s == "" || (len(s) > 1 && s[0] == '0') {
		return false
	}
	for i := 0; i < len(s); i++ {
		if s[i] < '0' || s[i] > '9' {
			return false
		}
	}
	return true
}

// shardMap is what the client knows of the cluster's shards. It is never
// modified once published: changes make a copy.
type shardMap struct {
	leaders []string // per shard: the leader's gRPC address, "" when unknown
}

func (m *shardMap) shards() int { return len(m.leaders) }

func (m *shardMap) withLeader(shard int, addr string) *shardMap {
	n := &shardMap{leaders: append([]string(nil), m.leaders...)}
	n.leaders[shard] = addr
	return n
}

// mapFromStatus builds the shard map of a Status answer, or returns nil if
// it has no shards or they are not exactly 0..n-1.
func mapFromStatus(st *hodeiv1.StatusResponse) *shardMap {
	n := len(st.GetShards())
	if n == 0 {
		return nil
	}
	m := &shardMap{leaders: make([]string, n)}
	seen := make([]bool, n)
	for _, s := range st.GetShards() {
		i := int(s.GetShard())
		if int64(s.GetShard()) >= int64(n) || seen[i] {
			return nil
		}
		seen[i] = true
		m.leaders[i] = s.GetLeaderAddress()
	}
	return m
}

// routeMap returns the shard map, or nil when routing is off or the map is
// unknown. The first call waits (within ctx) for the first load; later
// calls never wait, and ask for a background load while the map is unknown.
func (c *Client) routeMap(ctx context.Context) *shardMap {
	if c.cfg.Routing != RouteLeader {
		return nil
	}
	if m := c.smap.Load(); m != nil {
		return m
	}
	c.requestRefresh()
	select {
	case <-c.firstLoad:
	case <-ctx.Done():
	case <-c.bgCtx.Done():
	}
	return c.smap.Load()
}

// tenantShard returns the shard of tenant, or noShard if the map is unknown.
func (c *Client) tenantShard(ctx context.Context, tenant string) int {
	m := c.routeMap(ctx)
	if m == nil {
		return noShard
	}
	return shardOf(tenant, m.shards())
}

// jobShard returns the shard of job id, or noShard if id is not a job id or
// the map does not know the shard (the server then answers).
func (c *Client) jobShard(ctx context.Context, id string) int {
	sh, ok := jobIDShard(id)
	if !ok {
		return noShard
	}
	m := c.routeMap(ctx)
	if m == nil || sh >= m.shards() {
		return noShard
	}
	return sh
}

// leaderFor returns the known leader address of shard, or "".
func (c *Client) leaderFor(shard int) string {
	m := c.smap.Load()
	if m == nil || shard < 0 || shard >= m.shards() {
		return ""
	}
	return m.leaders[shard]
}

// setLeader records addr as shard's leader if the map still says old.
func (c *Client) setLeader(shard int, old, addr string) {
	for {
		m := c.smap.Load()
		if m == nil || shard < 0 || shard >= m.shards() || m.leaders[shard] != old || old == addr {
			return
		}
		if c.smap.CompareAndSwap(m, m.withLeader(shard, addr)) {
			return
		}
	}
}

// leaderFailed forgets addr as shard's leader (calls of the shard go to
// the current node meanwhile) and asks for a refresh.
func (c *Client) leaderFailed(shard int, addr string) {
	c.setLeader(shard, addr, "")
	c.requestRefresh()
}

// noteFailure learns from a retryable error of a call of shard sent to
// target (its leader if routed): a leader hint in the answer is used at
// once; a routed attempt that found no leader there forgets it. Both ask
// for a refresh.
func (c *Client) noteFailure(shard int, target string, routed bool, err error) {
	if hs, addr, ok := leaderHint(err); ok && hs == shard && addr != target {
		c.setLeader(shard, c.leaderFor(shard), addr)
		c.requestRefresh()
		return
	}
	if routed && staleSign(err) {
		c.leaderFailed(shard, target)
	}
}

// staleSign reports whether a retryable error says that the node was not
// (or no longer) a working leader: Unavailable, an attempt's timeout, or a
// transport error. ResourceExhausted and Aborted are not.
func staleSign(err error) bool {
	st, ok := status.FromError(err)
	if !ok {
		return true
	}
	return st.Code() == codes.Unavailable || st.Code() == codes.DeadlineExceeded
}

const (
	hintLeaderOf = " is not the leader of shard "
	hintLeader   = " (leader: "
)

// leaderHint parses the server's "node X is not the leader of shard N
// (leader: ADDR)" Unavailable answer.
func leaderHint(err error) (int, string, bool) {
	st, ok := status.FromError(err)
	if !ok || st.Code() != codes.Unavailable {
		return 0, "", false
	}
	msg := st.Message()
	i := strings.Index(msg, hintLeaderOf)
	if i < 0 {
		return 0, "", false
	}
	rest := msg[i+len(hintLeaderOf):]
	num, rest, ok := strings.Cut(rest, hintLeader)
	if !ok || !canonicalUint(num) {
		return 0, "", false
	}
	addr, _, ok := strings.Cut(rest, ")")
	if !ok || addr == "" {
		return 0, "", false
	}
	sh, err2 := strconv.ParseUint(num, 10, 31)
	if err2 != nil {
		return 0, "", false
	}
	return int(sh), addr, true
}

// requestRefresh starts a background load of the shard map unless one is
// running, no earlier than RefreshInterval after the last one ended.
func (c *Client) requestRefresh() {
	if c.cfg.Routing != RouteLeader {
		return
	}
	c.rmu.Lock()
	defer c.rmu.Unlock()
	if c.rclosed || c.refreshing {
		return
	}
	c.refreshing = true
	var delay time.Duration
	if c.loaded {
		delay = time.Until(c.lastLoad.Add(c.cfg.RefreshInterval))
	}
	c.bg.Add(1)
	go c.refresh(delay)
}

func (c *Client) refresh(delay time.Duration) {
	defer c.bg.Done()
	if delay > 0 {
		t := time.NewTimer(delay)
		select {
		case <-c.bgCtx.Done():
			t.Stop()
		case <-t.C:
		}
	}
	if c.bgCtx.Err() == nil {
		if m := c.loadMap(c.bgCtx); m != nil {
			c.smap.Store(m)
		}
	}
	c.rmu.Lock()
	c.refreshing = false
	c.lastLoad = time.Now()
	first := !c.loaded
	c.loaded = true
	c.rmu.Unlock()
	if first {
		close(c.firstLoad)
	}
}

// loadMap asks the nodes for their Status, starting at the current node and
// trying each address at most once (an unreachable one is failed over, as
// by a call). It returns nil if no node gave a usable map.
func (c *Client) loadMap(ctx context.Context) *shardMap {
	for range c.cfg.Addrs {
		idx, addr := c.current()
		cc, err := c.conn(addr)
		if err != nil {
			return nil
		}
		actx, cancel := context.WithTimeout(ctx, c.cfg.CallTimeout)
		st, err := hodeiv1.NewAdminServiceClient(cc).Status(actx, &hodeiv1.StatusRequest{})
		cancel()
		if err == nil {
			return mapFromStatus(st)
		}
		if ctx.Err() != nil || !IsRetryable(err) {
			return nil
		}
		c.failover(idx)
	}
	return nil
}
