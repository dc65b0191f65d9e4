package fsm

import (
	"bytes"
	"errors"
	"io"
	"reflect"
	"strings"
	"testing"

	"github.com/hashicorp/raft"
	"google.golang.org/protobuf/proto"

	"github.com/hodei-io/hodei/proto/hodeiv1"
	"github.com/hodei-io/hodei/proto/internalpb"
)

const (
	testTokenID = "0123456789abcdef"
	testSecret  = "00112233445566778899aabbccddeeff00112233445566778899aabbccddeeff"
)

func TestParseToken(t *testing.T) {
	good := FormatToken(testTokenID, testSecret)
	id, sec, err := ParseToken(good)
	if err != nil || id != testTokenID || sec != testSecret {
		t.Fatalf("ParseToken(%q) = %q, %q, %v", good, id, sec, err)
	}
	for _, bad := range []string{
		"", "hodei_", good[:len(good)-1], good + "0",
		strings.Replace(good, "hodei_", "hodeI_", 1),
		strings.ToUpper(good),
		strings.Replace(good, "_"+testSecret, "-"+testSecret, 1),
		good[:10] + "g" + good[11:],
		"Bearer " + good,
	} {
		if _, _, err := ParseToken(bad); !errors.Is(err, ErrMalformedToken) {
			t.Errorf("ParseToken(%q) = %v, want ErrMalformedToken", bad, err)
		}
	}
}

func TestParseRole(t *testing.T) {
	for in, want := range map[string]string{
		"admin":                          "admin",
		"worker":                         "worker",
		"tenant:a:submit":                "tenant:a:submit",
		"tenant:a.b-c_d:read":            "tenant:a.b-c_d:read",
		"worker:tenants=b,a,b":           "worker:tenants=a,b",
		"worker:kinds=y,x":               "worker:kinds=x,y",
		"worker:kinds=x:1;tenants=a":     "worker:tenants=a;kinds=x:1",
		"worker:tenants=a;kinds=shell,x": "worker:tenants=a;kinds=shell,x",
	} {
		r, err := ParseRole(in)
		if err != nil || r.String() != want {
			t.Errorf("ParseRole(%q) = %q, %v; want %q", in, r.String(), err, want)
		}
	}
	for _, bad := range []string{
		"", "Admin", "admin ", "tenant:", "tenant::read", "tenant:a:write", "tenant:a/b:read", "tenant:a",
		"worker:", "worker:tenants=", "worker:tenants=a,", "worker:tenants=a;tenants=b", "worker:kinds=a b",
		"worker:queues=a", "workers", strings.Repeat("a", 5000),
	} {
		if _, err := ParseRole(bad); !errors.Is(err, ErrInvalidRole) {
			t.Errorf("ParseRole(%q) = %v, want ErrInvalidRole", bad, err)
		}
	}
	got, err := CanonicalRoles([]string{"worker:tenants=b,a", "admin", "admin"})
	if err != nil || !reflect.DeepEqual(got, []string{"admin", "worker:tenants=a,b"}) {
		t.Fatalf("CanonicalRoles = %v, %v", got, err)
	}
	if _, err := CanonicalRoles(nil); err == nil {
		t.Fatal("no roles accepted")
	}
}

// metaApply applies one meta command at the next index with version v.
type metaHarness struct {
	t   *testing.T
	m   *MetaFSM
	idx uint64
	now int64
}

func (h *metaHarness) apply(v uint32, cmd *internalpb.MetaCommand) error {
	h.t.Helper()
	h.idx++
	cmd.Version, cmd.NowMs = v, h.now
	b, err := proto.Marshal(cmd)
	if err != nil {
		h.t.Fatal(err)
	}
	res, _ := h.m.Apply(&raft.Log{Index: h.idx, Type: raft.LogCommand, Data: b}).(error)
	return res
}

func putToken(id string, roles []string, expires int64) *internalpb.MetaCommand {
	return &internalpb.MetaCommand{Kind: &internalpb.MetaCommand_PutToken{PutToken: &internalpb.AuthToken{
		Id: id, Name: "ci", Roles: roles, ExpiresAtMs: expires, SecretSha256: HashSecret(testSecret), CreatedBy: "bootstrap"}}}
}

func codeOf(err error) internalpb.Code {
	var ce *CodeError
	if errors.As(err, &ce) {
		return ce.Code()
	}
	return internalpb.Code_CODE_OK
}

