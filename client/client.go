// Package client is the Go SDK of Hodei.
//
// A Client talks to the nodes of a cluster over gRPC. Every node serves
// every RPC and forwards writes to the right shard leader itself (one extra
// hop), so any node will do; the client keeps a current node among
// Config.Addrs and, when a call fails with a retryable error (see
// IsRetryable), moves to the next address and retries with jittered
// exponential backoff until the retry budget (Config.Retry) or the caller's
// context runs out.
//
// Leader routing (Config.Routing, on by default) saves the extra hop: the
// client learns the shard map (shard count and each shard's leader address)
// from AdminService.Status, and sends a call that belongs to one shard
// straight to that shard's leader. A tenant's shard is FNV-1a (32 bit) of its
// name modulo the shard count, as on the server; a job id "<shard>-<seq>"
// names its shard. Submit goes to its tenant's leader, Get (unless Stale),
// Cancel and Complete to their job's leader, and SubmitBatch sends each
// shard's part of the batch to that shard's leader concurrently. The map is
// loaded on first use (that call waits for it) and refreshed in the
// background, at most once per Config.RefreshInterval, when a call shows it
// is stale: a leader that answers Unavailable or cannot be reached, a
// "not the leader" answer (whose leader hint is used at once), or a shard
// without a known leader. Until then, and whenever a leader is unknown or
// unreachable, calls go to the current node as without routing. Leader
// addresses are the nodes' advertised gRPC addresses and need not be in
// Config.Addrs. Other calls (List, Lease, ExtendLeases, admin calls) always
// go to the current node.
//
// Every mutating call carries a request id generated once per logical call
// and reused on every retry, so a retry after an unknown outcome (timeout,
// leader change) returns the first answer instead of doing the write twice.
// Non-retryable errors (InvalidArgument, NotFound, FailedPrecondition, ...)
// are returned at once and unchanged: callers inspect them with status.Code.
// SubmitBatch sends a batch in parts (one per shard, and per MaxSubmitBatch
// specs); each part has its own request id derived from the call's
// ("<id>/<shard>", the server's own scheme), reused on that part's retries.
//
// For many concurrent single submits, a Submitter (NewSubmitter) coalesces
// them per shard into SubmitJobs calls and gives each caller its own answer.
//
// The client depends on the public protobuf API only, never on server
// packages.
package client

import (
	"context"
	crand "crypto/rand"
	"crypto/tls"
	"encoding/hex"
	"errors"
	"fmt"
	mrand "math/rand/v2"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/keepalive"
	"google.golang.org/grpc/status"

	"github.com/hodei-io/hodei/transport/tlsutil"
)

// Defaults of Config.
const (
	DefaultCallTimeout = 10 * time.Second
	DefaultRetry       = 30 * time.Second

	DefaultKeepalive        = 10 * time.Second
	DefaultKeepaliveTimeout = 5 * time.Second

	// leaseSlack is added to a Lease long-poll's wait to get its attempt timeout.
	leaseSlack = 5 * time.Second

	backoffMin = 10 * time.Millisecond
	backoffMax = time.Second
)

// ErrClosed is returned by calls made after Close.
var ErrClosed = errors.New("client: closed")

