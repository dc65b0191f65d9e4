package transport

import (
	"context"

	"github.com/hodei-io/hodei/proto/hodeiv1"
)

// Tenant settings are coordinated like membership changes: the node that
// receives the call reaches the meta group's leader, locally or with a call
// pinned to the meta group (x-hodei-shard), which then runs it there.
// Validation (tenant name, weight range) is the backend's, so that a
// forwarded call and a local one are checked the same way.

// SetTenant records a tenant's fair-share weight.
func (s *adminService) SetTenant(ctx context.Context, req *hodeiv1.SetTenantRequest) (*hodeiv1.SetTenantResponse, error) {
	if g, ok := pinnedShard(ctx); ok && isForwarded(ctx) {
		return &hodeiv1.SetTenantResponse{}, ToStatus(s.a.b.PutTenantGroup(ctx, g, req))
	}
	st, err := s.a.b.SetTenant(ctx, req)
	if err != nil {
		return nil, ToStatus(err)
	}
	return &hodeiv1.SetTenantResponse{Tenant: st}, nil
}

// ListTenants lists the tenant settings, read on the meta group's leader.
func (s *adminService) ListTenants(ctx context.Context, _ *hodeiv1.ListTenantsRequest) (*hodeiv1.ListTenantsResponse, error) {
	var (
		list []*hodeiv1.TenantStatus
		err  error
	)
	if g, ok := pinnedShard(ctx); ok && isForwarded(ctx) {
		list, err = s.a.b.ListTenantsGroup(ctx, g)
	} else {
		list, err = s.a.b.ListTenants(ctx)
	}
	if err != nil {
		return nil, ToStatus(err)
	}
	if p := PrincipalFrom(ctx); p != nil && !p.Admin { // auth: only the caller's tenants
		kept := list[:0]
		for _, t := range list {
			if p.CanRead(t.GetTenant()) {
				kept = append(kept, t)
			}
		}
		list = kept
	}
	return &hodeiv1.ListTenantsResponse{Tenants: list}, nil
}
