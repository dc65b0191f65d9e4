package transport

// Authentication and authorization of every RPC a node serves (issue 12).
//
// A caller is one of:
//   - a bearer token (`authorization: Bearer hodei_<id>_<secret>`), verified
//     by the TokenVerifier against this node's replica of the meta group;
//   - a node of the cluster, recognised by the NodePeer hook (mTLS: the
//     peer's verified certificate carries the server role; wired by the TLS
//     work) or by the cluster's shared node credential (x-hodei-node-auth).
//
// A call carrying a bearer token is always judged as that token, also when
// it comes from another node (forwarding carries the caller's token, see
// outgoing), so a node never lends its own identity to a caller. The
// interceptors check the method's Rule (auth_rules.go); tenant-scoped rules
// are narrowed by the handlers, which know the tenant of the request or of
// the job it names (auth_tenant.go).

import (
	"context"
	"crypto/subtle"
	"log/slog"
	"net"
	"sort"
	"strings"
	"sync"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/peer"
	"google.golang.org/grpc/status"
)

const (
	mdAuthorization = "authorization"
	mdNodeID        = "x-hodei-node"
	mdNodeAuth      = "x-hodei-node-auth"
	// MaxBearerBytes bounds the authorization header a node looks at; a
	// longer one is refused before any parsing.
	MaxBearerBytes = 1024
)

// Principal is a verified caller. It is shared by the calls of one token
// (the verifier caches it): never change it.
type Principal struct {
	TokenID   string // the token's id ("" for a node)
	TokenName string
	NodeID    string // a node of the cluster ("" for a token)
	Admin     bool
	Submit    map[string]struct{} // tenants it may submit to (and read)
	Read      map[string]struct{} // tenants it may read (Submit's included)
	Worker    bool
	// WorkerTenants and WorkerKinds limit a worker role; nil = no limit.
	// Both sorted.
	WorkerTenants []string
	WorkerKinds   []string
}

// Who names the caller for logs and audit records (never a secret).
func (p *Principal) Who() string {
	switch {
	case p == nil:
		return "anonymous"
	case p.NodeID != "":
		return "node " + p.NodeID
	}
	return "token " + p.TokenID + " (" + p.TokenName + ")"
}

// IsNode reports whether p is a node of the cluster.
func (p *Principal) IsNode() bool { return p != nil && p.NodeID != "" }

func normTenant(t string) string {
	if t == "" {
		return "default"
	}
	return t
}

// CanSubmit reports whether p may write tenant t's jobs and schedules.
func (p *Principal) CanSubmit(t string) bool {
	if p.Admin {
		return true
	}
	_, ok := p.Submit[normTenant(t)]
	return ok
}

// CanRead reports whether p may read tenant t's jobs, logs and schedules.
func (p *Principal) CanRead(t string) bool {
	if p.Admin {
		return true
	}
	t = normTenant(t)
	if _, ok := p.Read[t]; ok {
		return true
	}
	_, ok := p.Submit[t]
	return ok
}

// CanWork reports whether p, as a worker, may lease and complete tenant
// t's jobs. A node may (it acts for workers it checked itself).
func (p *Principal) CanWork(t string) bool {
	if p.Admin || p.IsNode() {
		return true
	}
	if !p.Worker {
		return false
	}
	if p.WorkerTenants == nil {
		return true
	}
	t = normTenant(t)
	i := sort.SearchStrings(p.WorkerTenants, t)
	return i < len(p.WorkerTenants) && p.WorkerTenants[i] == t
}

// passes reports whether p satisfies rule r (before tenant narrowing).
func (p *Principal) passes(r Rule) bool {
	if p.IsNode() {
		return r.Need == NeedNode || r.Node
	}
	switch r.Need {
	case NeedPublic, NeedAny:
		return true
	case NeedNode:
		return false
	}
	if p.Admin {
		return true
	}
	switch r.Need {
	case NeedSubmit:
		return len(p.Submit) > 0
	case NeedRead:
		return len(p.Submit) > 0 || len(p.Read) > 0
	case NeedWorker:
		return p.Worker
	}
	return false
}

