package cluster

import (
	"context"
	"errors"
	"io"
	"net"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"testing"
	"time"

	dto "github.com/prometheus/client_model/go"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/reflect/protoreflect"
	"google.golang.org/protobuf/reflect/protoregistry"

	"github.com/hodei-io/hodei/client"
	"github.com/hodei-io/hodei/fsm"
	"github.com/hodei-io/hodei/proto/hodeiv1"
	"github.com/hodei-io/hodei/proto/internalpb"
	"github.com/hodei-io/hodei/transport"
)

// testAdminToken is the bootstrap admin token of the auth tests' clusters.
const testAdminToken = "hodei_00000000000000aa_00112233445566778899aabbccddeeff00112233445566778899aabbccddeeff"

func startAuthCluster(t *testing.T, size, shards int) *testCluster {
	t.Helper()
	secret := NewNodeSecret()
	tc := startClusterWith(t, size, shards, func(c *Config) {
		c.Auth = AuthConfig{Enabled: true, NodeSecret: secret, BootstrapToken: testAdminToken}
	})
	id, _, _ := fsm.ParseToken(testAdminToken)
	waitTokenEverywhere(t, tc, id)
	return tc
}

// waitTokenEverywhere waits until every node's meta replica holds token id.
func waitTokenEverywhere(t *testing.T, tc *testCluster, id string) {
	t.Helper()
	waitFor(t, 20*time.Second, "token "+id+" on every node", func() bool {
		for _, n := range tc.nodes {
			if _, ok := n.meta.fsm.Token(id); !ok {
				return false
			}
		}
		return true
	})
}

func tokenClient(t *testing.T, tok string, addrs ...string) *client.Client {
	t.Helper()
	c, err := client.New(client.Config{Addrs: addrs, Retry: 20 * time.Second, Token: tok})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

// mkToken creates a token with roles through admin and waits until every
// node knows it.
func mkToken(t *testing.T, tc *testCluster, admin *client.Client, name string, roles ...string) (string, string) {
	t.Helper()
	resp, err := admin.CreateToken(context.Background(), name, roles, 0)
	if err != nil {
		t.Fatalf("create token %s %v: %v", name, roles, err)
	}
	waitTokenEverywhere(t, tc, resp.GetToken().GetId())
	return resp.GetToken().GetId(), resp.GetSecret()
}

func counterValue(c interface{ Write(*dto.Metric) error }) float64 {
	var m dto.Metric
	if err := c.Write(&m); err != nil {
		panic(err)
	}
	return m.GetCounter().GetValue()
}

func rawConn(t *testing.T, addr string) *grpc.ClientConn {
	t.Helper()
	cc, err := grpc.NewClient(addr, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cc.Close() })
	return cc
}

func listJobs(ctx context.Context, c *client.Client, tenant string, state hodeiv1.JobState, limit int32) ([]*hodeiv1.Job, error) {
	resp, err := c.List(ctx, &hodeiv1.ListJobsRequest{Tenant: tenant, State: state, Limit: limit})
	return resp.GetJobs(), err
}

func withBearer(ctx context.Context, tok string) context.Context {
	if tok == "" {
		return ctx
	}
	return metadata.AppendToOutgoingContext(ctx, "authorization", "Bearer "+tok)
}

// authCase is the test's own statement of who may make a call (kept apart
// from transport.Rules on purpose) and a request about tenant a's objects.
type authCase struct {
	class string // see expectCode
	req   string // protojson of the request; $JOB is tenant a's job
}

