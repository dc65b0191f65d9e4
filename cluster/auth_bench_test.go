package cluster

import (
	"testing"

	"github.com/hashicorp/raft"
	"google.golang.org/protobuf/proto"

	"github.com/hodei-io/hodei/fsm"
	"github.com/hodei-io/hodei/proto/internalpb"
)

// BenchmarkVerifyTokenCached is the per-call cost of a known token: one
// SHA-256 of the token and a map lookup (the cache hit of every call).
func BenchmarkVerifyTokenCached(b *testing.B) {
	m := fsm.NewMeta(nil)
	id, secret, _ := fsm.ParseToken(testAdminToken)
	data, err := proto.Marshal(&internalpb.MetaCommand{Version: fsm.MetaVersionTokens, NowMs: 1, Kind: &internalpb.MetaCommand_PutToken{PutToken: &internalpb.AuthToken{
		Id: id, Name: "b", Roles: []string{"tenant:a:submit"}, SecretSha256: fsm.HashSecret(secret)}}})
	if err != nil {
		b.Fatal(err)
	}
	if res := m.Apply(&raft.Log{Index: 1, Type: raft.LogCommand, Data: data}); res != nil {
		b.Fatal(res)
	}
	c := &tokenCache{n: &Node{meta: &metaGroup{fsm: m}}, m: map[[32]byte]cachedToken{}}
	if _, err := c.VerifyToken(testAdminToken); err != nil {
		b.Fatal(err)
	}
	b.ReportAllocs()
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		if _, err := c.VerifyToken(testAdminToken); err != nil {
			b.Fatal(err)
		}
	}
}

// TestVerifyTokenCacheFollowsRevocation: a cached token is refused as soon
// as the replica applies its revocation, and a wrong secret for a known id
// is refused like an unknown token.
func TestVerifyTokenCacheFollowsRevocation(t *testing.T) {
	m := fsm.NewMeta(nil)
	id, secret, _ := fsm.ParseToken(testAdminToken)
	apply := func(idx uint64, cmd *internalpb.MetaCommand) {
		cmd.Version, cmd.NowMs = fsm.MetaVersionTokens, int64(idx)
		data, _ := proto.Marshal(cmd)
		if res := m.Apply(&raft.Log{Index: idx, Type: raft.LogCommand, Data: data}); res != nil {
			t.Fatal(res)
		}
	}
	apply(1, &internalpb.MetaCommand{Kind: &internalpb.MetaCommand_PutToken{PutToken: &internalpb.AuthToken{
		Id: id, Name: "t", Roles: []string{"worker:tenants=a,b"}, SecretSha256: fsm.HashSecret(secret)}}})
	c := &tokenCache{n: &Node{meta: &metaGroup{fsm: m}}, m: map[[32]byte]cachedToken{}}
	p, err := c.VerifyToken(testAdminToken)
	if err != nil || !p.Worker || len(p.WorkerTenants) != 2 || p.WorkerKinds != nil || p.Admin {
		t.Fatalf("principal %+v, %v", p, err)
	}
	wrong := fsm.FormatToken(id, secret[:63]+"0")
	if _, err := c.VerifyToken(wrong); err == nil || err.Error() != "unknown token "+id {
		t.Fatalf("wrong secret: %v", err)
	}
	apply(2, &internalpb.MetaCommand{Kind: &internalpb.MetaCommand_RevokeToken{RevokeToken: &internalpb.AuthTokenRevoke{Id: id}}})
	if _, err := c.VerifyToken(testAdminToken); err == nil {
		t.Fatal("a revoked token still verifies from the cache")
	}
}
