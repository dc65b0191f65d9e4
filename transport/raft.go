package transport

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"sync"
	"sync/atomic"
	"time"

	"github.com/hashicorp/raft"
	"google.golang.org/grpc"

	"github.com/hodei-io/hodei/proto/internalpb"
)

// Defaults of RaftConfig.
const (
	DefaultRaftTimeout         = 10 * time.Second
	DefaultRaftSnapshotTimeout = 5 * time.Minute

	// pipelineWindow bounds the AppendEntries in flight on one pipeline.
	pipelineWindow = 128
	// snapshotChunkSize is the data carried by one InstallSnapshot message.
	snapshotChunkSize = 256 << 10
	// MaxRaftMessageSize is the receive limit servers hosting Raft should
	// set (see ServerOptions): one AppendEntries carries up to
	// raft.Config.MaxAppendEntries entries, which can exceed gRPC's 4 MiB
	// default when commands are batched.
	MaxRaftMessageSize = 64 << 20
)

// ErrDropped is returned by outgoing RPCs that the drop filter (see
// RaftNetwork.SetDropFilter) refused.
var ErrDropped = errors.New("transport: raft rpc dropped by filter")

// ServerOptions returns the grpc.ServerOptions a server that hosts Raft
// should be created with (a receive limit large enough for big AppendEntries).
func ServerOptions() []grpc.ServerOption {
	return []grpc.ServerOption{grpc.MaxRecvMsgSize(MaxRaftMessageSize)}
}

// RaftConfig configures a RaftNetwork.
type RaftConfig struct {
	// LocalAddr is this node's gRPC address ("host:port"), its Raft
	// ServerAddress in every group.
	LocalAddr string
	// Timeout is the deadline of each unary RPC and of each pipelined
	// AppendEntries response. Default DefaultRaftTimeout.
	Timeout time.Duration
	// SnapshotTimeout is the deadline of a whole InstallSnapshot stream.
	// Default DefaultRaftSnapshotTimeout.
	SnapshotTimeout time.Duration
	// Logger defaults to slog.Default().
	Logger *slog.Logger
}

// RaftTransport is the raft.Transport of one group, as handed out by
// RaftNetwork.Transport.
type RaftTransport interface {
	raft.Transport
	raft.WithClose
	raft.WithPreVote
}

// RaftNetwork owns the internal RaftTransport gRPC service of one node and
// hands out one raft.Transport per Raft group. Every group's traffic to a peer
// uses the single pooled connection to that peer; every message names its
// group.
type RaftNetwork struct {
	cfg  RaftConfig
	pool *Pool
	log  *slog.Logger

	drop atomic.Pointer[func(raft.ServerAddress) bool]

	mu     sync.Mutex
	groups map[uint32]*groupTransport
	closed bool
}

// NewRaftNetwork returns a network sending through pool. Call Register on
// the node's grpc.Server to receive.
func NewRaftNetwork(cfg RaftConfig, pool *Pool) *RaftNetwork {
	if cfg.Timeout <= 0 {
		cfg.Timeout = DefaultRaftTimeout
	}
	if cfg.SnapshotTimeout <= 0 {
		cfg.SnapshotTimeout = DefaultRaftSnapshotTimeout
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.Default()
	}
	return &RaftNetwork{
		cfg:    cfg,
		pool:   pool,
		log:    cfg.Logger.With("component", "raft-transport", "local", cfg.LocalAddr),
		groups: make(map[uint32]*groupTransport),
	}
}

// Register registers the internal RaftTransport service on s.
func (n *RaftNetwork) Register(s *grpc.Server) {
	internalpb.RegisterRaftTransportServer(s, &raftService{net: n})
}

// Transport returns the transport of group, creating it if the group has
// none or its previous transport was closed (so a group can be restarted).
// Give it to exactly one raft.Raft: raft.Raft.Shutdown closes it (raft
// calls WithClose), which unregisters the group, so peers then get
// UNAVAILABLE "unknown raft group N". After RaftNetwork.Close it returns a
// closed transport.
func (n *RaftNetwork) Transport(group uint32) RaftTransport {
	n.mu.Lock()
	defer n.mu.Unlock()
	if g, ok := n.groups[group]; ok {
		return g
	}
	g := newGroupTransport(n, group)
	if n.closed {
		g.closeLocked()
		return g
	}
	n.groups[group] = g
	return g
}