// authCases lists every RPC of every service in proto/hodei/v1 and the
// internal RaftTransport. A new RPC fails TestAuthEveryRPCEveryRole until it
// is added here (and to transport.Rules, or every call of it is refused).
var authCases = map[string]authCase{
	"/hodei.v1.JobService/SubmitJob":     {"submitNamed", `{"spec":{"tenant":"a","command":["true"]}}`},
	"/hodei.v1.JobService/SubmitJobs":    {"submitNamed", `{"specs":[{"tenant":"a","command":["true"]}]}`},
	"/hodei.v1.JobService/GetJob":        {"read", `{"id":"$JOB"}`},
	"/hodei.v1.JobService/ListJobs":      {"readNamed", `{"tenant":"a"}`},
	"/hodei.v1.JobService/CancelJob":     {"submit", `{"id":"$JOB","reason":"auth test"}`},
	"/hodei.v1.JobService/WatchJobs":     {"readNamed", `{"tenant":"a"}`},
	"/hodei.v1.JobService/GetJobLogs":    {"read", `{"jobId":"$JOB"}`},
	"/hodei.v1.JobService/FollowJobLogs": {"read", `{"jobId":"$JOB"}`},
	"/hodei.v1.JobService/RetryJob":      {"submit", `{"id":"$JOB"}`},
	"/hodei.v1.JobService/RequeueJobs":   {"submitNamed", `{"tenant":"a"}`},

	"/hodei.v1.WorkerService/Connect":      {"worker", `{"hello":{"workerId":"auth-w","slots":0}}`},
	"/hodei.v1.WorkerService/Lease":        {"worker", `{"workerId":"auth-w","capacity":1}`},
	"/hodei.v1.WorkerService/ExtendLeases": {"worker", `{"workerId":"auth-w","leases":[{"jobId":"$JOB","token":1}]}`},
	"/hodei.v1.WorkerService/CompleteJob":  {"worker", `{"jobId":"$JOB","token":1}`},
	"/hodei.v1.WorkerService/CompleteJobs": {"worker", `{"completions":[{"jobId":"$JOB","token":1}]}`},
	"/hodei.v1.WorkerService/LeaseFor":     {"node", `{"demands":[{"workerId":"x","capacity":1}],"requestId":"r"}`},

	"/hodei.v1.AdminService/Status":          {"any", `{}`},
	"/hodei.v1.AdminService/Join":            {"admin", `{"nodeId":"nobody","address":"127.0.0.1:1"}`},
	"/hodei.v1.AdminService/Remove":          {"admin", `{"nodeId":"nobody"}`},
	"/hodei.v1.AdminService/TransferLeader":  {"admin", `{"shard":0}`},
	"/hodei.v1.AdminService/SnapshotSave":    {"admin", `{}`},
	"/hodei.v1.AdminService/SnapshotRestore": {"admin", `{"data":"bm90IGFuIGFyY2hpdmU="}`},
	"/hodei.v1.AdminService/SnapshotGroup":   {"admin", `{"group":0}`},
	"/hodei.v1.AdminService/RestoreGroup":    {"admin", `{"checkOnly":true}`},
	"/hodei.v1.AdminService/SetTenant":       {"admin", `{"tenant":"a","weight":2}`},
	"/hodei.v1.AdminService/ListTenants":     {"readList", `{}`},

	"/hodei.v1.ScheduleService/CreateSchedule":   {"submitNamed", `{"schedule":{"id":"s2","tenant":"a","spec":"@hourly","template":{"command":["true"]}}}`},
	"/hodei.v1.ScheduleService/GetSchedule":      {"read", `{"tenant":"a","id":"s1"}`},
	"/hodei.v1.ScheduleService/ListSchedules":    {"readNamed", `{"tenant":"a"}`},
	"/hodei.v1.ScheduleService/PauseSchedule":    {"submit", `{"tenant":"a","id":"s1"}`},
	"/hodei.v1.ScheduleService/ResumeSchedule":   {"submit", `{"tenant":"a","id":"s1"}`},
	"/hodei.v1.ScheduleService/TriggerSchedule":  {"submit", `{"tenant":"a","id":"s1"}`},
	"/hodei.v1.ScheduleService/BackfillSchedule": {"submit", `{"tenant":"a","id":"s1","fromMs":"1000","toMs":"2000"}`},
	"/hodei.v1.ScheduleService/DeleteSchedule":   {"submit", `{"tenant":"a","id":"nope"}`},

	// A pipeline of tenant a, $PIPE, waiting on a delayed root step.
	"/hodei.v1.PipelineService/SubmitPipeline": {"submitNamed", `{"spec":{"tenant":"a","steps":[{"id":"x","job":{"command":["true"],"delayMs":"3600000"}}]}}`},
	"/hodei.v1.PipelineService/GetPipeline":    {"read", `{"id":"$PIPE"}`},
	"/hodei.v1.PipelineService/ListPipelines":  {"readNamed", `{"tenant":"a"}`},
	"/hodei.v1.PipelineService/CancelPipeline": {"submit", `{"id":"$PIPE","reason":"auth test"}`},
	"/hodei.v1.PipelineService/RetryPipeline":  {"submit", `{"id":"$PIPE"}`},

	"/hodei.v1.AuthService/CreateToken": {"admin", `{"name":"from-table","roles":["tenant:z:read"]}`},
	"/hodei.v1.AuthService/ListTokens":  {"admin", `{}`},
	"/hodei.v1.AuthService/RevokeToken": {"admin", `{"id":"ffffffffffffffff"}`},

	"/hodei.internal.v1.RaftTransport/AppendEntries":         {"node", `{}`},
	"/hodei.internal.v1.RaftTransport/AppendEntriesPipeline": {"node", `{}`},
	"/hodei.internal.v1.RaftTransport/RequestVote":           {"node", `{}`},
	"/hodei.internal.v1.RaftTransport/RequestPreVote":        {"node", `{}`},
	"/hodei.internal.v1.RaftTransport/TimeoutNow":            {"node", `{}`},
	"/hodei.internal.v1.RaftTransport/InstallSnapshot":       {"node", `{}`},
}

const okCode = codes.Code(1000) // any code but Unauthenticated, PermissionDenied (and NotFound where a foreign object is)

