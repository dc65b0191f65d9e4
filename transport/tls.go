package transport

import (
	"context"
	"strings"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/peer"
	"google.golang.org/grpc/status"

	"github.com/hodei-io/hodei/proto/hodeiv1"
	"github.com/hodei-io/hodei/proto/internalpb"
	"github.com/hodei-io/hodei/transport/tlsutil"
)

// PeerIdentity returns the identity in the verified client certificate of
// the connection ctx's call arrived on (a node's listener verifies every
// client certificate when TLS is on); false without TLS or without a
// verified certificate. Interceptors and handlers use it to know whether
// the caller is a node (Identity.IsServer) and who it is.
func PeerIdentity(ctx context.Context) (tlsutil.Identity, bool) {
	p, ok := peer.FromContext(ctx)
	if !ok || p.AuthInfo == nil {
		return tlsutil.Identity{}, false
	}
	info, ok := p.AuthInfo.(credentials.TLSInfo)
	if !ok {
		return tlsutil.Identity{}, false
	}
	return tlsutil.IdentityFromState(info.State)
}

// NodeOnlyMethods are the RPCs only nodes make to each other: every Raft
// message, the dispatcher's LeaseFor and the per-group snapshot calls of
// SnapshotSave/SnapshotRestore. With TLS on they need a caller whose
// certificate has the server role: a client certificate (a CLI, a worker)
// must not be able to inject Raft messages or lease on behalf of a node.
// A name ending in "/" is a whole service.
var NodeOnlyMethods = []string{
	"/" + internalpb.RaftTransport_ServiceDesc.ServiceName + "/",
	hodeiv1.WorkerService_LeaseFor_FullMethodName,
	hodeiv1.AdminService_SnapshotGroup_FullMethodName,
	hodeiv1.AdminService_RestoreGroup_FullMethodName,
}

// IsNodeOnly reports whether fullMethod is one of NodeOnlyMethods.
func IsNodeOnly(fullMethod string) bool {
	for _, m := range NodeOnlyMethods {
		if fullMethod == m || (strings.HasSuffix(m, "/") && strings.HasPrefix(fullMethod, m)) {
			return true
		}
	}
	return false
}

// requireNode refuses a node-only call from a caller without the server
// role: Unauthenticated without a verified certificate, PermissionDenied
// with a client certificate.
func requireNode(ctx context.Context, method string) error {
	if !IsNodeOnly(method) {
		return nil
	}
	id, ok := PeerIdentity(ctx)
	if !ok {
		return status.Errorf(codes.Unauthenticated, "%s is for nodes only: no verified certificate", method)
	}
	if !id.IsServer() {
		return status.Errorf(codes.PermissionDenied, "%s is for nodes only: certificate %q has no server role", method, id.Name)
	}
	return nil
}

// NodeOnlyUnary and NodeOnlyStream are the server interceptors of a node
// with TLS on that enforce NodeOnlyMethods.
func NodeOnlyUnary(ctx context.Context, req any, info *grpc.UnaryServerInfo, h grpc.UnaryHandler) (any, error) {
	if err := requireNode(ctx, info.FullMethod); err != nil {
		return nil, err
	}
	return h(ctx, req)
}

// NodeOnlyStream: see NodeOnlyUnary.
func NodeOnlyStream(srv any, ss grpc.ServerStream, info *grpc.StreamServerInfo, h grpc.StreamHandler) error {
	if err := requireNode(ss.Context(), info.FullMethod); err != nil {
		return err
	}
	return h(srv, ss)
}

// ServerTLS returns the server credentials of a node (mutual TLS: the
// reloader's current certificate, client certificates of its CA bundle
// required) and the interceptors that keep node-only RPCs to nodes.
func ServerTLS(r *tlsutil.Reloader) []grpc.ServerOption {
	return []grpc.ServerOption{
		grpc.Creds(credentials.NewTLS(r.ServerConfig())),
		grpc.ChainUnaryInterceptor(NodeOnlyUnary),
		grpc.ChainStreamInterceptor(NodeOnlyStream),
	}
}

// PeerTLS returns the PeerCredentials of a node's pool: it presents the
// node's certificate and verifies that the peer has the server role and,
// when the pool knows which node lives at the address, that node's name.
func PeerTLS(r *tlsutil.Reloader) PeerCredentials {
	return func(_ string, node func() string) credentials.TransportCredentials {
		return credentials.NewTLS(r.ClientConfig(node))
	}
}