// Close closes every group's transport. It is idempotent; it does not close
// the pool, which the caller owns.
func (n *RaftNetwork) Close() error {
	n.mu.Lock()
	n.closed = true
	groups := make([]*groupTransport, 0, len(n.groups))
	for _, g := range n.groups {
		groups = append(groups, g)
	}
	n.mu.Unlock()
	for _, g := range groups {
		_ = g.Close()
	}
	return nil
}

// SetDropFilter installs a fault-injection hook for tests; nil removes it.
// While installed, every outgoing RPC of every group whose target matches
// fails with ErrDropped (open pipelines to it fail on their next message),
// and every incoming RPC whose sender address (RPCHeader.Addr) matches is
// refused with UNAVAILABLE. A filter matching every address therefore
// isolates the node; one matching a peer partitions the pair in both
// directions as long as the peer uses the same filter or the peer's packets
// carry its address (hashicorp/raft always sets RPCHeader.Addr).
func (n *RaftNetwork) SetDropFilter(f func(target raft.ServerAddress) bool) {
	if f == nil {
		n.drop.Store(nil)
		return
	}
	n.drop.Store(&f)
}

func (n *RaftNetwork) dropped(addr raft.ServerAddress) bool {
	f := n.drop.Load()
	return f != nil && (*f)(addr)
}

// lookup returns the open transport of group, or nil.
func (n *RaftNetwork) lookup(group uint32) *groupTransport {
	n.mu.Lock()
	defer n.mu.Unlock()
	return n.groups[group]
}

func (n *RaftNetwork) forget(g *groupTransport) {
	if cur, ok := n.groups[g.group]; ok && cur == g {
		delete(n.groups, g.group)
	}
}

// groupTransport is the raft.Transport of one group.
type groupTransport struct {
	net   *RaftNetwork
	group uint32

	consumeCh chan raft.RPC

	hbMu sync.Mutex
	hbFn func(raft.RPC)
	// hbGate, if set (HeartbeatGuard), decides which heartbeats may take
	// raft's fast path; the others go through consumeCh.
	hbGate atomic.Pointer[func(*raft.AppendEntriesRequest) bool]

	// ctx is cancelled on Close: it bounds every outgoing RPC and tells
	// incoming handlers to give up.
	ctx    context.Context
	cancel context.CancelFunc

	mu        sync.Mutex
	closed    bool
	pipelines map[*pipeline]struct{}
}

var _ RaftTransport = (*groupTransport)(nil)

func newGroupTransport(n *RaftNetwork, group uint32) *groupTransport {
	ctx, cancel := context.WithCancel(context.Background())
	return &groupTransport{
		net:       n,
		group:     group,
		consumeCh: make(chan raft.RPC),
		ctx:       ctx,
		cancel:    cancel,
		pipelines: make(map[*pipeline]struct{}),
	}
}

// Consumer implements raft.Transport.
func (g *groupTransport) Consumer() <-chan raft.RPC { return g.consumeCh }

// LocalAddr implements raft.Transport.
func (g *groupTransport) LocalAddr() raft.ServerAddress {
	return raft.ServerAddress(g.net.cfg.LocalAddr)
}

// EncodePeer implements raft.Transport.
func (g *groupTransport) EncodePeer(_ raft.ServerID, addr raft.ServerAddress) []byte {
	return []byte(addr)
}

// DecodePeer implements raft.Transport.
func (g *groupTransport) DecodePeer(buf []byte) raft.ServerAddress { return raft.ServerAddress(buf) }

// SetHeartbeatHandler implements raft.Transport.
func (g *groupTransport) SetHeartbeatHandler(cb func(rpc raft.RPC)) {
	g.hbMu.Lock()
	g.hbFn = cb
	g.hbMu.Unlock()
}