// expectCode is what role gets for a call of class about tenant a.
func expectCode(class, role string) codes.Code {
	switch role {
	case "none", "malformed", "revoked", "oversized", "expired":
		return codes.Unauthenticated
	case "admin":
		if class == "node" {
			return codes.PermissionDenied
		}
		return okCode
	}
	if class == "any" {
		return okCode
	}
	switch role {
	case "submitA":
		switch class {
		case "submit", "submitNamed", "read", "readNamed", "readList":
			return okCode
		}
	case "readA":
		switch class {
		case "read", "readNamed", "readList":
			return okCode
		}
	case "tenantB": // tenant:b:submit
		switch class {
		case "submit", "read":
			return codes.NotFound // tenant a's object: as if it did not exist
		case "submitNamed", "readNamed":
			return codes.PermissionDenied // names tenant a
		case "readList":
			return okCode // filtered to tenant b
		}
	case "workerA":
		if class == "worker" {
			return okCode
		}
	}
	return codes.PermissionDenied
}

// call makes one call of method with req on cc and returns its code. A
// stream that opens and answers is OK; one that opens and then waits
// (a follow of a job without lines) ends with DeadlineExceeded.
func callMethod(ctx context.Context, cc *grpc.ClientConn, md protoreflect.MethodDescriptor, method string, req proto.Message) codes.Code {
	out, err := protoregistry.GlobalTypes.FindMessageByName(md.Output().FullName())
	if err != nil {
		panic(err)
	}
	resp := out.New().Interface()
	if !md.IsStreamingClient() && !md.IsStreamingServer() {
		return status.Code(cc.Invoke(ctx, method, req, resp))
	}
	s, err := cc.NewStream(ctx, &grpc.StreamDesc{ServerStreams: md.IsStreamingServer(), ClientStreams: md.IsStreamingClient()}, method)
	if err != nil {
		return status.Code(err)
	}
	if err := s.SendMsg(req); err != nil && !errors.Is(err, io.EOF) {
		return status.Code(err)
	}
	if md.IsStreamingClient() && method != "/hodei.v1.WorkerService/Connect" {
		_ = s.CloseSend()
	}
	err = s.RecvMsg(resp)
	if errors.Is(err, io.EOF) {
		return codes.OK
	}
	return status.Code(err)
}

