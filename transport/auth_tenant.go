package transport

import (
	"context"
	"fmt"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/hodei-io/hodei/proto/hodeiv1"
)

// Tenant narrowing in the handlers (issue 12). The interceptor checked that
// the caller holds some role of the method's kind; these say whether it
// holds it for the tenant at hand. A nil principal means auth is off.
//
// A request that names a tenant the caller lacks is PermissionDenied
// (nothing about the tenant's objects is revealed); a request about an
// object (a job, a schedule) of a tenant the caller may not read answers
// exactly as a missing object does, NotFound, so that a token cannot learn
// whether another tenant's id exists.

// requireSubmit refuses a write to tenant t by a caller without submit on t.
func requireSubmit(ctx context.Context, t string) error {
	if p := PrincipalFrom(ctx); p != nil && !p.CanSubmit(t) {
		return permissionDenied(p, fmt.Sprintf("submit to tenant %q", normTenant(t)))
	}
	return nil
}

// requireRead refuses a read of tenant t by a caller without read on t.
func requireRead(ctx context.Context, t string) error {
	if p := PrincipalFrom(ctx); p != nil && !p.CanRead(t) {
		return permissionDenied(p, fmt.Sprintf("read tenant %q", normTenant(t)))
	}
	return nil
}

// mayRead reports whether the caller may see tenant t's objects.
func mayRead(ctx context.Context, t string) bool {
	p := PrincipalFrom(ctx)
	return p == nil || p.CanRead(t)
}

// maySubmit reports whether the caller may change tenant t's objects.
func maySubmit(ctx context.Context, t string) bool {
	p := PrincipalFrom(ctx)
	return p == nil || p.CanSubmit(t)
}

// mayWork reports whether the caller, a worker, may hold tenant t's jobs.
func mayWork(ctx context.Context, t string) bool {
	p := PrincipalFrom(ctx)
	return p == nil || p.CanWork(t)
}

// isAdmin reports whether the caller has the admin role (or auth is off).
func isAdmin(ctx context.Context) bool {
	p := PrincipalFrom(ctx)
	return p == nil || p.Admin
}

// jobNotFound is the answer for a missing job and for another tenant's.
func jobNotFound(id string) error {
	return status.Errorf(codes.NotFound, "job %s not found", id)
}

// readableJob returns NotFound unless the caller may read job's tenant.
func readableJob(ctx context.Context, id string, job *hodeiv1.Job) error {
	if job == nil || !mayRead(ctx, job.GetSpec().GetTenant()) {
		return jobNotFound(id)
	}
	return nil
}

// workerLimits narrows a worker's hello or lease to its token: the tenants
// it may lease (nil = every tenant) and the kinds, the intersection of
// what it asks for and what the token allows. A worker that asks only for
// kinds its token does not allow is refused.
func workerLimits(ctx context.Context, kinds []string) (tenants, outKinds []string, err error) {
	p := PrincipalFrom(ctx)
	if p == nil || p.Admin || p.IsNode() {
		return nil, kinds, nil
	}
	if p.WorkerKinds == nil {
		return p.WorkerTenants, kinds, nil
	}
	if len(kinds) == 0 {
		return p.WorkerTenants, p.WorkerKinds, nil
	}
	allowed := make(map[string]bool, len(p.WorkerKinds))
	for _, k := range p.WorkerKinds {
		allowed[k] = true
	}
	for _, k := range kinds {
		if allowed[k] {
			outKinds = append(outKinds, k)
		}
	}
	if len(outKinds) == 0 {
		return nil, nil, permissionDenied(p, fmt.Sprintf("run kinds %v (the token allows %v)", kinds, p.WorkerKinds))
	}
	return p.WorkerTenants, outKinds, nil
}

// workerMayTouch reports whether the calling worker may extend or complete
// job id: the job's tenant, read on this node's replica, is one its token
// allows. A job this replica does not hold is refused too (the answer of
// an unknown job). Unlimited workers, admins and nodes skip the lookup.
func (a *API) workerMayTouch(ctx context.Context, id string) bool {
	p := PrincipalFrom(ctx)
	if p == nil || p.Admin || p.IsNode() || (p.Worker && p.WorkerTenants == nil) {
		return true
	}
	t, ok := a.localJobTenant(id)
	return ok && p.CanWork(t)
}

