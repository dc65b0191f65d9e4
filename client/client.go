// Package client is the Go SDK of Hodei.
//
// A Client talks to any node(s) of a cluster over gRPC. Every node serves
// every RPC and forwards writes to the right leader itself, so the client's
// only job is to stay connected: it keeps a current node and, when a call
// fails with a retryable error (see IsRetryable), moves to the next address
// and retries with jittered exponential backoff until the retry budget
// (Config.Retry) or the caller's context runs out.
//
// Every mutating call carries a request id generated once per logical call
// and reused on every retry, so a retry after an unknown outcome (timeout,
// leader change) returns the first answer instead of doing the write twice.
// Non-retryable errors (InvalidArgument, NotFound, FailedPrecondition, ...)
// are returned at once and unchanged: callers inspect them with status.Code.
//
// The client depends on the public protobuf API only, never on server
// packages.
package client

import (
	"context"
	crand "crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	mrand "math/rand/v2"
	"strings"
	"sync"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/status"
)

// Defaults of Config.
const (
	DefaultCallTimeout = 10 * time.Second
	DefaultRetry       = 30 * time.Second

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
	// DialOptions are added to the client's own (insecure transport credentials).
	DialOptions []grpc.DialOption
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
}

// Client is a Hodei API client. It is safe for concurrent use.
type Client struct {
	cfg Config

	mu     sync.Mutex
	conns  map[string]*grpc.ClientConn
	cur    int // index into cfg.Addrs of the current node
	closed bool
}

// New validates cfg and returns a Client. Connections are dialled lazily.
func New(cfg Config) (*Client, error) {
	cfg.Addrs = append([]string(nil), cfg.Addrs...)
	cfg.applyDefaults()
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	c := &Client{cfg: cfg, conns: make(map[string]*grpc.ClientConn)}
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

// Close closes every connection. Calls in flight fail.
func (c *Client) Close() error {
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
	opts := append([]grpc.DialOption{grpc.WithTransportCredentials(insecure.NewCredentials())}, c.cfg.DialOptions...)
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
// node: Unavailable, DeadlineExceeded of an attempt, ResourceExhausted,
// Aborted, and transport errors that carry no gRPC status.
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
	case codes.Unavailable, codes.DeadlineExceeded, codes.ResourceExhausted, codes.Aborted:
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
	budget := time.Now().Add(c.cfg.Retry)
	for n := 0; ; n++ {
		idx, target := -1, addr
		if target == "" {
			idx, target = c.current()
		}
		cc, err := c.conn(target)
		if err != nil {
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