func TestAuthEveryRPCEveryRole(t *testing.T) {
	tc := startAuthCluster(t, 3, 2)
	admin := tokenClient(t, testAdminToken, tc.addrs()...)
	ctx := context.Background()
	_, submitA := mkToken(t, tc, admin, "submit-a", "tenant:a:submit")
	_, readA := mkToken(t, tc, admin, "read-a", "tenant:a:read")
	_, tenantB := mkToken(t, tc, admin, "tenant-b", "tenant:b:submit")
	_, workerA := mkToken(t, tc, admin, "worker-a", "worker:tenants=a")
	revID, revoked := mkToken(t, tc, admin, "revoked", "admin")
	if _, err := admin.RevokeToken(ctx, revID); err != nil {
		t.Fatal(err)
	}
	exp, err := admin.CreateToken(ctx, "expires", []string{"admin"}, 300)
	if err != nil {
		t.Fatal(err)
	}
	waitFor(t, 20*time.Second, "the revocation everywhere", func() bool {
		for _, n := range tc.nodes {
			if tk, _ := n.meta.fsm.Token(revID); !tk.GetRevoked() {
				return false
			}
		}
		return true
	})
	job, err := admin.Submit(ctx, &hodeiv1.JobSpec{Tenant: "a", Command: []string{"true"}, DelayMs: 3_600_000})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := admin.CreateSchedule(ctx, &hodeiv1.Schedule{Id: "s1", Tenant: "a", Spec: "@hourly", Template: &hodeiv1.JobSpec{Command: []string{"true"}}}); err != nil {
		t.Fatal(err)
	}
	pipe, err := admin.SubmitPipeline(ctx, &hodeiv1.PipelineSpec{Tenant: "a", Steps: []*hodeiv1.PipelineStepSpec{
		{Id: "x", Job: &hodeiv1.JobSpec{Command: []string{"true"}, DelayMs: 3_600_000}}}})
	if err != nil {
		t.Fatal(err)
	}
	waitFor(t, 5*time.Second, "the expiring token to expire", func() bool { return time.Now().UnixMilli() > exp.GetToken().GetExpiresAtMs() })
	roles := map[string]string{
		"none": "", "malformed": "hodei_xyz", "oversized": strings.Repeat("a", 2000), "revoked": revoked, "expired": exp.GetSecret(),
		"admin": testAdminToken, "submitA": submitA, "readA": readA, "tenantB": tenantB, "workerA": workerA,
	}
	var roleNames []string
	for r := range roles {
		roleNames = append(roleNames, r)
	}
	sort.Strings(roleNames)
	// Every method of every service, from the descriptors.
	var methods []protoreflect.MethodDescriptor
	for _, fd := range []protoreflect.FileDescriptor{hodeiv1.File_hodei_v1_hodei_proto, internalpb.File_hodei_internal_v1_raft_proto} {
		for i := 0; i < fd.Services().Len(); i++ {
			sd := fd.Services().Get(i)
			for j := 0; j < sd.Methods().Len(); j++ {
				methods = append(methods, sd.Methods().Get(j))
			}
		}
	}
	if len(methods) < len(authCases) {
		t.Fatalf("%d methods in the descriptors, %d cases", len(methods), len(authCases))
	}
	// Ask a node that leads nothing where possible, so most calls forward.
	cc := rawConn(t, tc.addrs()[followerOf(tc)])
	for _, md := range methods {
		method := "/" + string(md.Parent().FullName()) + "/" + string(md.Name())
		c, ok := authCases[method]
		if !ok {
			t.Errorf("%s has no case in authCases (and needs a rule in transport.Rules)", method)
			continue
		}
		if _, ok := transport.Rules[method]; !ok {
			t.Errorf("%s has no rule in transport.Rules: every call of it is refused", method)
		}
		in, err := protoregistry.GlobalTypes.FindMessageByName(md.Input().FullName())
		if err != nil {
			t.Fatal(err)
		}
		for _, role := range roleNames {
			req := in.New().Interface()
			if err := protojson.Unmarshal([]byte(strings.NewReplacer("$JOB", job.GetJob().GetId(), "$PIPE", pipe.GetId()).Replace(c.req)), req); err != nil {
				t.Fatalf("%s: request %s: %v", method, c.req, err)
			}
			cctx, cancel := context.WithTimeout(withBearer(ctx, roles[role]), 3*time.Second)
			got := callMethod(cctx, cc, md, method, req)
			cancel()
			want := expectCode(c.class, role)
			bad := false
			if want == okCode {
				bad = got == codes.Unauthenticated || got == codes.PermissionDenied
			} else {
				bad = got != want
			}
			if bad {
				w := want.String()
				if want == okCode {
					w = "allowed"
				}
				t.Errorf("%s as %s (%s): got %v, want %s", method, role, c.class, got, w)
			}
		}
	}
	// Nothing a refused call tried changed tenant a's job.
	j, err := admin.Get(ctx, job.GetJob().GetId())
	if err != nil {
		t.Fatal(err)
	}
	if j.GetState() != hodeiv1.JobState_JOB_STATE_CANCELLED && j.GetState() != hodeiv1.JobState_JOB_STATE_PENDING {
		t.Fatalf("job a is %v", j.GetState())
	}
}

// Every method a node serves has a rule: the running server's own view.
func TestAuthRulesCoverServedMethods(t *testing.T) {
	tc := startAuthCluster(t, 1, 1)
	for svc, info := range tc.nodes[0].grpc.GetServiceInfo() {
		for _, m := range info.Methods {
			name := "/" + svc + "/" + m.Name
			if _, ok := transport.Rules[name]; !ok {
				t.Errorf("served method %s has no rule in transport.Rules", name)
			}
		}
	}
	if !tc.nodes[0].AuthEnabled() {
		t.Fatal("auth not enabled")
	}
	st, err := tokenClient(t, testAdminToken, tc.addrs()...).Status(context.Background(), tc.addrs()[0])
	if err != nil || !st.GetAuthEnabled() {
		t.Fatalf("status %v, %v", st.GetAuthEnabled(), err)
	}
}