// readableJobs keeps the jobs the caller may read (all of them when auth
// is off or the caller is an admin, without copying).
func readableJobs(ctx context.Context, jobs []*hodeiv1.Job) []*hodeiv1.Job {
	p := PrincipalFrom(ctx)
	if p == nil || p.Admin {
		return jobs
	}
	out := jobs[:0:0]
	for _, j := range jobs {
		if p.CanRead(j.GetSpec().GetTenant()) {
			out = append(out, j)
		}
	}
	return out
}

// leaderJobWritable runs on the shard's leader before a change to job id
// (cancel, retry): a job of a tenant the caller may not submit to answers
// as a missing one. The leader's replica holds every committed job; a job
// it does not hold is left to the backend's own NotFound.
func (a *API) leaderJobWritable(ctx context.Context, sh uint32, id string) error {
	p := PrincipalFrom(ctx)
	if p == nil || p.Admin {
		return nil
	}
	t, ok := "", false
	if a.auth != nil {
		t, ok = a.auth.JobTenant(sh, id)
	}
	if !ok || !p.CanSubmit(t) {
		return jobNotFound(id)
	}
	return nil
}

// localReadable reports whether the caller may read job id, by its tenant
// in this node's replica (a job the replica does not hold is refused).
func (a *API) localReadable(ctx context.Context, id string) bool {
	p := PrincipalFrom(ctx)
	if p == nil || p.Admin {
		return true
	}
	t, ok := a.localJobTenant(id)
	return ok && p.CanRead(t)
}

// localJobTenant is job id's tenant in this node's replica (false for a
// malformed id or a job the replica does not hold).
func (a *API) localJobTenant(id string) (string, bool) {
	if a.auth == nil {
		return "", false
	}
	sh, err := a.b.ShardOfJob(id)
	if err != nil {
		return "", false
	}
	return a.auth.JobTenant(sh, id)
}

// refusedReason is what a worker is told about another tenant's job: the
// answer for an unknown job, so nothing about it leaks.
const refusedReason = "unknown job"

// splitCompletions keeps the completions the calling worker may make and
// answers the others (another tenant's job) as an unknown job.
func (a *API) splitCompletions(ctx context.Context, cs []*hodeiv1.Completion) (ok []*hodeiv1.Completion, refused []*hodeiv1.CompletionResult) {
	p := PrincipalFrom(ctx)
	if p == nil || p.Admin || p.IsNode() || p.WorkerTenants == nil {
		return cs, nil
	}
	ok = cs[:0:0]
	for _, c := range cs {
		if a.workerMayTouch(ctx, c.GetJobId()) {
			ok = append(ok, c)
		} else {
			refused = append(refused, &hodeiv1.CompletionResult{JobId: c.GetJobId(), Token: c.GetToken(), Code: "NOT_FOUND", Reason: refusedReason})
		}
	}
	return ok, refused
}

// splitExtends is splitCompletions for lease extensions.
func (a *API) splitExtends(ctx context.Context, refs []*hodeiv1.LeaseRef) (ok []*hodeiv1.LeaseRef, refused []*hodeiv1.ExtendResult) {
	p := PrincipalFrom(ctx)
	if p == nil || p.Admin || p.IsNode() || p.WorkerTenants == nil {
		return refs, nil
	}
	ok = refs[:0:0]
	for _, r := range refs {
		if a.workerMayTouch(ctx, r.GetJobId()) {
			ok = append(ok, r)
		} else {
			refused = append(refused, &hodeiv1.ExtendResult{JobId: r.GetJobId(), Reason: refusedReason})
		}
	}
	return ok, refused
}

// completeSome records the allowed completions of a unary CompleteJobs and
// answers every item in request order, the refused ones as unknown jobs.
func (s *workerService) completeSome(ctx context.Context, all, ok []*hodeiv1.Completion, refused []*hodeiv1.CompletionResult) (*hodeiv1.CompleteJobsResponse, error) {
	var res []*hodeiv1.CompletionResult
	if len(ok) > 0 {
		var err error
		if res, err = s.a.workers.CompleteJobs(ctx, ok); err != nil {
			return nil, ToStatus(err)
		}
	}
	out := make([]*hodeiv1.CompletionResult, 0, len(all))
	for _, c := range all {
		if len(refused) > 0 && refused[0].GetJobId() == c.GetJobId() && refused[0].GetToken() == c.GetToken() {
			out, refused = append(out, refused[0]), refused[1:]
			continue
		}
		if len(res) == 0 {
			return nil, status.Errorf(codes.Internal, "%d completion results for %d items", len(out), len(all))
		}
		out, res = append(out, res[0]), res[1:]
	}
	return &hodeiv1.CompleteJobsResponse{Results: out}, nil
}