// TokenVerifier verifies bearer tokens; the cluster implements it over its
// meta replica. Errors say why without the secret ("malformed", "unknown",
// "revoked", "expired") and are answered Unauthenticated.
type TokenVerifier interface {
	VerifyToken(token string) (*Principal, error)
}

// AuthConfig configures the interceptors.
type AuthConfig struct {
	// Enabled turns authentication on; off, every call is let through
	// and PrincipalFrom returns nil (the handlers then narrow nothing).
	Enabled bool
	Tokens  TokenVerifier
	// NodeID and NodeSecret are this node's credential on calls it makes
	// on its own behalf, and the secret it accepts from other nodes. Empty
	// NodeSecret: only NodePeer recognises nodes.
	NodeID     string
	NodeSecret string
	// NodePeer is the mTLS hook: it reports whether the peer of ctx
	// authenticated as a node of the cluster (a verified server
	// certificate), and which. nil without TLS.
	NodePeer func(ctx context.Context) (nodeID string, ok bool)
	// Audit, if set, is called once per client call of an audited method
	// (AuditedMethods; not for node-to-node forwarded calls) when it ends,
	// with the caller (nil: auth off or refused before it was known), the
	// request of a unary call (nil for streams), the reply and the error.
	// It runs with auth on and off.
	Audit  func(ctx context.Context, method string, p *Principal, req, resp any, err error)
	Logger *slog.Logger
}

// AuditedMethods are the admin actions recorded by AuthConfig.Audit.
var AuditedMethods = map[string]string{
	"/hodei.v1.AdminService/Join":            "join",
	"/hodei.v1.AdminService/Remove":          "remove",
	"/hodei.v1.AdminService/TransferLeader":  "transfer_leader",
	"/hodei.v1.AdminService/SnapshotSave":    "snapshot_save",
	"/hodei.v1.AdminService/SnapshotRestore": "snapshot_restore",
	"/hodei.v1.AdminService/SetTenant":       "tenant_set",
	"/hodei.v1.AuthService/CreateToken":      "token_create",
	"/hodei.v1.AuthService/RevokeToken":      "token_revoke",
}

// Auth holds the interceptors of one node.
type Auth struct {
	cfg AuthConfig
	log *slog.Logger

	// Refusal log lines are folded: one line per (caller, method, peer
	// host) per refusalLogEvery, with the number folded into it, so that a
	// misconfigured node retrying Raft heartbeats cannot flood the log.
	rmu      sync.Mutex
	refusals map[string]*refusalLog
}

type refusalLog struct {
	last       time.Time
	suppressed int
}

const (
	refusalLogEvery = 10 * time.Second
	maxRefusalKeys  = 1024
)

// logRefusal logs a refused call unless the same one was logged recently.
func (a *Auth) logRefusal(method, who, from string, err error) {
	host := from
	if h, _, e := net.SplitHostPort(from); e == nil {
		host = h
	}
	key := who + "|" + method + "|" + host
	now := time.Now()
	a.rmu.Lock()
	r := a.refusals[key]
	if r == nil {
		if len(a.refusals) >= maxRefusalKeys {
			clear(a.refusals)
		}
		r = &refusalLog{}
		a.refusals[key] = r
	} else if now.Sub(r.last) < refusalLogEvery {
		r.suppressed++
		a.rmu.Unlock()
		return
	}
	folded := r.suppressed
	r.last, r.suppressed = now, 0
	a.rmu.Unlock()
	a.log.Warn("auth: refused", "method", method, "caller", who, "peer", from, "err", status.Convert(err).Message(), "folded", folded)
}

// NewAuth returns the interceptors for cfg.
func NewAuth(cfg AuthConfig) *Auth {
	log := cfg.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	return &Auth{cfg: cfg, log: log, refusals: map[string]*refusalLog{}}
}

// Enabled reports whether calls are authenticated.
func (a *Auth) Enabled() bool { return a != nil && a.cfg.Enabled }

