package client

import (
	"context"

	"google.golang.org/grpc"

	hodeiv1 "github.com/hodei-io/hodei/proto/hodeiv1"
)

// Cron schedules (issue 11). Calls go to the leader of the schedule's
// tenant shard when routing knows it; any node forwards them there.

func (c *Client) schedules(cc *grpc.ClientConn) hodeiv1.ScheduleServiceClient {
	return hodeiv1.NewScheduleServiceClient(cc)
}

// scheduleCall runs one ScheduleService call for tenant's shard.
func scheduleCall[R any](c *Client, ctx context.Context, tenant string, call func(context.Context, hodeiv1.ScheduleServiceClient) (R, error)) (R, error) {
	var resp R
	err := c.invokeShard(ctx, c.cfg.CallTimeout, c.tenantShard(ctx, tenant), func(ctx context.Context, cc *grpc.ClientConn) error {
		r, err := call(ctx, c.schedules(cc))
		resp = r
		return err
	})
	return resp, err
}

// The writes carry a request id (one per call, kept across the client's
// retries): a retry after a lost answer gets the first answer, so a
// trigger never runs twice and a create is not AlreadyExists.

// CreateSchedule creates a schedule; the reply has its first next_fire_ms
// and the defaults filled in (overlap, catch-up window).
func (c *Client) CreateSchedule(ctx context.Context, sc *hodeiv1.Schedule) (*hodeiv1.Schedule, error) {
	req := &hodeiv1.CreateScheduleRequest{Schedule: sc, RequestId: NewRequestID()}
	r, err := scheduleCall(c, ctx, sc.GetTenant(), func(ctx context.Context, s hodeiv1.ScheduleServiceClient) (*hodeiv1.ScheduleResponse, error) {
		return s.CreateSchedule(ctx, req)
	})
	return r.GetSchedule(), err
}

// GetSchedule returns a schedule with its replicated bookkeeping (next and
// last fire, counters). The read is linearizable.
func (c *Client) GetSchedule(ctx context.Context, tenant, id string) (*hodeiv1.Schedule, error) {
	r, err := scheduleCall(c, ctx, tenant, func(ctx context.Context, s hodeiv1.ScheduleServiceClient) (*hodeiv1.ScheduleResponse, error) {
		return s.GetSchedule(ctx, &hodeiv1.GetScheduleRequest{Tenant: tenant, Id: id})
	})
	return r.GetSchedule(), err
}

// ListSchedules lists the schedules of tenant ("" = every tenant).
func (c *Client) ListSchedules(ctx context.Context, tenant string) ([]*hodeiv1.Schedule, error) {
	var resp *hodeiv1.ListSchedulesResponse
	err := c.invoke(ctx, c.cfg.CallTimeout, "", func(ctx context.Context, cc *grpc.ClientConn) error {
		r, err := c.schedules(cc).ListSchedules(ctx, &hodeiv1.ListSchedulesRequest{Tenant: tenant})
		resp = r
		return err
	})
	return resp.GetSchedules(), err
}

// PauseSchedule stops a schedule's fires, with a note saying why.
func (c *Client) PauseSchedule(ctx context.Context, tenant, id, note string) (*hodeiv1.Schedule, error) {
	req := &hodeiv1.PauseScheduleRequest{Tenant: tenant, Id: id, Note: note, RequestId: NewRequestID()}
	r, err := scheduleCall(c, ctx, tenant, func(ctx context.Context, s hodeiv1.ScheduleServiceClient) (*hodeiv1.ScheduleResponse, error) {
		return s.PauseSchedule(ctx, req)
	})
	return r.GetSchedule(), err
}

// ResumeSchedule resumes a paused schedule from its first slot after now.
func (c *Client) ResumeSchedule(ctx context.Context, tenant, id string) (*hodeiv1.Schedule, error) {
	req := &hodeiv1.ResumeScheduleRequest{Tenant: tenant, Id: id, RequestId: NewRequestID()}
	r, err := scheduleCall(c, ctx, tenant, func(ctx context.Context, s hodeiv1.ScheduleServiceClient) (*hodeiv1.ScheduleResponse, error) {
		return s.ResumeSchedule(ctx, req)
	})
	return r.GetSchedule(), err
}

// TriggerSchedule runs the schedule's job now, outside its slots.
func (c *Client) TriggerSchedule(ctx context.Context, tenant, id string) (*hodeiv1.TriggerScheduleResponse, error) {
	req := &hodeiv1.TriggerScheduleRequest{Tenant: tenant, Id: id, RequestId: NewRequestID()}
	return scheduleCall(c, ctx, tenant, func(ctx context.Context, s hodeiv1.ScheduleServiceClient) (*hodeiv1.TriggerScheduleResponse, error) {
		return s.TriggerSchedule(ctx, req)
	})
}

// BackfillSchedule creates the jobs of the slots in [fromMs, toMs] (at
// most 1000); slots that already have their job are not run again.
func (c *Client) BackfillSchedule(ctx context.Context, tenant, id string, fromMs, toMs int64) (*hodeiv1.BackfillScheduleResponse, error) {
	req := &hodeiv1.BackfillScheduleRequest{Tenant: tenant, Id: id, FromMs: fromMs, ToMs: toMs, RequestId: NewRequestID()}
	return scheduleCall(c, ctx, tenant, func(ctx context.Context, s hodeiv1.ScheduleServiceClient) (*hodeiv1.BackfillScheduleResponse, error) {
		return s.BackfillSchedule(ctx, req)
	})
}

// DeleteSchedule removes a schedule (the jobs it created stay).
func (c *Client) DeleteSchedule(ctx context.Context, tenant, id string) error {
	req := &hodeiv1.DeleteScheduleRequest{Tenant: tenant, Id: id, RequestId: NewRequestID()}
	_, err := scheduleCall(c, ctx, tenant, func(ctx context.Context, s hodeiv1.ScheduleServiceClient) (*hodeiv1.DeleteScheduleResponse, error) {
		return s.DeleteSchedule(ctx, req)
	})
	return err
}
