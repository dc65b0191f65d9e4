package transport

import (
	"context"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/hodei-io/hodei/proto/hodeiv1"
)

// AuthBackend serves AuthService and the job lookups of the tenant checks
// (issue 12); the cluster implements it. Tokens live in the meta group:
// CreateToken, RevokeToken and ListTokens run on its leader (the backend
// reaches it).
type AuthBackend interface {
	CreateToken(ctx context.Context, req *hodeiv1.TokenCreateRequest) (*hodeiv1.TokenCreateResponse, error)
	ListTokens(ctx context.Context, includeRevoked bool) ([]*hodeiv1.TokenInfo, error)
	RevokeToken(ctx context.Context, id string) (*hodeiv1.TokenInfo, error)
	// JobTenant is the tenant of job id in this node's replica of shard.
	JobTenant(shard uint32, id string) (string, bool)
}

// SetAuth serves AuthService over b and lets the handlers look up the
// tenant of jobs. Without it AuthService is not registered.
func (a *API) SetAuth(b AuthBackend) { a.auth = b }

// IsForwarded reports whether ctx is a call forwarded by another node
// (x-hodei-forwarded): such a call must be served here, never forwarded again.
func IsForwarded(ctx context.Context) bool { return isForwarded(ctx) }

// Pinned returns ctx for a node-to-node call forwarded to, and pinned to,
// group g's leader.
func Pinned(ctx context.Context, g uint32) context.Context { return forwardCtx(ctx, g) }

// AsNode returns ctx without its caller: a call made with it carries this
// node's own credential. For the node's own calls made while serving a
// caller that must not depend on the caller's token being known there
// (probing a joining node, whose meta replica is still empty).
func AsNode(ctx context.Context) context.Context {
	return context.WithValue(ctx, callerKey{}, &caller{})
}

type authService struct {
	hodeiv1.UnimplementedAuthServiceServer
	a *API
}

func (s *authService) CreateToken(ctx context.Context, req *hodeiv1.TokenCreateRequest) (*hodeiv1.TokenCreateResponse, error) {
	resp, err := s.a.auth.CreateToken(ctx, req)
	if err != nil {
		return nil, ToStatus(err)
	}
	return resp, nil
}

func (s *authService) ListTokens(ctx context.Context, req *hodeiv1.TokenListRequest) (*hodeiv1.TokenListResponse, error) {
	list, err := s.a.auth.ListTokens(ctx, req.GetIncludeRevoked())
	if err != nil {
		return nil, ToStatus(err)
	}
	return &hodeiv1.TokenListResponse{Tokens: list}, nil
}

func (s *authService) RevokeToken(ctx context.Context, req *hodeiv1.TokenRevokeRequest) (*hodeiv1.TokenRevokeResponse, error) {
	if req.GetId() == "" {
		return nil, invalid("id is required")
	}
	t, err := s.a.auth.RevokeToken(ctx, req.GetId())
	if err != nil {
		return nil, ToStatus(err)
	}
	return &hodeiv1.TokenRevokeResponse{Token: t}, nil
}

// ForwardAuth sends an AuthService call to the meta group's leader at addr,
// pinned to group g; the caller's token goes with it (Auth.outgoing), and
// the leader checks it again.
func ForwardAuth[R any](ctx context.Context, pool *Pool, addr string, g uint32, call func(context.Context, hodeiv1.AuthServiceClient) (R, error)) (R, error) {
	var zero R
	cc, err := pool.Get(addr)
	if err != nil {
		return zero, status.Errorf(codes.Unavailable, "connect to meta leader %s: %v", addr, err)
	}
	r, err := call(forwardCtx(ctx, g), hodeiv1.NewAuthServiceClient(cc))
	if err != nil {
		return zero, forwardErr(err)
	}
	return r, nil
}
