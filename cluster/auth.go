package cluster

// Tokens, roles and audit on a node (issue 12). The meta group holds the
// tokens (fsm/meta_tokens.go); every node verifies the bearer tokens of the
// calls it serves against its own meta replica, through a cache of
// verified tokens that the replica's token generation invalidates (a
// revocation applied here is in force here at once). The interceptors and
// the rule table are in transport/auth*.go.

import (
	"context"
	"crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"sync"
	"time"

	"github.com/hashicorp/raft"
	"github.com/prometheus/client_golang/prometheus"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/peer"
	"google.golang.org/grpc/status"

	"github.com/hodei-io/hodei/fsm"
	"github.com/hodei-io/hodei/proto/hodeiv1"
	"github.com/hodei-io/hodei/proto/internalpb"
	"github.com/hodei-io/hodei/transport"
)

// AuthConfig is a node's authentication setup.
type AuthConfig struct {
	// Enabled requires a bearer token (or a node credential) on every call
	// but health checks. Off (the default), every call is allowed and the
	// node says so loudly at start.
	Enabled bool
	// NodeSecret is the cluster's node credential: every node of the
	// cluster has the same one and sends it on the calls it makes on its
	// own behalf (Raft, its dispatcher's leases, the balancer). At least
	// 32 characters. Without TLS it is what tells a node from a client;
	// with mTLS, NodePeer does and NodeSecret may be empty.
	NodeSecret string
	// NodePeer is the mTLS hook (transport.AuthConfig.NodePeer): whether a
	// call's peer presented a verified server certificate, and its node.
	NodePeer func(ctx context.Context) (nodeID string, ok bool)
	// BootstrapToken, when set ("hodei_<id>_<secret>", the same on every
	// bootstrap node), is the first admin token instead of a random one
	// written to DATA/bootstrap-token: an operator (or a harness) that
	// provisions its secrets chooses it.
	BootstrapToken string
}

// BootstrapTokenFile is where the meta leader writes the first admin token
// of a cluster with auth on (in its data dir, mode 0600).
const BootstrapTokenFile = "bootstrap-token"

const minNodeSecret = 32

// Validate checks the auth settings.
func (c AuthConfig) Validate() error {
	if !c.Enabled {
		return nil
	}
	if c.NodeSecret == "" && c.NodePeer == nil {
		return errors.New("auth needs a node secret (--auth-node-secret-file) or TLS server certificates to tell nodes from clients")
	}
	if c.NodeSecret != "" && len(c.NodeSecret) < minNodeSecret {
		return fmt.Errorf("the node secret is %d characters, at least %d are needed", len(c.NodeSecret), minNodeSecret)
	}
	if c.BootstrapToken != "" {
		if _, _, err := fsm.ParseToken(c.BootstrapToken); err != nil {
			return fmt.Errorf("bootstrap token: %w (want hodei_<16 hex>_<64 hex>)", err)
		}
	}
	return nil
}

// NewNodeSecret returns a random node secret (64 hex digits).
func NewNodeSecret() string { return randHex(32) }

func randHex(n int) string {
	b := make([]byte, n)
	if _, err := rand.Read(b); err != nil {
		panic("crypto/rand: " + err.Error()) // never fails on supported platforms
	}
	return hex.EncodeToString(b)
}

// AuthEnabled reports whether this node requires tokens.
func (n *Node) AuthEnabled() bool { return n.cfg.Auth.Enabled }

// newAuth builds the node's interceptors, token cache and audit counter.
func (n *Node) newAuth(reg prometheus.Registerer) *transport.Auth {
	n.tokens = &tokenCache{n: n, m: map[[32]byte]cachedToken{}}
	n.auditEvents = prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "hodei_audit_events_total",
		Help: "Admin actions (membership, snapshots, tenant settings, tokens) received by this node, by action and outcome (ok, denied, failed).",
	}, []string{"action", "outcome"})
	reg.MustRegister(n.auditEvents)
	if n.cfg.Auth.Enabled {
		n.cfg.Logger.Info("auth is on: every call needs a bearer token", "node_credential", n.cfg.Auth.NodeSecret != "", "mtls_node_check", n.cfg.Auth.NodePeer != nil)
	} else {
		n.cfg.Logger.Log(context.Background(), n.cfg.securityLevel(), "AUTH IS OFF: any client that reaches this node can submit as any tenant, read every job, change membership and restore snapshots; start with --auth for tokens and roles")
	}
	return transport.NewAuth(transport.AuthConfig{
		Enabled:    n.cfg.Auth.Enabled,
		Tokens:     n.tokens,
		NodeID:     n.cfg.NodeID,
		NodeSecret: n.cfg.Auth.NodeSecret,
		NodePeer:   n.cfg.Auth.NodePeer,
		Audit:      n.audit,
		Logger:     n.cfg.Logger,
	})
}