func TestMetaTokens(t *testing.T) {
	h := &metaHarness{t: t, m: NewMeta(nil), now: 5000}
	before, _ := EncodeMetaSnapshot(h.m.State())
	gen := h.m.TokenGeneration()
	// Rejections change nothing.
	for name, tc := range map[string]struct {
		v    uint32
		cmd  *internalpb.MetaCommand
		code internalpb.Code
	}{
		"old version":   {1, putToken(testTokenID, []string{"admin"}, 0), internalpb.Code_CODE_INVALID_ARGUMENT},
		"bad id":        {2, putToken("0123", []string{"admin"}, 0), internalpb.Code_CODE_INVALID_ARGUMENT},
		"bad role":      {2, putToken(testTokenID, []string{"root"}, 0), internalpb.Code_CODE_INVALID_ARGUMENT},
		"not canonical": {2, putToken(testTokenID, []string{"worker:tenants=b,a"}, 0), internalpb.Code_CODE_INVALID_ARGUMENT},
		"no roles":      {2, putToken(testTokenID, nil, 0), internalpb.Code_CODE_INVALID_ARGUMENT},
		"expired":       {2, putToken(testTokenID, []string{"admin"}, 4000), internalpb.Code_CODE_INVALID_ARGUMENT},
		"revoke unknown": {2, &internalpb.MetaCommand{Kind: &internalpb.MetaCommand_RevokeToken{
			RevokeToken: &internalpb.AuthTokenRevoke{Id: testTokenID}}}, internalpb.Code_CODE_NOT_FOUND},
	} {
		if err := h.apply(tc.v, tc.cmd); codeOf(err) != tc.code {
			t.Errorf("%s: %v, want %v", name, err, tc.code)
		}
	}
	st := h.m.State()
	st.AppliedIndex = 0
	if after, _ := EncodeMetaSnapshot(st); !bytes.Equal(before, after) || h.m.TokenGeneration() != gen {
		t.Fatal("rejected token commands changed the state")
	}

	if err := h.apply(2, putToken(testTokenID, []string{"admin", "tenant:a:read"}, 9000)); err != nil {
		t.Fatal(err)
	}
	if err := h.apply(2, putToken(testTokenID, []string{"admin"}, 0)); codeOf(err) != internalpb.Code_CODE_ALREADY_EXISTS {
		t.Fatalf("duplicate id: %v", err)
	}
	tok, ok := h.m.Token(testTokenID)
	if !ok || tok.GetCreatedAtMs() != 5000 || !SecretMatches(tok.GetSecretSha256(), testSecret) || SecretMatches(tok.GetSecretSha256(), testSecret[1:]+"0") {
		t.Fatalf("token %v", tok)
	}
	if h.m.TokenGeneration() == gen {
		t.Fatal("generation did not move")
	}
	h.now = 6000
	rev := &internalpb.MetaCommand{Kind: &internalpb.MetaCommand_RevokeToken{RevokeToken: &internalpb.AuthTokenRevoke{Id: testTokenID, By: "x"}}}
	if err := h.apply(2, rev); err != nil {
		t.Fatal(err)
	}
	h.now = 7000
	if err := h.apply(2, rev); err != nil { // a second revocation is a no-op
		t.Fatal(err)
	}
	if tok, _ := h.m.Token(testTokenID); !tok.GetRevoked() || tok.GetRevokedAtMs() != 6000 || tok.GetRevokedBy() != "x" {
		t.Fatalf("revoked token %v", tok)
	}

	// Snapshot round trip; version 2 with tokens.
	snap, err := h.m.Snapshot()
	if err != nil {
		t.Fatal(err)
	}
	sink := &memSink{}
	if err := snap.Persist(sink); err != nil {
		t.Fatal(err)
	}
	st2, err := DecodeMetaSnapshot(sink.Bytes())
	if err != nil || st2.GetVersion() != MetaVersionTokens || len(st2.GetTokens()) != 1 {
		t.Fatalf("decoded %v, %v", st2, err)
	}
	m2 := NewMeta(nil)
	if err := m2.Restore(io.NopCloser(bytes.NewReader(sink.Bytes()))); err != nil {
		t.Fatal(err)
	}
	if !proto.Equal(m2.State(), h.m.State()) {
		t.Fatal("restored state differs")
	}
}

// A meta snapshot of the previous release (version 1, no tokens) still
// loads, and a state without tokens is still written as version 1.
func TestMetaSnapshotVersion1StillLoads(t *testing.T) {
	h := &metaHarness{t: t, m: NewMeta(nil), now: 1}
	if err := h.apply(1, &internalpb.MetaCommand{Kind: &internalpb.MetaCommand_InitShards{InitShards: 8}}); err != nil {
		t.Fatal(err)
	}
	b, err := EncodeMetaSnapshot(h.m.State())
	if err != nil {
		t.Fatal(err)
	}
	st, err := DecodeMetaSnapshot(b)
	if err != nil || st.GetVersion() != 1 || st.GetShardCount() != 8 {
		t.Fatalf("decoded %v, %v", st, err)
	}
}

