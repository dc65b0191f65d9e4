package transport

import (
	"context"
	"errors"
	"log/slog"
	"strings"
	"testing"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/reflect/protoreflect"

	"github.com/hodei-io/hodei/proto/hodeiv1"
	"github.com/hodei-io/hodei/proto/internalpb"
)

// Every RPC in the service descriptors has a rule: a new RPC without one
// fails here (and is refused by the interceptor) instead of being open.
func TestAuthRulesCoverDescriptors(t *testing.T) {
	n := 0
	for _, fd := range []protoreflect.FileDescriptor{hodeiv1.File_hodei_v1_hodei_proto, internalpb.File_hodei_internal_v1_raft_proto} {
		for i := 0; i < fd.Services().Len(); i++ {
			sd := fd.Services().Get(i)
			for j := 0; j < sd.Methods().Len(); j++ {
				name := "/" + string(sd.FullName()) + "/" + string(sd.Methods().Get(j).Name())
				r, ok := Rules[name]
				if !ok {
					t.Errorf("%s has no rule in Rules", name)
				}
				if r.Need == NeedPublic {
					t.Errorf("%s is public: only health checks may be", name)
				}
				n++
			}
		}
	}
	if n < 40 {
		t.Fatalf("only %d methods found", n)
	}
}

type fakeVerifier map[string]*Principal

func (f fakeVerifier) VerifyToken(tok string) (*Principal, error) {
	if p, ok := f[tok]; ok {
		return p, nil
	}
	return nil, errors.New("unknown token")
}

func incoming(kv ...string) context.Context {
	return metadata.NewIncomingContext(context.Background(), metadata.Pairs(kv...))
}

func TestAuthAuthorize(t *testing.T) {
	reader := &Principal{TokenID: "r", TokenName: "reader", Read: map[string]struct{}{"a": {}}}
	worker := &Principal{TokenID: "w", Worker: true, WorkerTenants: []string{"a"}}
	a := NewAuth(AuthConfig{Enabled: true, Tokens: fakeVerifier{"R": reader, "W": worker}, NodeID: "n1", NodeSecret: strings.Repeat("s", 40)})
	get := hodeiv1.JobService_GetJob_FullMethodName
	for name, tc := range map[string]struct {
		ctx    context.Context
		method string
		code   codes.Code
	}{
		"no token":       {incoming(), get, codes.Unauthenticated},
		"two headers":    {incoming("authorization", "Bearer R", "authorization", "Bearer R"), get, codes.Unauthenticated},
		"basic scheme":   {incoming("authorization", "Basic R"), get, codes.Unauthenticated},
		"empty bearer":   {incoming("authorization", "Bearer "), get, codes.Unauthenticated},
		"oversized":      {incoming("authorization", "Bearer "+strings.Repeat("x", MaxBearerBytes)), get, codes.Unauthenticated},
		"unknown":        {incoming("authorization", "Bearer X"), get, codes.Unauthenticated},
		"reader reads":   {incoming("authorization", "bearer R"), get, codes.OK},
		"reader submits": {incoming("authorization", "Bearer R"), hodeiv1.JobService_SubmitJob_FullMethodName, codes.PermissionDenied},
		"worker leases":  {incoming("authorization", "Bearer W"), hodeiv1.WorkerService_Lease_FullMethodName, codes.OK},
		"worker raft":    {incoming("authorization", "Bearer W"), internalpb.RaftTransport_AppendEntries_FullMethodName, codes.PermissionDenied},
		"node raft":      {incoming("x-hodei-node", "n2", "x-hodei-node-auth", strings.Repeat("s", 40)), internalpb.RaftTransport_AppendEntries_FullMethodName, codes.OK},
		"node submits":   {incoming("x-hodei-node-auth", strings.Repeat("s", 40)), hodeiv1.JobService_SubmitJob_FullMethodName, codes.PermissionDenied},
		"bad node":       {incoming("x-hodei-node-auth", strings.Repeat("t", 40)), internalpb.RaftTransport_AppendEntries_FullMethodName, codes.Unauthenticated},
		"bearer wins":    {incoming("authorization", "Bearer R", "x-hodei-node-auth", strings.Repeat("s", 40)), internalpb.RaftTransport_AppendEntries_FullMethodName, codes.PermissionDenied},
		"no rule":        {incoming("authorization", "Bearer R"), "/hodei.v1.JobService/Nope", codes.PermissionDenied},
		"health":         {incoming(), "/grpc.health.v1.Health/Check", codes.OK},
	} {
		_, err := a.authorize(tc.ctx, tc.method)
		if status.Code(err) != tc.code {
			t.Errorf("%s: %v, want %v", name, err, tc.code)
		}
		if err != nil && strings.Contains(status.Convert(err).Message(), strings.Repeat("x", 20)) {
			t.Errorf("%s: the refusal repeats the token", name)
		}
	}
}

