package transport

// ScheduleService (issue 11, cron): every node serves it; writes run on the
// leader of the tenant's shard (forwarded there, one hop, like job writes),
// reads are linearizable reads of that shard unless the request is
// forwarded with a pinned shard.

import (
	"context"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/hodei-io/hodei/proto/hodeiv1"
)

// ScheduleBackend serves ScheduleService. Writes are called only on the
// shard leader; reads use the local replica after ReadIndex.
type ScheduleBackend interface {
	ValidateSchedule(sc *hodeiv1.Schedule) error
	// The writes take the caller's request id ("" = none): a retry with it
	// gets the first answer.
	CreateSchedule(ctx context.Context, shard uint32, sc *hodeiv1.Schedule, requestID string) (*hodeiv1.Schedule, error)
	PauseSchedule(ctx context.Context, shard uint32, tenant, id string, paused bool, note, requestID string) (*hodeiv1.Schedule, error)
	TriggerSchedule(ctx context.Context, shard uint32, tenant, id, requestID string) (*hodeiv1.Schedule, *hodeiv1.Job, error)
	BackfillSchedule(ctx context.Context, shard uint32, tenant, id string, fromMs, toMs int64, requestID string) (*hodeiv1.Schedule, []*hodeiv1.SubmitJobResponse, error)
	DeleteSchedule(ctx context.Context, shard uint32, tenant, id, requestID string) error
	GetSchedule(shard uint32, tenant, id string) (*hodeiv1.Schedule, bool)
	ListSchedules(shard uint32, tenant string) []*hodeiv1.Schedule
}

type scheduleService struct {
	hodeiv1.UnimplementedScheduleServiceServer
	a *API
	b ScheduleBackend
}

func tenantOr(t string) string {
	if t == "" {
		return "default"
	}
	return t
}

func needID(id string) error {
	if id == "" {
		return invalid("id is required")
	}
	return nil
}

// scheduleNotFound is the answer for a missing schedule and, so that no
// existence leaks, for a schedule of a tenant the caller may not use (auth).
func scheduleNotFound(tenant, id string) error {
	return status.Errorf(codes.NotFound, "schedule %q of tenant %q not found", id, tenantOr(tenant))
}

// scheduleWrite checks a change to schedule (tenant, id): an id, and a
// caller that may submit to tenant (else the schedule is not found).
func scheduleWrite(ctx context.Context, tenant, id string) error {
	if err := needID(id); err != nil {
		return err
	}
	if !maySubmit(ctx, tenant) {
		return scheduleNotFound(tenant, id)
	}
	return nil
}

func (s *scheduleService) CreateSchedule(ctx context.Context, req *hodeiv1.CreateScheduleRequest) (*hodeiv1.ScheduleResponse, error) {
	sc := req.GetSchedule()
	if err := requireSubmit(ctx, sc.GetTenant()); err != nil { // auth
		return nil, err
	}
	if err := s.b.ValidateSchedule(sc); err != nil {
		return nil, invalid("%v", err)
	}
	sh := s.a.b.ShardOfTenant(tenantOr(sc.GetTenant()))
	resp, done, err := forward(s.a, ctx, sh, func(ctx context.Context, cc *grpc.ClientConn) (*hodeiv1.ScheduleResponse, error) {
		return hodeiv1.NewScheduleServiceClient(cc).CreateSchedule(ctx, req)
	})
	if done {
		return resp, err
	}
	out, err := s.b.CreateSchedule(ctx, sh, sc, req.GetRequestId())
	if err != nil {
		return nil, ToStatus(err)
	}
	return &hodeiv1.ScheduleResponse{Schedule: out}, nil
}

// read makes a read of shard sh linearizable: forwarded to its leader, or
// served here after ReadIndex. done means resp/err are the answer.
func readShard[R any](s *scheduleService, ctx context.Context, sh uint32, call func(context.Context, *grpc.ClientConn) (R, error)) (resp R, done bool, err error) {
	if p, ok := pinnedShard(ctx); ok && isForwarded(ctx) && p == sh {
		if err := s.a.b.ReadIndex(ctx, sh); err != nil {
			return resp, true, ToStatus(err)
		}
		return resp, false, nil
	}
	resp, done, err = forward(s.a, ctx, sh, call)
	if done {
		return resp, done, err
	}
	if err := s.a.b.ReadIndex(ctx, sh); err != nil {
		return resp, true, ToStatus(err)
	}
	return resp, false, nil
}