// nomad#25089: a wildcard watch (and list) with a token of one tenant
// sees none of another tenant's events or jobs.
func TestAuthWildcardWatchSeesOnlyOwnTenant(t *testing.T) {
	tc := startAuthCluster(t, 3, 2)
	admin := tokenClient(t, testAdminToken, tc.addrs()...)
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	_, readA := mkToken(t, tc, admin, "read-a", "tenant:a:read")
	cc := rawConn(t, tc.addrs()[followerOf(tc)])
	stream, err := hodeiv1.NewJobServiceClient(cc).WatchJobs(withBearer(ctx, readA), &hodeiv1.WatchJobsRequest{IncludeJob: true})
	if err != nil {
		t.Fatal(err)
	}
	if m, err := stream.Recv(); err != nil || !m.GetBookmark() {
		t.Fatalf("first message %v, %v", m, err)
	}
	const per = 20
	for i := 0; i < per; i++ {
		for _, tn := range []string{"b", "a"} { // b first: its events come before each a event
			if _, err := admin.Submit(ctx, &hodeiv1.JobSpec{Tenant: tn, Command: []string{"true"}, DelayMs: 3_600_000}); err != nil {
				t.Fatal(err)
			}
		}
	}
	seen := 0
	for seen < per {
		m, err := stream.Recv()
		if err != nil {
			t.Fatalf("after %d events: %v", seen, err)
		}
		if ev := m.GetEvent(); ev != nil {
			if ev.GetTenant() != "a" || ev.GetJob().GetSpec().GetTenant() != "a" {
				t.Fatalf("watch of a token for tenant a got an event of tenant %q", ev.GetTenant())
			}
			seen++
		}
	}
	// The wildcard list shows tenant a's jobs only, all of them.
	resp, err := hodeiv1.NewJobServiceClient(cc).ListJobs(withBearer(ctx, readA), &hodeiv1.ListJobsRequest{Limit: 1000})
	if err != nil {
		t.Fatal(err)
	}
	n := 0
	for _, j := range resp.GetJobs() {
		if j.GetSpec().GetTenant() != "a" {
			t.Fatalf("wildcard list shows tenant %q", j.GetSpec().GetTenant())
		}
		n++
	}
	if n != per {
		t.Fatalf("wildcard list: %d jobs of a, want %d", n, per)
	}
	// A foreign job and a missing one answer alike.
	bJobs, err := listJobs(ctx, admin, "b", 0, 1)
	if err != nil || len(bJobs) == 0 {
		t.Fatalf("list b: %v %v", bJobs, err)
	}
	_, errForeign := hodeiv1.NewJobServiceClient(cc).GetJob(withBearer(ctx, readA), &hodeiv1.GetJobRequest{Id: bJobs[0].GetId()})
	sh, _ := tc.nodes[0].ShardOfJob(bJobs[0].GetId())
	missing := strings.Replace(bJobs[0].GetId(), "-", "-9999", 1)
	_, errMissing := hodeiv1.NewJobServiceClient(cc).GetJob(withBearer(ctx, readA), &hodeiv1.GetJobRequest{Id: missing})
	if status.Code(errForeign) != codes.NotFound || status.Code(errMissing) != codes.NotFound ||
		strings.Replace(status.Convert(errForeign).Message(), bJobs[0].GetId(), "", 1) != strings.Replace(status.Convert(errMissing).Message(), missing, "", 1) {
		t.Fatalf("foreign job (shard %d): %v; missing job: %v", sh, errForeign, errMissing)
	}
}

// A forwarded call is judged on the leader as its caller: a tenant b token
// cancelling tenant a's job through a follower is refused by the leader
// (the follower cannot know the job's tenant), and a forwarded call that
// carries only a node credential gets no client rights.
func TestAuthForwardedCallCheckedOnLeader(t *testing.T) {
	tc := startAuthCluster(t, 3, 1)
	admin := tokenClient(t, testAdminToken, tc.addrs()...)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	_, tenantB := mkToken(t, tc, admin, "tenant-b", "tenant:b:submit")
	job, err := admin.Submit(ctx, &hodeiv1.JobSpec{Tenant: "a", Command: []string{"true"}, DelayMs: 3_600_000})
	if err != nil {
		t.Fatal(err)
	}
	f := followerOf(tc)
	cc := rawConn(t, tc.addrs()[f])
	_, err = hodeiv1.NewJobServiceClient(cc).CancelJob(withBearer(ctx, tenantB), &hodeiv1.CancelJobRequest{Id: job.GetJob().GetId()})
	if status.Code(err) != codes.NotFound {
		t.Fatalf("cancel of a's job with b's token through follower n%d: %v, want NotFound", f+1, err)
	}
	// Straight to the leader as a forwarded call: the same answer.
	lc := rawConn(t, tc.addrs()[tc.leader()])
	fctx := metadata.AppendToOutgoingContext(withBearer(ctx, tenantB), "x-hodei-forwarded", "1", "x-hodei-shard", "0")
	if _, err := hodeiv1.NewJobServiceClient(lc).CancelJob(fctx, &hodeiv1.CancelJobRequest{Id: job.GetJob().GetId()}); status.Code(err) != codes.NotFound {
		t.Fatalf("forwarded cancel on the leader: %v, want NotFound", err)
	}
	// A node credential alone is no client: a "forwarded" submit with it is refused.
	nctx := metadata.AppendToOutgoingContext(ctx, "x-hodei-forwarded", "1", "x-hodei-shard", "0",
		"x-hodei-node", "n9", "x-hodei-node-auth", tc.nodes[0].cfg.Auth.NodeSecret)
	if _, err := hodeiv1.NewJobServiceClient(lc).SubmitJobs(nctx, &hodeiv1.SubmitJobsRequest{Specs: []*hodeiv1.JobSpec{{Tenant: "a", Command: []string{"x"}}}}); status.Code(err) != codes.PermissionDenied {
		t.Fatalf("submit with a node credential only: %v, want PermissionDenied", err)
	}
	// A wrong node credential is no node.
	wctx := metadata.AppendToOutgoingContext(ctx, "x-hodei-node-auth", strings.Repeat("0", 64))
	if _, err := hodeiv1.NewAdminServiceClient(lc).Status(wctx, &hodeiv1.StatusRequest{}); status.Code(err) != codes.Unauthenticated {
		t.Fatalf("status with a wrong node credential: %v, want Unauthenticated", err)
	}
	j, err := admin.Get(ctx, job.GetJob().GetId())
	if err != nil || j.GetState() != hodeiv1.JobState_JOB_STATE_PENDING {
		t.Fatalf("a's job after refused cancels: %v, %v", j.GetState(), err)
	}
	if jobs, _ := listJobs(ctx, admin, "a", 0, 100); len(jobs) != 1 {
		t.Fatalf("tenant a holds %d jobs, want 1", len(jobs))
	}
}