// A lease demand limited to tenants leases only their jobs, leaves the
// other tenants' credit alone, and needs an entry of version 5.
func TestLeaseLimitedToTenants(t *testing.T) {
	h := newHarness(t)
	var specs []*hodeiv1.JobSpec
	for _, tn := range []string{"a", "b", "c", "a", "b", "c"} {
		specs = append(specs, &hodeiv1.JobSpec{Tenant: tn, Command: []string{"true"}})
	}
	h.ok(submitCmd(specs...))
	lim := &internalpb.Command{Kind: &internalpb.Command_Lease{Lease: &internalpb.LeaseJobs{WorkerId: "w", Capacity: 10, Tenants: []string{"b"}}}}
	if v := EntryVersionFor([]*internalpb.Command{lim}); v != EntryVersionTenantLeases {
		t.Fatalf("EntryVersionFor = %d", v)
	}
	if v := EntryVersionForCluster([]*internalpb.Command{lim}, true); v != EntryVersionTenantLeases {
		t.Fatalf("EntryVersionForCluster = %d", v)
	}
	before := h.digest()
	if r := h.apply(lim); r.GetCode() != internalpb.Code_CODE_INVALID_ARGUMENT { // version 1 entry
		t.Fatalf("version 1 entry: %v", r)
	}
	if h.digest() != before {
		t.Fatal("a refused lease changed the state")
	}
	if h.f.HasReadyForTenants(nil, nil, []string{"zzz"}) || !h.f.HasReadyForTenants(nil, nil, []string{"c"}) {
		t.Fatal("HasReadyForTenants")
	}
	h.index++
	res := h.f.ApplyEntry(h.index, &internalpb.Entry{Version: EntryVersionTenantLeases, NowMs: h.now, Commands: []*internalpb.Command{lim}})
	if err := ResultError(res[0]); err != nil {
		t.Fatal(err)
	}
	if len(res[0].GetLeases()) != 2 {
		t.Fatalf("leased %d jobs, want tenant b's 2", len(res[0].GetLeases()))
	}
	for _, l := range res[0].GetLeases() {
		if l.GetJob().GetSpec().GetTenant() != "b" {
			t.Fatalf("leased a job of tenant %q", l.GetJob().GetSpec().GetTenant())
		}
	}
	// The others still alternate fairly for an unlimited worker.
	r := h.ok(leaseCmd("w2", 4))
	got := map[string]int{}
	for _, l := range r.GetLeases() {
		got[l.GetJob().GetSpec().GetTenant()]++
	}
	if got["a"] != 2 || got["c"] != 2 {
		t.Fatalf("unlimited lease got %v", got)
	}
	bad := &internalpb.Command{Kind: &internalpb.Command_Lease{Lease: &internalpb.LeaseJobs{WorkerId: "w", Capacity: 1, Tenants: []string{"a/b"}}}}
	h.index++
	if res := h.f.ApplyEntry(h.index, &internalpb.Entry{Version: EntryVersionTenantLeases, NowMs: h.now, Commands: []*internalpb.Command{bad}}); res[0].GetCode() != internalpb.Code_CODE_INVALID_ARGUMENT {
		t.Fatalf("bad tenant: %v", res[0])
	}
}

// FuzzParseToken: the parser accepts exactly FormatToken's output, and the
// role parser's canonical form parses to itself.
func FuzzParseToken(f *testing.F) {
	f.Add(FormatToken(testTokenID, testSecret))
	f.Add("worker:tenants=a,b;kinds=x")
	f.Fuzz(func(t *testing.T, s string) {
		if id, sec, err := ParseToken(s); err == nil {
			if FormatToken(id, sec) != s || !ValidTokenID(id) || len(sec) != TokenSecretLen {
				t.Fatalf("ParseToken(%q) = %q, %q", s, id, sec)
			}
		} else if !errors.Is(err, ErrMalformedToken) {
			t.Fatalf("ParseToken(%q): %v", s, err)
		}
		if r, err := ParseRole(s); err == nil {
			r2, err := ParseRole(r.String())
			if err != nil || r2.String() != r.String() {
				t.Fatalf("role %q: canonical %q reparses as %q, %v", s, r.String(), r2.String(), err)
			}
		}
	})
}
