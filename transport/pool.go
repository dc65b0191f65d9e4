package transport

import (
	"errors"
	"fmt"
	"sync"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
)

// ErrPoolClosed is returned by Pool.Get after Pool.Close.
var ErrPoolClosed = errors.New("transport: connection pool closed")

// Pool holds one *grpc.ClientConn per target address ("host:port"), created
// lazily on first use and shared by every user on the node: the Raft
// transport of every group and request forwarding. A grpc.ClientConn
// reconnects by itself, so a connection is kept until Close.
//
// Connections use insecure transport credentials; options given to NewPool
// are appended after that default (a later grpc.WithTransportCredentials
// overrides it).
type Pool struct {
	opts []grpc.DialOption

	mu     sync.Mutex
	conns  map[string]*grpc.ClientConn
	closed bool
}

// NewPool returns an empty pool whose connections are created with opts.
func NewPool(opts ...grpc.DialOption) *Pool {
	all := make([]grpc.DialOption, 0, len(opts)+1)
	all = append(all, grpc.WithTransportCredentials(insecure.NewCredentials()))
	all = append(all, opts...)
	return &Pool{opts: all, conns: make(map[string]*grpc.ClientConn)}
}

// Get returns the connection to addr, creating it if needed. Creating a
// connection does not perform I/O: it connects in the background and RPCs on
// it fail fast (UNAVAILABLE) while the peer is unreachable.
func (p *Pool) Get(addr string) (*grpc.ClientConn, error) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.closed {
		return nil, ErrPoolClosed
	}
	if cc, ok := p.conns[addr]; ok {
		return cc, nil
	}
	if addr == "" {
		return nil, errors.New("transport: empty target address")
	}
	cc, err := grpc.NewClient(addr, p.opts...)
	if err != nil {
		return nil, fmt.Errorf("transport: connect %s: %w", addr, err)
	}
	p.conns[addr] = cc
	return cc, nil
}

// Close closes every connection; later Gets fail with ErrPoolClosed. It is
// idempotent.
func (p *Pool) Close() error {
	p.mu.Lock()
	conns := p.conns
	p.conns = make(map[string]*grpc.ClientConn)
	p.closed = true
	p.mu.Unlock()
	var errs []error
	for addr, cc := range conns {
		if err := cc.Close(); err != nil {
			errs = append(errs, fmt.Errorf("close %s: %w", addr, err))
		}
	}
	return errors.Join(errs...)
}