// A revocation takes effect on every node, also where the token was
// verified (and cached) before; an expired token is refused too.
func TestAuthRevocationOnEveryNode(t *testing.T) {
	tc := startAuthCluster(t, 3, 1)
	admin := tokenClient(t, testAdminToken, tc.addrs()...)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	id, tok := mkToken(t, tc, admin, "soon-revoked", "tenant:a:read")
	conns := make([]*grpc.ClientConn, len(tc.nodes))
	for i := range tc.nodes {
		conns[i] = rawConn(t, tc.addrs()[i])
		if _, err := hodeiv1.NewJobServiceClient(conns[i]).ListJobs(withBearer(ctx, tok), &hodeiv1.ListJobsRequest{Tenant: "a"}); err != nil {
			t.Fatalf("node %d before revocation: %v", i, err)
		}
	}
	info, err := admin.RevokeToken(ctx, id)
	if err != nil || !info.GetRevoked() || !strings.Contains(info.GetRevokedBy(), "bootstrap") {
		t.Fatalf("revoke: %v, %v", info, err)
	}
	for i := range tc.nodes {
		waitFor(t, 10*time.Second, "node refusing the revoked token", func() bool {
			_, err := hodeiv1.NewJobServiceClient(conns[i]).ListJobs(withBearer(ctx, tok), &hodeiv1.ListJobsRequest{Tenant: "a"})
			return status.Code(err) == codes.Unauthenticated
		})
	}
	list, err := admin.ListTokens(ctx, false)
	if err != nil {
		t.Fatal(err)
	}
	for _, tk := range list {
		if tk.GetId() == id {
			t.Fatal("a revoked token is listed without --all")
		}
	}
	// Bad input changes nothing.
	if _, err := admin.CreateToken(ctx, "bad", []string{"root"}, 0); status.Code(err) != codes.InvalidArgument {
		t.Fatalf("bad role: %v", err)
	}
	if _, err := admin.RevokeToken(ctx, "XYZ"); status.Code(err) != codes.InvalidArgument {
		t.Fatalf("bad id: %v", err)
	}
	if _, err := admin.RevokeToken(ctx, "ffffffffffffffff"); status.Code(err) != codes.NotFound {
		t.Fatalf("unknown id: %v", err)
	}
	if after, _ := admin.ListTokens(ctx, true); len(after) != 2 {
		t.Fatalf("%d tokens after refused changes, want 2", len(after))
	}
}