// ---- verified-token cache ----

const maxCachedTokens = 4096

type cachedToken struct {
	p       *transport.Principal
	expires int64 // unix ms; 0 = never
}

// tokenCache verifies bearer tokens against the node's meta replica and
// keeps the verified ones by the SHA-256 of the whole token, so that a
// call of a known token costs one hash and one map lookup. Any token
// change or snapshot restore of the replica (its token generation) empties
// the cache: a revocation is in force on a node as soon as its replica
// applied it.
type tokenCache struct {
	n *Node

	mu  sync.RWMutex
	gen uint64
	m   map[[32]byte]cachedToken
}

var _ transport.TokenVerifier = (*tokenCache)(nil)

// VerifyToken implements transport.TokenVerifier.
func (c *tokenCache) VerifyToken(tok string) (*transport.Principal, error) {
	meta := c.n.meta.fsm
	gen := meta.TokenGeneration()
	key := sha256.Sum256([]byte(tok))
	now := time.Now().UnixMilli()
	c.mu.RLock()
	e, ok := c.m[key]
	fresh := c.gen == gen
	c.mu.RUnlock()
	if ok && fresh {
		if e.expires == 0 || now < e.expires {
			return e.p, nil
		}
	}
	id, secret, err := fsm.ParseToken(tok)
	if err != nil {
		return nil, errors.New("token is malformed")
	}
	t, ok := meta.Token(id)
	if !ok || !fsm.SecretMatches(t.GetSecretSha256(), secret) {
		return nil, fmt.Errorf("unknown token %s", id) // a wrong secret answers as an unknown id
	}
	if t.GetRevoked() {
		return nil, fmt.Errorf("token %s is revoked", id)
	}
	if exp := t.GetExpiresAtMs(); exp != 0 && now >= exp {
		return nil, fmt.Errorf("token %s expired at %s", id, time.UnixMilli(exp).UTC().Format(time.RFC3339))
	}
	p := principalOf(t)
	c.mu.Lock()
	if c.gen != gen || len(c.m) >= maxCachedTokens {
		clear(c.m)
		c.gen = gen
	}
	c.m[key] = cachedToken{p: p, expires: t.GetExpiresAtMs()}
	c.mu.Unlock()
	return p, nil
}

// principalOf turns a token's roles into a principal. Several worker roles
// combine: their tenants and kinds are unions (one without a limit lifts it).
func principalOf(t *internalpb.AuthToken) *transport.Principal {
	p := &transport.Principal{TokenID: t.GetId(), TokenName: t.GetName()}
	var tenants, kinds map[string]bool
	allTenants, allKinds := false, false
	for _, s := range t.GetRoles() {
		r, err := fsm.ParseRole(s)
		if err != nil {
			continue // stored roles were validated by Apply
		}
		switch r.Kind {
		case fsm.RoleAdmin:
			p.Admin = true
		case fsm.RoleTenantSubmit:
			if p.Submit == nil {
				p.Submit = map[string]struct{}{}
			}
			p.Submit[r.Tenant] = struct{}{}
		case fsm.RoleTenantRead:
			if p.Read == nil {
				p.Read = map[string]struct{}{}
			}
			p.Read[r.Tenant] = struct{}{}
		case fsm.RoleWorker:
			p.Worker = true
			if r.Tenants == nil {
				allTenants = true
			} else {
				tenants = addAll(tenants, r.Tenants)
			}
			if r.Kinds == nil {
				allKinds = true
			} else {
				kinds = addAll(kinds, r.Kinds)
			}
		}
	}
	if p.Worker && !allTenants {
		p.WorkerTenants = sortedKeys(tenants)
	}
	if p.Worker && !allKinds {
		p.WorkerKinds = sortedKeys(kinds)
	}
	return p
}

