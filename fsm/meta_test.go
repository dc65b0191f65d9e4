package fsm

import (
	"errors"
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