// ServerOptions are the interceptors of a node's gRPC server.
func (a *Auth) ServerOptions() []grpc.ServerOption {
	return []grpc.ServerOption{grpc.ChainUnaryInterceptor(a.UnaryInterceptor()), grpc.ChainStreamInterceptor(a.StreamInterceptor())}
}

type callerKey struct{}

// caller is what the interceptor leaves in a call's context: the verified
// principal and the bearer token it presented (to forward, never logged).
type caller struct {
	p      *Principal
	bearer string
}

// PrincipalFrom returns the verified caller of a call's context, or nil
// when auth is off (or the call is public).
func PrincipalFrom(ctx context.Context) *Principal {
	if c, ok := ctx.Value(callerKey{}).(*caller); ok {
		return c.p
	}
	return nil
}

// WithPrincipal returns ctx carrying p as its verified caller (tests and
// in-process callers; bearer is forwarded on calls made with ctx).
func WithPrincipal(ctx context.Context, p *Principal, bearer string) context.Context {
	return context.WithValue(ctx, callerKey{}, &caller{p: p, bearer: bearer})
}

func unauthenticated(reason string) error {
	return status.Error(codes.Unauthenticated, reason)
}

func permissionDenied(p *Principal, what string) error {
	return status.Errorf(codes.PermissionDenied, "%s may not %s", p.Who(), what)
}

// authenticate finds the caller of ctx. The bearer token wins over a node
// credential: a forwarded call is judged as its caller.
func (a *Auth) authenticate(ctx context.Context) (*caller, error) {
	md, _ := metadata.FromIncomingContext(ctx)
	if vals := md.Get(mdAuthorization); len(vals) > 0 {
		if len(vals) > 1 {
			return nil, unauthenticated("more than one authorization header")
		}
		v := vals[0]
		if len(v) > MaxBearerBytes {
			return nil, unauthenticated("authorization header is oversized")
		}
		scheme, tok, ok := strings.Cut(v, " ")
		if !ok || !strings.EqualFold(scheme, "bearer") || tok == "" {
			return nil, unauthenticated("authorization header must be \"Bearer <token>\"")
		}
		if a.cfg.Tokens == nil {
			return nil, unauthenticated("this node verifies no tokens")
		}
		p, err := a.cfg.Tokens.VerifyToken(tok)
		if err != nil {
			return nil, unauthenticated(err.Error())
		}
		return &caller{p: p, bearer: tok}, nil
	}
	if a.cfg.NodePeer != nil {
		if id, ok := a.cfg.NodePeer(ctx); ok {
			return &caller{p: &Principal{NodeID: id}}, nil
		}
	}
	if vals := md.Get(mdNodeAuth); len(vals) == 1 && a.cfg.NodeSecret != "" {
		if subtle.ConstantTimeCompare([]byte(vals[0]), []byte(a.cfg.NodeSecret)) == 1 {
			id := "?"
			if ids := md.Get(mdNodeID); len(ids) == 1 && ids[0] != "" && len(ids[0]) <= 256 {
				id = ids[0]
			}
			return &caller{p: &Principal{NodeID: id}}, nil
		}
		return nil, unauthenticated("bad node credential")
	}
	return nil, unauthenticated("no bearer token (authorization: Bearer <token>)")
}

// authorize checks a call of method and returns its context with the
// caller (also with a PermissionDenied error, for the audit; nil with
// other errors). Refusals are logged without the secret.
func (a *Auth) authorize(ctx context.Context, method string) (context.Context, error) {
	rule, ok := Rules[method]
	if !ok {
		a.log.Error("auth: refused a method without an authorization rule", "method", method)
		return nil, status.Errorf(codes.PermissionDenied, "%s has no authorization rule", method)
	}
	if rule.Need == NeedPublic {
		return ctx, nil
	}
	c, err := a.authenticate(ctx)
	if err == nil && !c.p.passes(rule) {
		err = permissionDenied(c.p, "call "+method+" (needs "+rule.Need.String()+")")
	}
	if err != nil {
		who := "unauthenticated"
		if c != nil {
			who = c.p.Who()
		}
		from := ""
		if pr, ok := peer.FromContext(ctx); ok && pr.Addr != nil {
			from = pr.Addr.String()
		}
		a.logRefusal(method, who, from, err)
		if c != nil { // known but not allowed: the audit records who
			return context.WithValue(ctx, callerKey{}, c), err
		}
		return nil, err
	}
	return context.WithValue(ctx, callerKey{}, c), nil
}