// Config configures a Client. The zero values of the durations mean their defaults.
type Config struct {
	// Addrs are gRPC addresses (host:port) of any nodes of the cluster.
	Addrs []string
	// CallTimeout bounds one attempt of a call (default 10s). A Lease
	// long-poll's attempt is bounded by its wait plus 5s instead.
	CallTimeout time.Duration
	// Retry is the total time budget for retrying retryable errors
	// (default 30s); the caller's context bounds it too. Negative disables retries.
	Retry time.Duration
	// DialOptions are added to the client's own (its transport
	// credentials: TLS or TLSFiles, else insecure).
	DialOptions []grpc.DialOption
	// Routing chooses where calls of one shard go: RouteLeader (the
	// default) sends them to the shard's leader, RouteAny to the current node.
	Routing Routing
	// RefreshInterval is the least time between two loads of the shard map
	// (default 3s). Negative is invalid.
	RefreshInterval time.Duration
	// Keepalive: while a stream is open (a worker's, a watch), the client
	// pings a connection that has been quiet this long and drops it when
	// the ping is not answered within KeepaliveTimeout, so a node that
	// vanished without closing the connection is left in seconds rather
	// than after TCP's many-minute timeout (a worker then reconnects to the
	// next address). Defaults 10s and 5s; grpc-go does not ping more often
	// than every 10s. Negative Keepalive disables the pings.
	Keepalive        time.Duration
	KeepaliveTimeout time.Duration

	// ---- TLS (issue 12; tls.go) ----
	// TLS, when set, is used as is for every connection (it must carry a
	// client certificate: nodes with TLS on require one). An empty
	// ServerName is set to tlsutil.ServerRoleName ("server.hodei"), so that
	// the standard verification refuses any certificate without the server
	// role (a client certificate posing as a node).
	TLS *tls.Config
	// TLSFiles, when set instead, names the CA bundle, client certificate
	// and key; the client re-reads them when they change (see
	// TLSReloadInterval) and on ReloadTLS, and verifies each node's
	// certificate against the bundle current at the handshake, requiring
	// the server role.
	TLSFiles tlsutil.Files
	// TLSReloadInterval: how often TLSFiles are looked at (0: the default
	// of tlsutil, 2s; negative: only on ReloadTLS).
	TLSReloadInterval time.Duration
	// Token is the bearer token ("hodei_<id>_<secret>") sent with every
	// call as `authorization: Bearer <token>` (auth, issue 12); empty sends
	// none (a cluster with auth off).
	Token string
}

// Validate checks the config after defaults are applied.
func (c *Config) Validate() error {
	if len(c.Addrs) == 0 {
		return errors.New("client: no addresses")
	}
	for _, a := range c.Addrs {
		if strings.TrimSpace(a) == "" {
			return errors.New("client: empty address")
		}
	}
	if c.CallTimeout < 0 {
		return fmt.Errorf("client: negative CallTimeout %v", c.CallTimeout)
	}
	if c.Routing != RouteLeader && c.Routing != RouteAny {
		return fmt.Errorf("client: unknown Routing %d", c.Routing)
	}
	if c.RefreshInterval < 0 {
		return fmt.Errorf("client: negative RefreshInterval %v", c.RefreshInterval)
	}
	if c.KeepaliveTimeout < 0 {
		return fmt.Errorf("client: negative KeepaliveTimeout %v", c.KeepaliveTimeout)
	}
	if c.TLS != nil && c.TLSFiles.Enabled() {
		return errors.New("client: TLS and TLSFiles are exclusive")
	}
	if err := c.TLSFiles.Validate(); err != nil {
		return fmt.Errorf("client: %w", err)
	}
	if err := validToken(c.Token); err != nil {
		return err
	}
	return nil
}

func (c *Config) applyDefaults() {
	if c.CallTimeout == 0 {
		c.CallTimeout = DefaultCallTimeout
	}
	if c.Retry == 0 {
		c.Retry = DefaultRetry
	}
	if c.Retry < 0 {
		c.Retry = 0
	}
	if c.Keepalive == 0 {
		c.Keepalive = DefaultKeepalive
	}
	if c.KeepaliveTimeout == 0 {
		c.KeepaliveTimeout = DefaultKeepaliveTimeout
	}
	if c.RefreshInterval == 0 {
		c.RefreshInterval = DefaultRefreshInterval
	}
}