// A worker token limited to tenant a is only ever leased tenant a's jobs,
// and a worker token of tenant b cannot complete or extend a's lease.
func TestAuthWorkerTenantLimit(t *testing.T) {
	tc := startAuthCluster(t, 3, 1) // one shard: a and b share it, so the FSM must pass b over
	admin := tokenClient(t, testAdminToken, tc.addrs()...)
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	_, workerA := mkToken(t, tc, admin, "worker-a", "worker:tenants=a")
	_, workerB := mkToken(t, tc, admin, "worker-b", "worker:tenants=b;kinds=k")
	const per = 10
	for i := 0; i < per; i++ {
		for _, tn := range []string{"b", "a"} {
			if _, err := admin.Submit(ctx, &hodeiv1.JobSpec{Tenant: tn, Kind: "k"}); err != nil {
				t.Fatal(err)
			}
		}
	}
	wc := tokenClient(t, workerA, tc.addrs()...)
	w, err := client.NewWorker(wc, client.WorkerConfig{ID: "wa", Concurrency: 4})
	if err != nil {
		t.Fatal(err)
	}
	tenants := make(chan string, 4*per)
	w.Handle("k", func(_ context.Context, j *client.Job) error {
		tenants <- j.Tenant()
		return nil
	})
	wctx, stop := context.WithCancel(ctx)
	done := make(chan error, 1)
	go func() { done <- w.Run(wctx) }()
	for i := 0; i < per; i++ {
		select {
		case tn := <-tenants:
			if tn != "a" {
				t.Fatalf("worker limited to a ran a job of tenant %q", tn)
			}
		case <-ctx.Done():
			t.Fatalf("only %d of a's jobs ran", i)
		}
	}
	// b's jobs are still there, unleased, while the worker keeps asking.
	waitFor(t, 5*time.Second, "a's jobs to finish", func() bool {
		jobs, err := listJobs(ctx, admin, "a", hodeiv1.JobState_JOB_STATE_SUCCEEDED, 100)
		return err == nil && len(jobs) == per
	})
	time.Sleep(300 * time.Millisecond) // a lease round would have happened (the worker stream asks every 250 ms)
	if jobs, err := listJobs(ctx, admin, "b", hodeiv1.JobState_JOB_STATE_PENDING, 100); err != nil || len(jobs) != per {
		t.Fatalf("tenant b: %d pending (%v), want %d", len(jobs), err, per)
	}
	stop()
	<-done

	// Worker a takes a lease of a's job by the unary Lease; worker b's
	// token cannot complete or extend it.
	if _, err := admin.Submit(ctx, &hodeiv1.JobSpec{Tenant: "a", Kind: "k"}); err != nil {
		t.Fatal(err)
	}
	lease, err := wc.Lease(ctx, &hodeiv1.LeaseRequest{WorkerId: "wa2", Capacity: 5, WaitMs: 5000, Kinds: []string{"k"}})
	if err != nil || len(lease.GetLeases()) != 1 || lease.GetLeases()[0].GetJob().GetSpec().GetTenant() != "a" {
		t.Fatalf("lease: %v, %v", lease, err)
	}
	l := lease.GetLeases()[0]
	cc := rawConn(t, tc.addrs()[followerOf(tc)])
	bctx := withBearer(ctx, workerB)
	wsc := hodeiv1.NewWorkerServiceClient(cc)
	if _, err := wsc.CompleteJob(bctx, &hodeiv1.CompleteJobRequest{JobId: l.GetJob().GetId(), Token: l.GetToken(), Success: true}); status.Code(err) != codes.NotFound {
		t.Fatalf("b completes a's lease: %v, want NotFound", err)
	}
	res, err := wsc.CompleteJobs(bctx, &hodeiv1.CompleteJobsRequest{Completions: []*hodeiv1.Completion{{JobId: l.GetJob().GetId(), Token: l.GetToken(), Success: true}}})
	if err != nil || len(res.GetResults()) != 1 || res.GetResults()[0].GetOk() || res.GetResults()[0].GetCode() != "NOT_FOUND" {
		t.Fatalf("b completes a's lease in a batch: %v, %v", res, err)
	}
	ext, err := wsc.ExtendLeases(bctx, &hodeiv1.ExtendLeasesRequest{WorkerId: "wb", Leases: []*hodeiv1.LeaseRef{{JobId: l.GetJob().GetId(), Token: l.GetToken()}}})
	if err != nil || len(ext.GetResults()) != 1 || ext.GetResults()[0].GetOk() {
		t.Fatalf("b extends a's lease: %v, %v", ext, err)
	}
	// Over b's stream, too.
	st, err := wsc.Connect(bctx)
	if err != nil {
		t.Fatal(err)
	}
	if err := st.Send(&hodeiv1.WorkerMessage{Msg: &hodeiv1.WorkerMessage_Hello{Hello: &hodeiv1.WorkerHello{WorkerId: "wb", Kinds: []string{"k", "other"}}}}); err != nil {
		t.Fatal(err)
	}
	if m, err := st.Recv(); err != nil || m.GetWelcome() == nil {
		t.Fatalf("welcome: %v, %v", m, err)
	}
	if err := st.Send(&hodeiv1.WorkerMessage{Msg: &hodeiv1.WorkerMessage_Completions{Completions: &hodeiv1.WorkerCompletions{
		Completions: []*hodeiv1.Completion{{JobId: l.GetJob().GetId(), Token: l.GetToken(), Success: true}}}}}); err != nil {
		t.Fatal(err)
	}
	m, err := st.Recv()
	if err != nil || len(m.GetCompletions().GetResults()) != 1 || m.GetCompletions().GetResults()[0].GetOk() {
		t.Fatalf("b completes a's lease on its stream: %v, %v", m, err)
	}
	_ = st.CloseSend()
	j, err := admin.Get(ctx, l.GetJob().GetId())
	if err != nil || j.GetState() != hodeiv1.JobState_JOB_STATE_RUNNING || j.GetLeaseToken() != l.GetToken() {
		t.Fatalf("a's job after b's refused completions: %v (token %d), %v", j.GetState(), j.GetLeaseToken(), err)
	}
	// A worker token whose kinds the worker does not run is refused.
	st2, err := wsc.Connect(bctx)
	if err != nil {
		t.Fatal(err)
	}
	_ = st2.Send(&hodeiv1.WorkerMessage{Msg: &hodeiv1.WorkerMessage_Hello{Hello: &hodeiv1.WorkerHello{WorkerId: "wb2", Kinds: []string{"other"}}}})
	if _, err := st2.Recv(); status.Code(err) != codes.PermissionDenied {
		t.Fatalf("hello with kinds outside the token: %v, want PermissionDenied", err)
	}
}

