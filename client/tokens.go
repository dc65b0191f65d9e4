package client

import (
	"context"
	"errors"
	"fmt"
	"strings"

	"google.golang.org/grpc"

	"github.com/hodei-io/hodei/proto/hodeiv1"
)

// bearer sends a token as `authorization: Bearer <token>` on every call.
// It does not require transport security: with TLS off the token travels in
// the clear, which docs/security.md says (TLS is the other half of issue 12).
type bearer string

func (b bearer) GetRequestMetadata(context.Context, ...string) (map[string]string, error) {
	return map[string]string{"authorization": "Bearer " + string(b)}, nil
}

func (bearer) RequireTransportSecurity() bool { return false }

// maxTokenBytes is the most a node looks at (transport.MaxBearerBytes
// minus "Bearer ").
const maxTokenBytes = 1024 - len("Bearer ")

// validToken checks that a token can be sent as a header value; the node
// checks its form.
func validToken(t string) error {
	if len(t) > maxTokenBytes {
		return fmt.Errorf("client: token is %d bytes, limit %d", len(t), maxTokenBytes)
	}
	if strings.ContainsAny(t, " \t\r\n") {
		return errors.New("client: token contains white space (a file's trailing newline?)")
	}
	return nil
}

// CreateToken creates a token with these roles ("admin",
// "tenant:<name>:submit", "tenant:<name>:read", "worker",
// "worker:tenants=a,b;kinds=x"); ttlMs 0 = no expiry. The reply carries the
// whole bearer token in Secret: it is shown once and not stored. Admin only.
// A retry after a lost reply may create a second token (list and revoke it).
func (c *Client) CreateToken(ctx context.Context, name string, roles []string, ttlMs int64) (*hodeiv1.TokenCreateResponse, error) {
	var resp *hodeiv1.TokenCreateResponse
	err := c.invoke(ctx, c.cfg.CallTimeout, "", func(ctx context.Context, cc *grpc.ClientConn) error {
		r, err := hodeiv1.NewAuthServiceClient(cc).CreateToken(ctx, &hodeiv1.TokenCreateRequest{Name: name, Roles: roles, TtlMs: ttlMs})
		resp = r
		return err
	})
	return resp, err
}

// ListTokens lists the tokens (never their secrets), sorted by id. Admin only.
func (c *Client) ListTokens(ctx context.Context, includeRevoked bool) ([]*hodeiv1.TokenInfo, error) {
	var resp *hodeiv1.TokenListResponse
	err := c.invoke(ctx, c.cfg.CallTimeout, "", func(ctx context.Context, cc *grpc.ClientConn) error {
		r, err := hodeiv1.NewAuthServiceClient(cc).ListTokens(ctx, &hodeiv1.TokenListRequest{IncludeRevoked: includeRevoked})
		resp = r
		return err
	})
	return resp.GetTokens(), err
}

// RevokeToken revokes a token by id; revoking a revoked token is a no-op.
// Each node refuses the token once its meta replica applied the revocation;
// the call returns once every reachable member did (waiting at most 3 s).
// Admin only.
func (c *Client) RevokeToken(ctx context.Context, id string) (*hodeiv1.TokenInfo, error) {
	var resp *hodeiv1.TokenRevokeResponse
	err := c.invoke(ctx, c.cfg.CallTimeout, "", func(ctx context.Context, cc *grpc.ClientConn) error {
		r, err := hodeiv1.NewAuthServiceClient(cc).RevokeToken(ctx, &hodeiv1.TokenRevokeRequest{Id: id})
		resp = r
		return err
	})
	return resp.GetToken(), err
}