func addAll(m map[string]bool, vs []string) map[string]bool {
	if m == nil {
		m = map[string]bool{}
	}
	for _, v := range vs {
		m[v] = true
	}
	return m
}

func sortedKeys(m map[string]bool) []string {
	out := make([]string, 0, len(m))
	for k := range m {
		out = append(out, k)
	}
	sort.Strings(out)
	return out
}

// ---- AuthService backend ----

type authBackend struct{ n *Node }

var _ transport.AuthBackend = (*authBackend)(nil)

func tokenInfo(t *internalpb.AuthToken) *hodeiv1.TokenInfo {
	return &hodeiv1.TokenInfo{Id: t.GetId(), Name: t.GetName(), Roles: t.GetRoles(), CreatedAtMs: t.GetCreatedAtMs(),
		ExpiresAtMs: t.GetExpiresAtMs(), Revoked: t.GetRevoked(), RevokedAtMs: t.GetRevokedAtMs(),
		CreatedBy: t.GetCreatedBy(), RevokedBy: t.GetRevokedBy()}
}

// onMetaLeader runs local if this node leads the meta group; otherwise,
// unless the call was already forwarded to it, it sends the call to the
// meta leader (the caller's token goes along and is checked there again).
func onMetaLeader[R any](ctx context.Context, n *Node, local func() (R, error), remote func(context.Context, hodeiv1.AuthServiceClient) (R, error)) (R, error) {
	var zero R
	if n.meta.raft.State() == raft.Leader {
		return local()
	}
	if transport.IsForwarded(ctx) {
		return zero, raft.ErrNotLeader
	}
	addr, _ := n.meta.raft.LeaderWithID()
	if addr == "" {
		return zero, fmt.Errorf("meta group: %w", transport.ErrNoLeader)
	}
	return transport.ForwardAuth(ctx, n.pool, string(addr), MetaGroup, remote)
}

func (b *authBackend) CreateToken(ctx context.Context, req *hodeiv1.TokenCreateRequest) (*hodeiv1.TokenCreateResponse, error) {
	if err := fsm.ValidateTokenName(req.GetName()); err != nil {
		return nil, invalidErr("%v", err)
	}
	roles, err := fsm.CanonicalRoles(req.GetRoles())
	if err != nil {
		return nil, invalidErr("%v", err)
	}
	if req.GetTtlMs() < 0 || req.GetTtlMs() > 100*365*24*3600*1000 {
		return nil, invalidErr("ttl_ms %d must be in 0 (no expiry)..100 years", req.GetTtlMs())
	}
	return onMetaLeader(ctx, b.n, func() (*hodeiv1.TokenCreateResponse, error) {
		expires := int64(0)
		if req.GetTtlMs() > 0 {
			expires = b.n.now().UnixMilli() + req.GetTtlMs()
		}
		tok, t, err := b.n.proposeToken(ctx, req.GetName(), roles, expires, transport.PrincipalFrom(ctx).Who())
		if err != nil {
			return nil, err
		}
		return &hodeiv1.TokenCreateResponse{Token: tokenInfo(t), Secret: tok}, nil
	}, func(ctx context.Context, c hodeiv1.AuthServiceClient) (*hodeiv1.TokenCreateResponse, error) {
		return c.CreateToken(ctx, req)
	})
}

// proposeToken makes a token (random id and secret, on this node: the meta
// leader) and commits its record; it returns the bearer token and the record.
func (n *Node) proposeToken(ctx context.Context, name string, roles []string, expires int64, by string) (string, *internalpb.AuthToken, error) {
	id, secret := randHex(fsm.TokenIDLen/2), randHex(fsm.TokenSecretLen/2)
	rec := &internalpb.AuthToken{Id: id, Name: name, Roles: roles, ExpiresAtMs: expires, SecretSha256: fsm.HashSecret(secret), CreatedBy: by}
	if err := n.meta.proposeCtx(ctx, &internalpb.MetaCommand{Kind: &internalpb.MetaCommand_PutToken{PutToken: rec}}); err != nil {
		return "", nil, err
	}
	t, ok := n.meta.fsm.Token(id)
	if !ok {
		return "", nil, fmt.Errorf("token %s committed but not in the meta state", id)
	}
	n.waitMetaApplied(ctx, n.meta.raft.AppliedIndex())
	return fsm.FormatToken(id, secret), t, nil
}