// The first admin token of a new cluster is written once, 0600, to the
// meta leader's data dir; admin actions are audited by who did them.
func TestAuthBootstrapTokenFileAndAudit(t *testing.T) {
	secret := NewNodeSecret()
	tc := startClusterWith(t, 3, 1, func(c *Config) { c.Auth = AuthConfig{Enabled: true, NodeSecret: secret} })
	var tok string
	waitFor(t, 20*time.Second, "the bootstrap token file", func() bool {
		for _, d := range tc.dirs {
			b, err := os.ReadFile(filepath.Join(d, BootstrapTokenFile))
			if err != nil {
				continue
			}
			st, err := os.Stat(filepath.Join(d, BootstrapTokenFile))
			if err != nil || st.Mode().Perm() != 0o600 {
				t.Fatalf("bootstrap token file mode %v, %v", st.Mode(), err)
			}
			tok = strings.TrimSpace(string(b))
			return true
		}
		return false
	})
	id, _, err := fsm.ParseToken(tok)
	if err != nil {
		t.Fatal(err)
	}
	waitTokenEverywhere(t, tc, id)
	admin := tokenClient(t, tok, tc.addrs()...)
	ctx := context.Background()
	created, err := admin.CreateToken(ctx, "reader", []string{"tenant:a:read"}, 0)
	if err != nil {
		t.Fatal(err)
	}
	if list, err := admin.ListTokens(ctx, true); err != nil || len(list) != 2 {
		t.Fatalf("tokens %v, %v", list, err)
	}
	waitTokenEverywhere(t, tc, created.GetToken().GetId())
	reader := tokenClient(t, created.GetSecret(), tc.addrs()[0])
	if _, err := reader.SetTenant(ctx, "a", 3); status.Code(err) != codes.PermissionDenied {
		t.Fatalf("reader sets a tenant: %v", err)
	}
	var okCreates, denied float64
	for _, n := range tc.nodes {
		okCreates += counterValue(n.auditEvents.WithLabelValues("token_create", "ok"))
		denied += counterValue(n.auditEvents.WithLabelValues("tenant_set", "denied"))
	}
	// The bootstrap token itself and the reader's.
	if okCreates != 2 || denied != 1 {
		t.Fatalf("audit: %v token creations ok, %v tenant settings denied", okCreates, denied)
	}
}

// A node joins a cluster with auth on by its node credential alone: it
// learns the shard count, is added to every group (Raft traffic carries
// the credential), and then verifies tokens from its own meta replica.
func TestAuthJoinWithNodeCredential(t *testing.T) {
	tc := startAuthCluster(t, 3, 2)
	secret := tc.nodes[0].cfg.Auth.NodeSecret
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	cfg := testConfig(t, "n4", filepath.Join(t.TempDir(), "n4"), l, nil, 0)
	cfg.Shards = 2 // validated; a joining node learns the count from the cluster
	cfg.Join = tc.addrs()
	cfg.Auth = AuthConfig{Enabled: true, NodeSecret: secret}
	n, err := New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	tc.nodes = append(tc.nodes, n)
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	if err := n.JoinCluster(ctx); err != nil {
		t.Fatal(err)
	}
	id, _, _ := fsm.ParseToken(testAdminToken)
	waitFor(t, 20*time.Second, "the new node to hold the tokens", func() bool { _, ok := n.meta.fsm.Token(id); return ok })
	cc := rawConn(t, n.Addr())
	if _, err := hodeiv1.NewAdminServiceClient(cc).Status(withBearer(ctx, testAdminToken), &hodeiv1.StatusRequest{}); err != nil {
		t.Fatalf("admin on the new node: %v", err)
	}
	if _, err := hodeiv1.NewAdminServiceClient(cc).Status(ctx, &hodeiv1.StatusRequest{}); status.Code(err) != codes.Unauthenticated {
		t.Fatalf("no token on the new node: %v", err)
	}
	// A node with another secret cannot join.
	l2, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	cfg2 := testConfig(t, "n5", filepath.Join(t.TempDir(), "n5"), l2, nil, 0)
	cfg2.Shards = 2
	cfg2.Auth = AuthConfig{Enabled: true, NodeSecret: NewNodeSecret()}
	n5, err := New(cfg2)
	if err != nil {
		t.Fatal(err)
	}
	defer n5.Close()
	cc5, err := n5.pool.Get(tc.addrs()[0])
	if err != nil {
		t.Fatal(err)
	}
	_, err = hodeiv1.NewAdminServiceClient(cc5).Join(ctx, &hodeiv1.JoinRequest{NodeId: "n5", Address: n5.Addr(), Voter: true})
	if status.Code(err) != codes.Unauthenticated {
		t.Fatalf("join with a wrong node secret: %v, want Unauthenticated", err)
	}
}