func (g *groupTransport) heartbeatFn() func(raft.RPC) {
	g.hbMu.Lock()
	defer g.hbMu.Unlock()
	return g.hbFn
}

// Close implements raft.WithClose: incoming RPCs of the group are refused
// with UNAVAILABLE, outgoing ones and pipelines are cancelled. Idempotent.
func (g *groupTransport) Close() error {
	g.net.mu.Lock()
	g.net.forget(g)
	g.net.mu.Unlock()
	g.closeLocked()
	return nil
}

// closeLocked closes g (it takes only g.mu, so callers may hold g.net.mu).
func (g *groupTransport) closeLocked() {
	g.mu.Lock()
	if g.closed {
		g.mu.Unlock()
		return
	}
	g.closed = true
	g.cancel()
	pipes := make([]*pipeline, 0, len(g.pipelines))
	for p := range g.pipelines {
		pipes = append(pipes, p)
	}
	g.mu.Unlock()
	for _, p := range pipes {
		_ = p.Close()
	}
}

func (g *groupTransport) isClosed() bool {
	g.mu.Lock()
	defer g.mu.Unlock()
	return g.closed
}

// client returns the stub to target, or why none can be used. id is the
// Raft server id raft gives with the target: the pool remembers it, so
// that with TLS the connection to target verifies that the node there
// presents that node's certificate (Pool.NotePeer).
func (g *groupTransport) client(id raft.ServerID, target raft.ServerAddress) (internalpb.RaftTransportClient, error) {
	if g.isClosed() {
		return nil, raft.ErrTransportShutdown
	}
	if g.net.dropped(target) {
		return nil, ErrDropped
	}
	g.net.pool.NotePeer(string(target), string(id))
	cc, err := g.net.pool.Get(string(target))
	if err != nil {
		return nil, err
	}
	return internalpb.NewRaftTransportClient(cc), nil
}

func (g *groupTransport) rpcErr(op string, target raft.ServerAddress, err error) error {
	if g.isClosed() {
		return raft.ErrTransportShutdown
	}
	return fmt.Errorf("raft group %d: %s to %s: %w", g.group, op, target, err)
}

// AppendEntries implements raft.Transport.
func (g *groupTransport) AppendEntries(id raft.ServerID, target raft.ServerAddress, args *raft.AppendEntriesRequest, resp *raft.AppendEntriesResponse) error {
	c, err := g.client(id, target)
	if err != nil {
		return err
	}
	ctx, cancel := context.WithTimeout(g.ctx, g.net.cfg.Timeout)
	defer cancel()
	out, err := c.AppendEntries(ctx, appendReqToPB(g.group, args))
	if err != nil {
		return g.rpcErr("AppendEntries", target, err)
	}
	appendRespFromPB(out, resp)
	return nil
}

// RequestVote implements raft.Transport.
func (g *groupTransport) RequestVote(id raft.ServerID, target raft.ServerAddress, args *raft.RequestVoteRequest, resp *raft.RequestVoteResponse) error {
	c, err := g.client(id, target)
	if err != nil {
		return err
	}
	ctx, cancel := context.WithTimeout(g.ctx, g.net.cfg.Timeout)
	defer cancel()
	out, err := c.RequestVote(ctx, voteReqToPB(g.group, args))
	if err != nil {
		return g.rpcErr("RequestVote", target, err)
	}
	voteRespFromPB(out, resp)
	return nil
}

// RequestPreVote implements raft.WithPreVote.
func (g *groupTransport) RequestPreVote(id raft.ServerID, target raft.ServerAddress, args *raft.RequestPreVoteRequest, resp *raft.RequestPreVoteResponse) error {
	c, err := g.client(id, target)
	if err != nil {
		return err
	}
	ctx, cancel := context.WithTimeout(g.ctx, g.net.cfg.Timeout)
	defer cancel()
	out, err := c.RequestPreVote(ctx, preVoteReqToPB(g.group, args))
	if err != nil {
		return g.rpcErr("RequestPreVote", target, err)
	}
	preVoteRespFromPB(out, resp)
	return nil
}