// Client is a Hodei API client. It is safe for concurrent use.
type Client struct {
	cfg Config

	mu     sync.Mutex
	conns  map[string]*grpc.ClientConn
	cur    int // index into cfg.Addrs of the current node
	closed bool

	// Leader routing (route.go). smap is read lock-free on every call and
	// replaced whole (copy on write).
	smap       atomic.Pointer[shardMap] // nil: unknown
	rmu        sync.Mutex
	rclosed    bool
	refreshing bool          // a refresh goroutine is running (at most one)
	lastLoad   time.Time     // when the last load ended
	loaded     bool          // the first load ended
	firstLoad  chan struct{} // closed when the first load ends

	// bgCtx ends on Close; background goroutines (map refreshes) use it
	// and bg waits for them.
	bgCtx    context.Context
	bgCancel context.CancelFunc
	bg       sync.WaitGroup

	// creds are the transport credentials of every connection (tls.go);
	// tlsFiles reloads TLSFiles (nil without).
	creds    credentials.TransportCredentials
	tlsFiles *tlsutil.Reloader
}

// New validates cfg and returns a Client. Connections are dialled lazily.
func New(cfg Config) (*Client, error) {
	cfg.Addrs = append([]string(nil), cfg.Addrs...)
	cfg.applyDefaults()
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	c := &Client{cfg: cfg, conns: make(map[string]*grpc.ClientConn), firstLoad: make(chan struct{})}
	if err := c.setupTLS(); err != nil {
		return nil, err
	}
	c.bgCtx, c.bgCancel = context.WithCancel(context.Background())
	// Creating the channels checks the addresses; no connection is made
	// until the first call.
	for _, a := range cfg.Addrs {
		if _, err := c.conn(a); err != nil {
			_ = c.Close()
			return nil, err
		}
	}
	return c, nil
}

// Close stops the background map refresh and closes every connection.
// Calls in flight fail.
func (c *Client) Close() error {
	c.rmu.Lock()
	c.rclosed = true
	c.rmu.Unlock()
	c.bgCancel()
	c.bg.Wait()

	c.mu.Lock()
	defer c.mu.Unlock()
	if c.closed {
		return nil
	}
	c.closed = true
	var errs []error
	for _, cc := range c.conns {
		errs = append(errs, cc.Close())
	}
	c.conns = nil
	if c.tlsFiles != nil {
		errs = append(errs, c.tlsFiles.Close())
	}
	return errors.Join(errs...)
}

// Addrs returns the configured addresses.
func (c *Client) Addrs() []string { return append([]string(nil), c.cfg.Addrs...) }

// conn returns the (lazily created) connection to addr.
func (c *Client) conn(addr string) (*grpc.ClientConn, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.closed {
		return nil, ErrClosed
	}
	if cc, ok := c.conns[addr]; ok {
		return cc, nil
	}
	opts := []grpc.DialOption{grpc.WithTransportCredentials(c.creds)}
	if c.cfg.Keepalive > 0 {
		opts = append(opts, grpc.WithKeepaliveParams(keepalive.ClientParameters{
			Time: c.cfg.Keepalive, Timeout: c.cfg.KeepaliveTimeout}))
	}
	if c.cfg.Token != "" {
		opts = append(opts, grpc.WithPerRPCCredentials(bearer(c.cfg.Token)))
	}
	opts = append(opts, c.cfg.DialOptions...)
	cc, err := grpc.NewClient(addr, opts...)
	if err != nil {
		return nil, fmt.Errorf("client: dial %s: %w", addr, err)
	}
	c.conns[addr] = cc
	return cc, nil
}

// current returns the index and address of the current node.
func (c *Client) current() (int, string) {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.cur, c.cfg.Addrs[c.cur]
}

// failover moves past the node at index from (unless another call already did).
func (c *Client) failover(from int) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.cur == from {
		c.cur = (c.cur + 1) % len(c.cfg.Addrs)
	}
}