func (s *scheduleService) GetSchedule(ctx context.Context, req *hodeiv1.GetScheduleRequest) (*hodeiv1.ScheduleResponse, error) {
	if err := needID(req.GetId()); err != nil {
		return nil, err
	}
	if !mayRead(ctx, req.GetTenant()) { // auth
		return nil, scheduleNotFound(req.GetTenant(), req.GetId())
	}
	sh := s.a.b.ShardOfTenant(tenantOr(req.GetTenant()))
	resp, done, err := readShard(s, ctx, sh, func(ctx context.Context, cc *grpc.ClientConn) (*hodeiv1.ScheduleResponse, error) {
		return hodeiv1.NewScheduleServiceClient(cc).GetSchedule(ctx, req)
	})
	if done {
		return resp, err
	}
	sc, ok := s.b.GetSchedule(sh, tenantOr(req.GetTenant()), req.GetId())
	if !ok {
		return nil, scheduleNotFound(req.GetTenant(), req.GetId())
	}
	return &hodeiv1.ScheduleResponse{Schedule: sc}, nil
}

func (s *scheduleService) ListSchedules(ctx context.Context, req *hodeiv1.ListSchedulesRequest) (*hodeiv1.ListSchedulesResponse, error) {
	if req.GetTenant() != "" {
		if err := requireRead(ctx, req.GetTenant()); err != nil { // auth
			return nil, err
		}
	}
	var shards []uint32
	if p, ok := pinnedShard(ctx); ok && isForwarded(ctx) {
		shards = []uint32{p}
	} else if req.GetTenant() != "" {
		shards = []uint32{s.a.b.ShardOfTenant(req.GetTenant())}
	} else {
		for i := 0; i < s.a.b.ShardCount(); i++ {
			shards = append(shards, uint32(i))
		}
	}
	out := &hodeiv1.ListSchedulesResponse{}
	for _, sh := range shards {
		resp, done, err := readShard(s, ctx, sh, func(ctx context.Context, cc *grpc.ClientConn) (*hodeiv1.ListSchedulesResponse, error) {
			return hodeiv1.NewScheduleServiceClient(cc).ListSchedules(ctx, req)
		})
		if err != nil {
			return nil, err
		}
		if done {
			out.Schedules = append(out.Schedules, resp.GetSchedules()...)
			continue
		}
		out.Schedules = append(out.Schedules, s.b.ListSchedules(sh, req.GetTenant())...)
	}
	if p := PrincipalFrom(ctx); p != nil && !p.Admin { // auth: only the caller's tenants
		kept := out.Schedules[:0]
		for _, sc := range out.Schedules {
			if p.CanRead(sc.GetTenant()) {
				kept = append(kept, sc)
			}
		}
		out.Schedules = kept
	}
	return out, nil
}

func (s *scheduleService) pause(ctx context.Context, tenant, id string, paused bool, note, requestID string,
	fwd func(context.Context, hodeiv1.ScheduleServiceClient) (*hodeiv1.ScheduleResponse, error)) (*hodeiv1.ScheduleResponse, error) {
	if err := scheduleWrite(ctx, tenant, id); err != nil {
		return nil, err
	}
	sh := s.a.b.ShardOfTenant(tenantOr(tenant))
	resp, done, err := forward(s.a, ctx, sh, func(ctx context.Context, cc *grpc.ClientConn) (*hodeiv1.ScheduleResponse, error) {
		return fwd(ctx, hodeiv1.NewScheduleServiceClient(cc))
	})
	if done {
		return resp, err
	}
	sc, err := s.b.PauseSchedule(ctx, sh, tenantOr(tenant), id, paused, note, requestID)
	if err != nil {
		return nil, ToStatus(err)
	}
	return &hodeiv1.ScheduleResponse{Schedule: sc}, nil
}