// tokenSpreadWait bounds how long a token change waits for the other
// members' meta replicas before it answers.
const tokenSpreadWait = 3 * time.Second

// waitMetaApplied waits, at most tokenSpreadWait, until every member of the
// meta group reports (Status) a meta applied index of at least index, so
// that a token change answered to the caller is in force on every node
// that answers: a new token works, a revoked one is refused, wherever the
// next call goes. A member that does not confirm in time (down, slow) is
// logged; it applies the change when it catches up.
func (n *Node) waitMetaApplied(ctx context.Context, index uint64) {
	cf := n.meta.raft.GetConfiguration()
	if cf.Error() != nil {
		return
	}
	ctx, cancel := context.WithTimeout(ctx, tokenSpreadWait)
	defer cancel()
	for _, srv := range cf.Configuration().Servers {
		if string(srv.ID) == n.cfg.NodeID {
			continue
		}
		for {
			st, err := n.probe(ctx, string(srv.Address))
			if err == nil && st.GetMetaAppliedIndex() >= index {
				break
			}
			select {
			case <-ctx.Done():
				n.cfg.Logger.Warn("auth: a member has not applied the token change yet", "member", srv.ID, "index", index)
				return
			case <-time.After(10 * time.Millisecond):
			}
		}
	}
}

// ListTokens reads the meta leader's replica, which holds every token
// change acknowledged so far (a list right after a create shows it).
func (b *authBackend) ListTokens(ctx context.Context, includeRevoked bool) ([]*hodeiv1.TokenInfo, error) {
	return onMetaLeader(ctx, b.n, func() ([]*hodeiv1.TokenInfo, error) {
		var out []*hodeiv1.TokenInfo
		for _, t := range b.n.meta.fsm.Tokens() {
			if t.GetRevoked() && !includeRevoked {
				continue
			}
			out = append(out, tokenInfo(t))
		}
		return out, nil
	}, func(ctx context.Context, c hodeiv1.AuthServiceClient) ([]*hodeiv1.TokenInfo, error) {
		resp, err := c.ListTokens(ctx, &hodeiv1.TokenListRequest{IncludeRevoked: includeRevoked})
		return resp.GetTokens(), err
	})
}

func (b *authBackend) RevokeToken(ctx context.Context, id string) (*hodeiv1.TokenInfo, error) {
	if !fsm.ValidTokenID(id) {
		return nil, invalidErr("token id %q must be %d lowercase hex digits", id, fsm.TokenIDLen)
	}
	return onMetaLeader(ctx, b.n, func() (*hodeiv1.TokenInfo, error) {
		by := transport.PrincipalFrom(ctx).Who()
		if err := b.n.meta.proposeCtx(ctx, &internalpb.MetaCommand{Kind: &internalpb.MetaCommand_RevokeToken{RevokeToken: &internalpb.AuthTokenRevoke{Id: id, By: by}}}); err != nil {
			return nil, err
		}
		b.n.waitMetaApplied(ctx, b.n.meta.raft.AppliedIndex())
		t, ok := b.n.meta.fsm.Token(id)
		if !ok {
			return nil, fmt.Errorf("token %s revoked but not in the meta state", id)
		}
		return tokenInfo(t), nil
	}, func(ctx context.Context, c hodeiv1.AuthServiceClient) (*hodeiv1.TokenInfo, error) {
		resp, err := c.RevokeToken(ctx, &hodeiv1.TokenRevokeRequest{Id: id})
		return resp.GetToken(), err
	})
}

func (b *authBackend) JobTenant(sh uint32, id string) (string, bool) {
	s, err := b.n.shard(sh)
	if err != nil {
		return "", false
	}
	return s.fsm.JobTenant(id)
}

// ---- bootstrap admin token ----

