package cluster

import (
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/keepalive"
)

// maxMsgSize bounds one gRPC message both ways (snapshot chunks and bulk
// submits are the large ones).
const maxMsgSize = 64 << 20

// clientPingFloor is the least interval at which a node lets a client ping
// it. grpc-go clients never ping more often than every 10 s (it raises a
// lower setting), so this admits every client that uses the defaults and
// still closes, with GOAWAY "too_many_pings", a peer that floods pings.
const clientPingFloor = 5 * time.Second

// serverOptions are the node's gRPC server options: message size limits
// and, when Keepalive is on, server-side pings that close a connection whose
// peer stopped answering (see Config.Keepalive).
func (c Config) serverOptions() []grpc.ServerOption {
	opts := []grpc.ServerOption{grpc.MaxRecvMsgSize(maxMsgSize), grpc.MaxSendMsgSize(maxMsgSize)}
	if c.Keepalive > 0 {
		opts = append(opts,
			grpc.KeepaliveParams(keepalive.ServerParameters{Time: c.Keepalive, Timeout: c.KeepaliveTimeout}),
			grpc.KeepaliveEnforcementPolicy(keepalive.EnforcementPolicy{MinTime: clientPingFloor, PermitWithoutStream: true}))
	}
	return opts
}

// peerDialOptions are the options of the node's connections to other nodes
// (Raft, forwarding, LeaseFor): they ping a quiet connection like the
// server side does, so a peer that vanished without closing its sockets is
// noticed in seconds and the next call reconnects.
func (c Config) peerDialOptions() []grpc.DialOption {
	if c.Keepalive <= 0 {
		return nil
	}
	return []grpc.DialOption{grpc.WithKeepaliveParams(keepalive.ClientParameters{
		Time: c.Keepalive, Timeout: c.KeepaliveTimeout, PermitWithoutStream: true})}
}