// IsRetryable reports whether err is worth retrying, possibly on another
// node: Unavailable, DeadlineExceeded of an attempt, ResourceExhausted
// (except a tenant limit's refusal, see IsQuotaRefusal), Aborted, and
// transport errors that carry no gRPC status.
// Errors of the caller's context (context.Canceled / DeadlineExceeded as
// plain errors) and ErrClosed are not retryable.
func IsRetryable(err error) bool {
	if err == nil {
		return false
	}
	if errors.Is(err, ErrClosed) || errors.Is(err, context.Canceled) || errors.Is(err, context.DeadlineExceeded) {
		return false
	}
	st, ok := status.FromError(err)
	if !ok {
		// Not a gRPC status: a transport or dial error.
		return true
	}
	switch st.Code() {
	case codes.ResourceExhausted:
		return !IsQuotaRefusal(err) // a tenant limit (issue 11 quota) is a definite answer
	case codes.Unavailable, codes.DeadlineExceeded, codes.Aborted:
		return true
	}
	return false
}

// NewRequestID returns a fresh random request id (128 bits, hex).
func NewRequestID() string {
	var b [16]byte
	_, _ = crand.Read(b[:]) // never fails (Go ≥ 1.24 crashes instead)
	return hex.EncodeToString(b[:])
}

// backoff returns the jittered sleep before retry number n (0-based):
// uniformly in [d/2, d] with d = min(10ms·2^n, 1s).
func backoff(n int) time.Duration {
	d := backoffMin
	for i := 0; i < n && d < backoffMax; i++ {
		d *= 2
	}
	d = min(d, backoffMax)
	return d/2 + mrand.N(d/2+1)
}

// invoke runs attempt against the current node, failing over and retrying
// retryable errors until the retry budget or ctx ends. addr, if not empty,
// pins the call to one node (no failover, still retried).
func (c *Client) invoke(ctx context.Context, timeout time.Duration, addr string, attempt func(ctx context.Context, cc *grpc.ClientConn) error) error {
	return c.invokeOn(ctx, timeout, addr, noShard, attempt)
}

// invokeShard is invoke for a call of one shard: each attempt goes to the
// shard's leader when the shard map knows it, else to the current node.
// shard is noShard for a call without one (then it is invoke).
func (c *Client) invokeShard(ctx context.Context, timeout time.Duration, shard int, attempt func(ctx context.Context, cc *grpc.ClientConn) error) error {
	return c.invokeOn(ctx, timeout, "", shard, attempt)
}

func (c *Client) invokeOn(ctx context.Context, timeout time.Duration, pin string, shard int, attempt func(ctx context.Context, cc *grpc.ClientConn) error) error {
	budget := time.Now().Add(c.cfg.Retry)
	for n := 0; ; n++ {
		idx, target, routed := -1, pin, false
		if target == "" && shard != noShard {
			if target = c.leaderFor(shard); target != "" {
				routed = true
			} else {
				// The map has the shard but no leader for it.
				c.requestRefresh()
			}
		}
		if target == "" {
			idx, target = c.current()
		}
		cc, err := c.conn(target)
		if err != nil {
			if routed && !errors.Is(err, ErrClosed) {
				// An advertised leader address we cannot dial: use any node.
				c.leaderFailed(shard, target)
				continue
			}
			// Closed client or a malformed address: retrying cannot help.
			return err
		}
		actx, cancel := context.WithTimeout(ctx, timeout)
		err = attempt(actx, cc)
		cancel()
		if err == nil {
			return nil
		}
		if ctx.Err() != nil {
			// The caller's context ended: report the RPC's error if it is
			// one, so status.Code still works.
			if _, ok := status.FromError(err); ok {
				return err
			}
			return ctx.Err()
		}
		if !IsRetryable(err) {
			return err
		}
		if shard != noShard {
			c.noteFailure(shard, target, routed, err)
		}
		if idx >= 0 {
			c.failover(idx)
		}
		sleep := backoff(n)
		if time.Now().Add(sleep).After(budget) {
			return err
		}
		t := time.NewTimer(sleep)
		select {
		case <-ctx.Done():
			t.Stop()
			return err
		case <-t.C:
		}
	}
}
