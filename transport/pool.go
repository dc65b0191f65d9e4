package transport

import (
	"errors"
	"fmt"
	"sync"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/credentials/insecure"
)

// ErrPoolClosed is returned by Pool.Get after Pool.Close.
var ErrPoolClosed = errors.New("transport: connection pool closed")

// Pool holds one *grpc.ClientConn per target address ("host:port"), created
// lazily on first use and shared by every user on the node: the Raft
// transport of every group and request forwarding. A grpc.ClientConn
// reconnects by itself, so a connection is kept until Close.
//
// Connections use insecure transport credentials unless the pool was made
// by NewSecurePool; options given to NewPool are appended after that
// default (a later grpc.WithTransportCredentials overrides it).
type Pool struct {
	opts  []grpc.DialOption
	creds PeerCredentials // nil: insecure (opts has it)
	// names: address -> the node id known to live there (NotePeer), read
	// by the credentials at each handshake.
	names sync.Map

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

// PeerCredentials makes the transport credentials of the connection to
// addr. node reports, at each handshake, the id of the node known to live
// at addr ("" when unknown), so that the credentials can verify it.
type PeerCredentials func(addr string, node func() string) credentials.TransportCredentials

// NewSecurePool returns an empty pool whose connection to each address
// uses creds(addr, ...) (mutual TLS between nodes), and opts.
func NewSecurePool(creds PeerCredentials, opts ...grpc.DialOption) *Pool {
	return &Pool{opts: opts, creds: creds, conns: make(map[string]*grpc.ClientConn)}
}

// NotePeer records that node id lives at addr (Raft gives both with every
// message, a shard's leader is known by both). Empty values are ignored;
// the last note wins, so an address taken over by another node is
// verified for the new one at its next handshake.
func (p *Pool) NotePeer(addr, id string) {
	if addr == "" || id == "" {
		return
	}
	if v, ok := p.names.Load(addr); ok && v.(string) == id {
		return
	}
	p.names.Store(addr, id)
}

// PeerName is the node id last noted at addr, or "".
func (p *Pool) PeerName(addr string) string {
	if v, ok := p.names.Load(addr); ok {
		return v.(string)
	}
	return ""
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
	opts := p.opts
	if p.creds != nil {
		opts = append([]grpc.DialOption{grpc.WithTransportCredentials(p.creds(addr, func() string { return p.PeerName(addr) }))}, p.opts...)
	}
	cc, err := grpc.NewClient(addr, opts...)
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