// A call made while serving a caller carries the caller's token, never the
// node's credential; the node's own calls carry its credential.
func TestAuthOutgoingCarriesCaller(t *testing.T) {
	a := NewAuth(AuthConfig{Enabled: true, NodeID: "n1", NodeSecret: strings.Repeat("s", 40)})
	ctx := WithPrincipal(context.Background(), &Principal{TokenID: "r"}, "TOKEN")
	md, _ := metadata.FromOutgoingContext(a.outgoing(forwardCtx(ctx, 3)))
	if got := md.Get("authorization"); len(got) != 1 || got[0] != "Bearer TOKEN" || len(md.Get(mdNodeAuth)) != 0 {
		t.Fatalf("forwarded call metadata %v", md)
	}
	md, _ = metadata.FromOutgoingContext(a.outgoing(context.Background()))
	if len(md.Get("authorization")) != 0 || len(md.Get(mdNodeAuth)) != 1 || md.Get(mdNodeID)[0] != "n1" {
		t.Fatalf("node call metadata %v", md)
	}
	md, _ = metadata.FromOutgoingContext(a.outgoing(AsNode(ctx)))
	if len(md.Get("authorization")) != 0 || len(md.Get(mdNodeAuth)) != 1 {
		t.Fatalf("AsNode call metadata %v", md)
	}
	off := NewAuth(AuthConfig{})
	if _, ok := metadata.FromOutgoingContext(off.outgoing(ctx)); ok {
		t.Fatal("auth off added metadata")
	}
}

func TestAuthPrincipalTenants(t *testing.T) {
	p := &Principal{Submit: map[string]struct{}{"a": {}}, Read: map[string]struct{}{"b": {}}}
	if !p.CanSubmit("a") || !p.CanRead("a") || p.CanSubmit("b") || !p.CanRead("b") || p.CanRead("c") || p.CanWork("a") {
		t.Fatal("tenant roles")
	}
	d := &Principal{Read: map[string]struct{}{"default": {}}}
	if !d.CanRead("") {
		t.Fatal("the empty tenant is default")
	}
	w := &Principal{Worker: true, WorkerTenants: []string{"a", "c"}, WorkerKinds: []string{"x"}}
	if !w.CanWork("a") || w.CanWork("b") || !w.CanWork("c") {
		t.Fatal("worker tenants")
	}
	ctx := WithPrincipal(context.Background(), w, "")
	if ts, ks, err := workerLimits(ctx, nil); err != nil || len(ts) != 2 || len(ks) != 1 || ks[0] != "x" {
		t.Fatalf("limits of a worker naming no kinds: %v %v %v", ts, ks, err)
	}
	if _, ks, err := workerLimits(ctx, []string{"x", "y"}); err != nil || len(ks) != 1 {
		t.Fatalf("limits of a worker naming x,y: %v %v", ks, err)
	}
	if _, _, err := workerLimits(ctx, []string{"y"}); status.Code(err) != codes.PermissionDenied {
		t.Fatalf("limits of a worker naming y: %v", err)
	}
}

type countHandler struct{ n *int }

func (h countHandler) Enabled(context.Context, slog.Level) bool { return true }
func (h countHandler) Handle(_ context.Context, r slog.Record) error {
	if r.Message == "auth: refused" {
		*h.n++
	}
	return nil
}
func (h countHandler) WithAttrs([]slog.Attr) slog.Handler { return h }
func (h countHandler) WithGroup(string) slog.Handler      { return h }

// Repeated refusals of the same caller and method are folded into one line.
func TestAuthRefusalLogFolded(t *testing.T) {
	lines := 0
	a := NewAuth(AuthConfig{Enabled: true, Tokens: fakeVerifier{}, Logger: slog.New(countHandler{&lines})})
	for i := 0; i < 5; i++ {
		if _, err := a.authorize(incoming(), hodeiv1.JobService_GetJob_FullMethodName); status.Code(err) != codes.Unauthenticated {
			t.Fatal(err)
		}
	}
	if _, err := a.authorize(incoming(), hodeiv1.JobService_ListJobs_FullMethodName); status.Code(err) != codes.Unauthenticated {
		t.Fatal(err)
	}
	if lines != 2 {
		t.Fatalf("%d refusal lines for 6 refusals of 2 methods, want 2", lines)
	}
}