// TimeoutNow implements raft.Transport.
func (g *groupTransport) TimeoutNow(id raft.ServerID, target raft.ServerAddress, args *raft.TimeoutNowRequest, resp *raft.TimeoutNowResponse) error {
	c, err := g.client(id, target)
	if err != nil {
		return err
	}
	ctx, cancel := context.WithTimeout(g.ctx, g.net.cfg.Timeout)
	defer cancel()
	out, err := c.TimeoutNow(ctx, &internalpb.RaftTimeoutNowRequest{Group: g.group, Header: headerToPB(args.RPCHeader)})
	if err != nil {
		return g.rpcErr("TimeoutNow", target, err)
	}
	*resp = raft.TimeoutNowResponse{RPCHeader: headerFromPB(out.GetHeader())}
	return nil
}

// InstallSnapshot implements raft.Transport. The request header travels in
// the first message, the data in chunks of snapshotChunkSize; data is read
// to EOF, or the stream is cancelled and the follower discards the snapshot.
func (g *groupTransport) InstallSnapshot(id raft.ServerID, target raft.ServerAddress, args *raft.InstallSnapshotRequest, resp *raft.InstallSnapshotResponse, data io.Reader) error {
	c, err := g.client(id, target)
	if err != nil {
		return err
	}
	ctx, cancel := context.WithTimeout(g.ctx, g.net.cfg.SnapshotTimeout)
	defer cancel()
	stream, err := c.InstallSnapshot(ctx)
	if err != nil {
		return g.rpcErr("InstallSnapshot", target, err)
	}
	buf := make([]byte, snapshotChunkSize)
	first := &internalpb.RaftSnapshotChunk{Request: snapReqToPB(g.group, args)}
	var sent int64
	for {
		n, rerr := io.ReadFull(data, buf)
		if rerr != nil && rerr != io.EOF && rerr != io.ErrUnexpectedEOF {
			return g.rpcErr("InstallSnapshot", target, fmt.Errorf("read snapshot: %w", rerr))
		}
		if n > 0 || first != nil {
			msg := first
			if msg == nil {
				msg = &internalpb.RaftSnapshotChunk{}
			}
			first = nil
			msg.Data = buf[:n]
			if err := stream.Send(msg); err != nil {
				// The real error comes from CloseAndRecv.
				_, err = stream.CloseAndRecv()
				return g.rpcErr("InstallSnapshot", target, err)
			}
			sent += int64(n)
		}
		if rerr != nil { // EOF
			break
		}
		if g.net.dropped(target) {
			return ErrDropped
		}
	}
	if sent != args.Size {
		return g.rpcErr("InstallSnapshot", target, fmt.Errorf("snapshot is %d bytes, header says %d", sent, args.Size))
	}
	out, err := stream.CloseAndRecv()
	if err != nil {
		return g.rpcErr("InstallSnapshot", target, err)
	}
	*resp = raft.InstallSnapshotResponse{
		RPCHeader: headerFromPB(out.GetHeader()),
		Term:      out.GetTerm(),
		Success:   out.GetSuccess(),
	}
	return nil
}

// AppendEntriesPipeline implements raft.Transport.
func (g *groupTransport) AppendEntriesPipeline(id raft.ServerID, target raft.ServerAddress) (raft.AppendPipeline, error) {
	c, err := g.client(id, target)
	if err != nil {
		return nil, err
	}
	ctx, cancel := context.WithCancel(g.ctx)
	stream, err := c.AppendEntriesPipeline(ctx)
	if err != nil {
		cancel()
		return nil, g.rpcErr("AppendEntriesPipeline", target, err)
	}
	p := newPipeline(g, target, stream, cancel)
	g.mu.Lock()
	closed := g.closed
	if !closed {
		g.pipelines[p] = struct{}{}
	}
	g.mu.Unlock()
	if closed {
		_ = p.Close()
		return nil, raft.ErrTransportShutdown
	}
	return p, nil
}

func (g *groupTransport) removePipeline(p *pipeline) {
	g.mu.Lock()
	delete(g.pipelines, p)
	g.mu.Unlock()
}