// ensureBootstrapToken runs on the meta leader (reconcile): with auth on
// and no token at all in the meta group — a new cluster, or one that just
// turned auth on — it creates an admin token "bootstrap" and writes it to
// DATA/bootstrap-token (0600) before committing it, so that a token that
// exists was always shown (or uses AuthConfig.BootstrapToken). The secret
// is never logged. An operator reads
// the file once, creates their own tokens and revokes this one.
func (n *Node) ensureBootstrapToken(ctx context.Context) {
	if !n.cfg.Auth.Enabled || len(n.meta.fsm.Tokens()) > 0 {
		return
	}
	path := "(given by the operator)"
	id, secret, err := fsm.ParseToken(n.cfg.Auth.BootstrapToken) // validated by Config.Validate
	if err != nil {
		id, secret = randHex(fsm.TokenIDLen/2), randHex(fsm.TokenSecretLen/2)
		path = filepath.Join(n.cfg.DataDir, BootstrapTokenFile)
		tmp := path + ".tmp"
		if err := os.WriteFile(tmp, []byte(fsm.FormatToken(id, secret)+"\n"), 0o600); err != nil {
			n.cfg.Logger.Error("auth: cannot write the bootstrap admin token", "path", path, "err", err)
			return
		}
		if err := os.Rename(tmp, path); err != nil {
			n.cfg.Logger.Error("auth: cannot write the bootstrap admin token", "path", path, "err", err)
			return
		}
	}
	rec := &internalpb.AuthToken{Id: id, Name: "bootstrap", Roles: []string{"admin"}, SecretSha256: fsm.HashSecret(secret), CreatedBy: "bootstrap (node " + n.cfg.NodeID + ")"}
	if err := n.meta.proposeCtx(ctx, &internalpb.MetaCommand{Kind: &internalpb.MetaCommand_PutToken{PutToken: rec}}); err != nil {
		n.cfg.Logger.Warn("auth: bootstrap admin token not committed (retrying next round)", "err", err)
		return
	}
	n.cfg.Logger.Warn("auth: bootstrap admin token created; read it once, make your own tokens and revoke it", "token_id", id, "file", path)
	n.auditEvents.WithLabelValues("token_create", "ok").Inc()
}

// ---- audit ----

// audit records one admin action (transport.AuditedMethods) received by
// this node: a log line with who did it (token id and name, or node; never
// the secret), what, and the outcome, and hodei_audit_events_total.
func (n *Node) audit(ctx context.Context, method string, p *transport.Principal, req, resp any, err error) {
	action := transport.AuditedMethods[method]
	outcome := "ok"
	switch status.Code(transport.ToStatus(err)) {
	case codes.OK:
	case codes.Unauthenticated, codes.PermissionDenied:
		outcome = "denied"
	default:
		outcome = "failed"
	}
	n.auditEvents.WithLabelValues(action, outcome).Inc()
	who := p.Who()
	if p == nil && !n.cfg.Auth.Enabled {
		who = "anonymous (auth off)"
	}
	attrs := []any{"action", action, "outcome", outcome, "by", who}
	if pr, ok := peer.FromContext(ctx); ok && pr.Addr != nil {
		attrs = append(attrs, "peer", pr.Addr.String())
	}
	switch r := req.(type) {
	case *hodeiv1.JoinRequest:
		attrs = append(attrs, "node", r.GetNodeId(), "address", r.GetAddress())
	case *hodeiv1.RemoveRequest:
		attrs = append(attrs, "node", r.GetNodeId())
	case *hodeiv1.TransferLeaderRequest:
		attrs = append(attrs, "shard", r.GetShard(), "to", r.GetToNodeId())
	case *hodeiv1.SetTenantRequest:
		attrs = append(attrs, "tenant", r.GetTenant())
	case *hodeiv1.TokenCreateRequest:
		attrs = append(attrs, "name", r.GetName(), "roles", r.GetRoles(), "ttl_ms", r.GetTtlMs())
	case *hodeiv1.TokenRevokeRequest:
		attrs = append(attrs, "token_id", r.GetId())
	}
	if r, ok := resp.(*hodeiv1.TokenCreateResponse); ok && r != nil {
		attrs = append(attrs, "token_id", r.GetToken().GetId())
	}
	if err != nil {
		attrs = append(attrs, "err", status.Convert(transport.ToStatus(err)).Message())
		n.cfg.Logger.Warn("audit", attrs...)
		return
	}
	n.cfg.Logger.Info("audit", attrs...)
}