// UnaryInterceptor authorizes unary calls (a no-op with auth off).
func (a *Auth) UnaryInterceptor() grpc.UnaryServerInterceptor {
	return func(ctx context.Context, req any, info *grpc.UnaryServerInfo, h grpc.UnaryHandler) (resp any, err error) {
		if a.audited(ctx, info.FullMethod) {
			defer func() { a.cfg.Audit(ctx, info.FullMethod, PrincipalFrom(ctx), req, resp, err) }()
		}
		if !a.Enabled() {
			return h(ctx, req)
		}
		actx, err := a.authorize(ctx, info.FullMethod)
		if actx != nil {
			ctx = actx
		}
		if err != nil {
			return nil, err
		}
		return h(ctx, req)
	}
}

// StreamInterceptor authorizes streams once, when they open.
func (a *Auth) StreamInterceptor() grpc.StreamServerInterceptor {
	return func(srv any, ss grpc.ServerStream, info *grpc.StreamServerInfo, h grpc.StreamHandler) (err error) {
		ctx := ss.Context()
		if a.audited(ctx, info.FullMethod) {
			defer func() { a.cfg.Audit(ctx, info.FullMethod, PrincipalFrom(ctx), nil, nil, err) }()
		}
		if !a.Enabled() {
			return h(srv, ss)
		}
		actx, err := a.authorize(ss.Context(), info.FullMethod)
		if actx != nil {
			ctx = actx
		}
		if err != nil {
			return err
		}
		return h(srv, &authedStream{ServerStream: ss, ctx: ctx})
	}
}

// audited reports whether a call is an admin action to record: an
// audited method called by a client (not forwarded by another node).
func (a *Auth) audited(ctx context.Context, method string) bool {
	if a == nil || a.cfg.Audit == nil {
		return false
	}
	_, ok := AuditedMethods[method]
	return ok && !isForwarded(ctx)
}

type authedStream struct {
	grpc.ServerStream
	ctx context.Context
}

func (s *authedStream) Context() context.Context { return s.ctx }

// outgoing adds the credential of a node-to-node call: the caller's bearer
// token when ctx is a call being served for a token (forwarding: the next
// node checks the caller again), else this node's own credential.
func (a *Auth) outgoing(ctx context.Context) context.Context {
	if !a.Enabled() {
		return ctx
	}
	if md, ok := metadata.FromOutgoingContext(ctx); ok && (len(md.Get(mdAuthorization)) > 0 || len(md.Get(mdNodeAuth)) > 0) {
		return ctx
	}
	if c, ok := ctx.Value(callerKey{}).(*caller); ok && c.bearer != "" {
		return metadata.AppendToOutgoingContext(ctx, mdAuthorization, "Bearer "+c.bearer)
	}
	if a.cfg.NodeSecret != "" {
		return metadata.AppendToOutgoingContext(ctx, mdNodeID, a.cfg.NodeID, mdNodeAuth, a.cfg.NodeSecret)
	}
	return ctx // with mTLS the connection itself says this is a node
}

// DialOptions are the interceptors of a node's connections to other nodes.
func (a *Auth) DialOptions() []grpc.DialOption {
	return []grpc.DialOption{
		grpc.WithChainUnaryInterceptor(func(ctx context.Context, method string, req, reply any, cc *grpc.ClientConn, inv grpc.UnaryInvoker, opts ...grpc.CallOption) error {
			return inv(a.outgoing(ctx), method, req, reply, cc, opts...)
		}),
		grpc.WithChainStreamInterceptor(func(ctx context.Context, desc *grpc.StreamDesc, cc *grpc.ClientConn, method string, s grpc.Streamer, opts ...grpc.CallOption) (grpc.ClientStream, error) {
			return s(a.outgoing(ctx), desc, cc, method, opts...)
		}),
	}
}