func (s *scheduleService) PauseSchedule(ctx context.Context, req *hodeiv1.PauseScheduleRequest) (*hodeiv1.ScheduleResponse, error) {
	return s.pause(ctx, req.GetTenant(), req.GetId(), true, req.GetNote(), req.GetRequestId(), func(ctx context.Context, c hodeiv1.ScheduleServiceClient) (*hodeiv1.ScheduleResponse, error) {
		return c.PauseSchedule(ctx, req)
	})
}

func (s *scheduleService) ResumeSchedule(ctx context.Context, req *hodeiv1.ResumeScheduleRequest) (*hodeiv1.ScheduleResponse, error) {
	return s.pause(ctx, req.GetTenant(), req.GetId(), false, "", req.GetRequestId(), func(ctx context.Context, c hodeiv1.ScheduleServiceClient) (*hodeiv1.ScheduleResponse, error) {
		return c.ResumeSchedule(ctx, req)
	})
}

func (s *scheduleService) TriggerSchedule(ctx context.Context, req *hodeiv1.TriggerScheduleRequest) (*hodeiv1.TriggerScheduleResponse, error) {
	if err := scheduleWrite(ctx, req.GetTenant(), req.GetId()); err != nil {
		return nil, err
	}
	sh := s.a.b.ShardOfTenant(tenantOr(req.GetTenant()))
	resp, done, err := forward(s.a, ctx, sh, func(ctx context.Context, cc *grpc.ClientConn) (*hodeiv1.TriggerScheduleResponse, error) {
		return hodeiv1.NewScheduleServiceClient(cc).TriggerSchedule(ctx, req)
	})
	if done {
		return resp, err
	}
	sc, job, err := s.b.TriggerSchedule(ctx, sh, tenantOr(req.GetTenant()), req.GetId(), req.GetRequestId())
	if err != nil {
		return nil, ToStatus(err)
	}
	return &hodeiv1.TriggerScheduleResponse{Schedule: sc, Job: job}, nil
}

func (s *scheduleService) BackfillSchedule(ctx context.Context, req *hodeiv1.BackfillScheduleRequest) (*hodeiv1.BackfillScheduleResponse, error) {
	if err := scheduleWrite(ctx, req.GetTenant(), req.GetId()); err != nil {
		return nil, err
	}
	if req.GetFromMs() <= 0 || req.GetToMs() < req.GetFromMs() {
		return nil, invalid("from_ms (%d) and to_ms (%d) must be a range of positive times", req.GetFromMs(), req.GetToMs())
	}
	sh := s.a.b.ShardOfTenant(tenantOr(req.GetTenant()))
	resp, done, err := forward(s.a, ctx, sh, func(ctx context.Context, cc *grpc.ClientConn) (*hodeiv1.BackfillScheduleResponse, error) {
		return hodeiv1.NewScheduleServiceClient(cc).BackfillSchedule(ctx, req)
	})
	if done {
		return resp, err
	}
	sc, jobs, err := s.b.BackfillSchedule(ctx, sh, tenantOr(req.GetTenant()), req.GetId(), req.GetFromMs(), req.GetToMs(), req.GetRequestId())
	if err != nil {
		return nil, ToStatus(err)
	}
	return &hodeiv1.BackfillScheduleResponse{Schedule: sc, Jobs: jobs}, nil
}

func (s *scheduleService) DeleteSchedule(ctx context.Context, req *hodeiv1.DeleteScheduleRequest) (*hodeiv1.DeleteScheduleResponse, error) {
	if err := scheduleWrite(ctx, req.GetTenant(), req.GetId()); err != nil {
		return nil, err
	}
	sh := s.a.b.ShardOfTenant(tenantOr(req.GetTenant()))
	resp, done, err := forward(s.a, ctx, sh, func(ctx context.Context, cc *grpc.ClientConn) (*hodeiv1.DeleteScheduleResponse, error) {
		return hodeiv1.NewScheduleServiceClient(cc).DeleteSchedule(ctx, req)
	})
	if done {
		return resp, err
	}
	if err := s.b.DeleteSchedule(ctx, sh, tenantOr(req.GetTenant()), req.GetId(), req.GetRequestId()); err != nil {
		return nil, ToStatus(err)
	}
	return &hodeiv1.DeleteScheduleResponse{}, nil
}
