package fsm

import (
	"bytes"
	"errors"
	"io"
	"testing"

	"github.com/hashicorp/raft"
	"google.golang.org/protobuf/proto"

	"github.com/hodei-io/hodei/proto/internalpb"
)

func TestMetaPutTenant(t *testing.T) {
	changes := 0
	m := NewMeta(func() { changes++ })
	idx := uint64(0)
	put := func(tenant string, weight uint32) error {
		t.Helper()
		idx++
		b, err := proto.Marshal(&internalpb.MetaCommand{Version: MetaVersion, Kind: &internalpb.MetaCommand_PutTenant{
			PutTenant: &internalpb.TenantSettings{Tenant: tenant, Weight: weight}}})
		if err != nil {
			t.Fatal(err)
		}
		res, _ := m.Apply(&raft.Log{Index: idx, Type: raft.LogCommand, Data: b}).(error)
		return res
	}
	for _, tc := range []struct {
		tenant string
		weight uint32
	}{{"", 2}, {"a", 0}, {"a", MaxTenantWeight + 1}, {"a/b", 2}} {
		var ce *CodeError
		if err := put(tc.tenant, tc.weight); !errors.As(err, &ce) || ce.Code() != internalpb.Code_CODE_INVALID_ARGUMENT {
			t.Fatalf("put %q=%d: %v", tc.tenant, tc.weight, err)
		}
	}
	if len(m.Tenants()) != 0 {
		t.Fatalf("rejected puts stored %v", m.Tenants())
	}
	for _, p := range []struct {
		tenant string
		weight uint32
	}{{"b", 3}, {"a", 2}, {"b", 5}, {"default", 1000}} {
		if err := put(p.tenant, p.weight); err != nil {
			t.Fatal(err)
		}
	}
	got := m.Tenants()
	if len(got) != 3 || got[0].GetTenant() != "a" || got[1].GetTenant() != "b" || got[1].GetWeight() != 5 || got[2].GetWeight() != 1000 {
		t.Fatalf("tenants %v", got)
	}
	if m.TenantWeight("b") != 5 || m.TenantWeight("nobody") != 1 {
		t.Fatal("TenantWeight")
	}
	got[0].Weight = 99 // a copy
	if m.TenantWeight("a") != 2 || changes != 8 {
		t.Fatalf("weight of a %d, %d change callbacks", m.TenantWeight("a"), changes)
	}
}

func TestMetaClusterID(t *testing.T) {
	m := NewMeta(nil)
	idx := uint64(0)
	apply := func(cmd *internalpb.MetaCommand) error {
		t.Helper()
		idx++
		b, err := proto.Marshal(cmd)
		if err != nil {
			t.Fatal(err)
		}
		res, _ := m.Apply(&raft.Log{Index: idx, Type: raft.LogCommand, Data: b}).(error)
		return res
	}
	initID := func(id string) *internalpb.MetaCommand {
		c := &internalpb.MetaCommand{Kind: &internalpb.MetaCommand_InitClusterId{InitClusterId: id}}
		c.Version = MetaVersionFor(c)
		return c
	}
	// Without a cluster id the snapshot is version 1: an older node can restore it.
	enc, err := EncodeMetaSnapshot(m.State())
	if err != nil {
		t.Fatal(err)
	}
	if st, _ := DecodeMetaSnapshot(enc); st.GetVersion() != 1 {
		t.Fatalf("snapshot without a cluster id has version %d, want 1", st.GetVersion())
	}
	for _, bad := range []string{"", "UPPER", "a b", string(make([]byte, 65))} {
		var ce *CodeError
		if err := apply(initID(bad)); !errors.As(err, &ce) || ce.Code() != internalpb.Code_CODE_INVALID_ARGUMENT {
			t.Fatalf("cluster id %q: %v", bad, err)
		}
	}
	if m.ClusterID() != "" {
		t.Fatal("a rejected cluster id was stored")
	}
	if err := apply(initID("0123abcd")); err != nil {
		t.Fatal(err)
	}
	if err := apply(initID("ffff")); err != nil { // first writer wins; a second is ignored
		t.Fatal(err)
	}
	if m.ClusterID() != "0123abcd" {
		t.Fatalf("cluster id %q", m.ClusterID())
	}
	enc, err = EncodeMetaSnapshot(m.State())
	if err != nil {
		t.Fatal(err)
	}
	m2 := NewMeta(nil)
	if err := m2.Restore(io.NopCloser(bytes.NewReader(enc))); err != nil {
		t.Fatal(err)
	}
	if m2.ClusterID() != "0123abcd" {
		t.Fatalf("restored cluster id %q", m2.ClusterID())
	}
	if st, _ := DecodeMetaSnapshot(enc); st.GetVersion() != 2 {
		t.Fatalf("snapshot with a cluster id has version %d, want 2", st.GetVersion())
	}
	// Old kinds still carry version 1 (older nodes apply them during a rolling upgrade).
	if v := MetaVersionFor(&internalpb.MetaCommand{Kind: &internalpb.MetaCommand_PutTenant{}}); v != 1 {
		t.Fatalf("put_tenant needs version %d", v)
	}
	// A version-2 kind in a version-1 entry is refused, changing nothing.
	m3 := NewMeta(nil)
	c := initID("abc")
	c.Version = 1
	b, _ := proto.Marshal(c)
	var ce *CodeError
	if err, _ := m3.Apply(&raft.Log{Index: 1, Type: raft.LogCommand, Data: b}).(error); !errors.As(err, &ce) || m3.ClusterID() != "" {
		t.Fatalf("a cluster id in a version-1 entry: %v, id %q", err, m3.ClusterID())
	}
}
