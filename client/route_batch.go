package client

import (
	"context"
	"fmt"
	"strconv"
	"strings"
	"sync"

	"google.golang.org/genproto/googleapis/rpc/errdetails"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"

	hodeiv1 "github.com/hodei-io/hodei/proto/hodeiv1"
)

// MaxSubmitBatch is the most specs the server takes in one SubmitJobs
// request. SubmitBatch sends larger batches in parts of at most this many,
// and a Submitter's batches are never larger.
const MaxSubmitBatch = 10000

// SubmitBatch is the bulk submit: it submits many jobs and returns their
// results in the order of specs. Any number of specs is accepted.
//
// With leader routing the batch is split per shard, and each shard's part
// (cut into pieces of at most MaxSubmitBatch specs and 16 MiB) is sent to that shard's
// leader, the shards concurrently. Without a known map the batch goes to
// the current node in such pieces, and the node splits it per
// shard. Each part carries its own request id derived from the call's (the
// call's id, then "/<shard>" when there are several shards and ".<piece>"
// when a shard's part is cut), reused on its retries, so a retried part is
// committed once.
//
// Sent as one part (one shard, or an unknown map, and one piece), the batch is validated and committed as a whole and
// an error is the server's, unchanged. Sent in several parts, each part is
// validated and committed on its own: if some fail, the error is a
// *BatchError that tells, per spec, its result (committed) or its part's
// error (see BatchError.GRPCStatus for its status code). A caller that
// resubmits after such an error should resubmit only the failed specs, or
// use idempotency keys.
func (c *Client) SubmitBatch(ctx context.Context, specs []*hodeiv1.JobSpec) ([]*hodeiv1.SubmitJobResponse, error) {
	rid := NewRequestID()
	shards := 0
	if len(specs) > 0 {
		if m := c.routeMap(ctx); m != nil {
			shards = m.shards()
		}
	}
	parts := planBatch(specs, shards, rid)
	if len(parts) == 1 {
		// One part: the specs in request order, the error unchanged.
		res, err := c.submitPart(ctx, parts[0].shard, specs, parts[0].rid)
		if err != nil {
			return nil, err
		}
		return refusedItems(res)
	}

	// One goroutine per shard, sending that shard's pieces in order.
	results := make([]*hodeiv1.SubmitJobResponse, len(specs))
	errs := make([]error, len(parts))
	var wg sync.WaitGroup
	for start := 0; start < len(parts); {
		end := start + 1
		for end < len(parts) && parts[end].shard == parts[start].shard {
			end++
		}
		wg.Add(1)
		go func(group []batchPart, first int) {
			defer wg.Done()
			for i, p := range group {
				sub := make([]*hodeiv1.JobSpec, len(p.idx))
				for j, k := range p.idx {
					sub[j] = specs[k]
				}
				res, err := c.submitPart(ctx, p.shard, sub, p.rid)
				if err != nil {
					errs[first+i] = reindexInvalid(err, p.idx, len(specs))
					continue
				}
				for j, k := range p.idx {
					results[k] = res[j]
				}
			}
		}(parts[start:end], start)
		start = end
	}
	wg.Wait()

	var be *BatchError
	for i, err := range errs {
		if err == nil {
			continue
		}
		if be == nil {
			be = &BatchError{Results: results, Errs: make([]error, len(specs))}
		}
		be.parts = append(be.parts, err)
		for _, k := range parts[i].idx {
			be.Errs[k] = err
		}
	}
	if be != nil {
		for k, r := range results {
			if err := ItemError(r); err != nil {
				results[k], be.Errs[k] = nil, err
				be.parts = append(be.parts, err)
			}
		}
		return nil, be
	}
	return refusedItems(results)
}

// refusedItems returns results, or a *BatchError if the server refused some
// specs on their own (a tenant limit, issue 11 quota: ResourceExhausted;
// nothing was stored for them): Results has the stored specs, Errs the
// refusals.
func refusedItems(results []*hodeiv1.SubmitJobResponse) ([]*hodeiv1.SubmitJobResponse, error) {
	var be *BatchError
	for k, r := range results {
		err := ItemError(r)
		if err == nil {
			continue
		}
		if be == nil {
			be = &BatchError{Results: append([]*hodeiv1.SubmitJobResponse(nil), results...), Errs: make([]error, len(results))}
		}
		be.Results[k], be.Errs[k] = nil, err
		be.parts = append(be.parts, err)
	}
	if be != nil {
		return nil, be
	}
	return results, nil
}

// ItemError is the error of one spec of a SubmitJobs that the server
// refused on its own (SubmitJobResponse.code: a tenant limit gives
// codes.ResourceExhausted and the limit in the message), or nil.
func ItemError(r *hodeiv1.SubmitJobResponse) error {
	if r.GetCode() == "" {
		return nil
	}
	c := codes.Unknown
	switch r.GetCode() {
	case "RESOURCE_EXHAUSTED":
		c = codes.ResourceExhausted
	case "INVALID_ARGUMENT":
		c = codes.InvalidArgument
	case "FAILED_PRECONDITION":
		c = codes.FailedPrecondition
	}
	st := status.New(c, r.GetReason())
	if c == codes.ResourceExhausted {
		if d, err := st.WithDetails(&errdetails.QuotaFailure{Violations: []*errdetails.QuotaFailure_Violation{{Subject: "tenant", Description: r.GetReason()}}}); err == nil {
			st = d
		}
	}
	return st.Err()
}

// IsQuotaRefusal reports whether err is a refusal by a tenant limit
// (ResourceExhausted with a QuotaFailure detail): nothing was stored, and
// retrying at once gets the same answer, so IsRetryable says no.
func IsQuotaRefusal(err error) bool {
	st, ok := status.FromError(err)
	if !ok || st.Code() != codes.ResourceExhausted {
		return false
	}
	for _, d := range st.Details() {
		if _, ok := d.(*errdetails.QuotaFailure); ok {
			return true
		}
	}
	return false
}

// batchPart is one SubmitJobs of a SubmitBatch.
type batchPart struct {
	shard int   // noShard: the current node (the map is unknown)
	idx   []int // indices into the caller's specs, in order
	rid   string
}

// planBatch cuts specs into parts: per shard when shards > 0 (parts of one
// shard adjacent, shards in ascending order), else in request order; each
// part at most MaxSubmitBatch specs and maxPartBytes bytes. The plan is
// fixed for the whole call, so every part keeps its specs and its request
// id across retries.
func planBatch(specs []*hodeiv1.JobSpec, shards int, rid string) []batchPart {
	if shards <= 0 {
		idx := make([]int, len(specs))
		for i := range idx {
			idx[i] = i
		}
		return cutPart(specs, noShard, idx, rid)
	}
	groups := make([][]int, shards)
	used := 0
	for i, sp := range specs {
		sh := shardOf(sp.GetTenant(), shards)
		if groups[sh] == nil {
			used++
		}
		groups[sh] = append(groups[sh], i)
	}
	var parts []batchPart
	for sh, idx := range groups {
		if idx == nil {
			continue
		}
		id := rid
		if used > 1 {
			id = rid + "/" + strconv.Itoa(sh)
		}
		parts = append(parts, cutPart(specs, sh, idx, id)...)
	}
	if len(parts) == 0 { // no specs: let the server answer
		parts = []batchPart{{shard: noShard, rid: rid}}
	}
	return parts
}

// maxPartBytes bounds the encoded specs of one SubmitJobs (a spec larger
// than it goes alone), well below the server's 64 MiB message limit.
const maxPartBytes = 16 << 20

// cutPart cuts idx (indices into specs) into pieces of at most
// MaxSubmitBatch specs and maxPartBytes bytes; the pieces get ids
// "<rid>.<n>" when there are several.
func cutPart(specs []*hodeiv1.JobSpec, shard int, idx []int, rid string) []batchPart {
	var cuts []int // end of each piece but the last
	for i, size := 0, 0; i < len(idx); i++ {
		sz := proto.Size(specs[idx[i]])
		start := 0
		if len(cuts) > 0 {
			start = cuts[len(cuts)-1]
		}
		if i > start && (i-start == MaxSubmitBatch || size+sz > maxPartBytes) {
			cuts = append(cuts, i)
			size = 0
		}
		size += sz
	}
	if len(cuts) == 0 {
		return []batchPart{{shard: shard, idx: idx, rid: rid}}
	}
	out := make([]batchPart, 0, len(cuts)+1)
	start := 0
	for n, end := range append(cuts, len(idx)) {
		out = append(out, batchPart{shard: shard, idx: idx[start:end:end], rid: rid + "." + strconv.Itoa(n)})
		start = end
	}
	return out
}

// submitPart sends one SubmitJobs of specs for shard with request id rid,
// retried like any call, and checks the answer has a result per spec.
func (c *Client) submitPart(ctx context.Context, shard int, specs []*hodeiv1.JobSpec, rid string) ([]*hodeiv1.SubmitJobResponse, error) {
	req := &hodeiv1.SubmitJobsRequest{Specs: specs, RequestId: rid}
	var resp *hodeiv1.SubmitJobsResponse
	err := c.invokeShard(ctx, c.cfg.CallTimeout, shard, func(ctx context.Context, cc *grpc.ClientConn) error {
		r, err := c.jobs(cc).SubmitJobs(ctx, req)
		resp = r
		return err
	})
	if err != nil {
		return nil, err
	}
	if got := len(resp.GetResults()); got != len(specs) {
		return nil, status.Errorf(codes.Internal, "client: %d results for %d specs", got, len(specs))
	}
	return resp.GetResults(), nil
}

// BatchError is the error of a SubmitBatch sent in several parts of which
// some failed, or of which the server refused some specs on their own (a
// tenant limit: ResourceExhausted per spec). The specs with a result are
// committed.
type BatchError struct {
	// Results has, per spec, its result, or nil if its part failed.
	Results []*hodeiv1.SubmitJobResponse
	// Errs has, per spec, its part's error, or nil if it was committed.
	// The index in an InvalidArgument message ("spec N: ...") is the
	// spec's index in the whole batch.
	Errs []error

	parts []error // the failed parts' errors, once each
}

// first returns the index and error of the first failed spec.
func (e *BatchError) first() (int, error) {
	for i, err := range e.Errs {
		if err != nil {
			return i, err
		}
	}
	return -1, nil
}

func (e *BatchError) Error() string {
	failed := 0
	for _, err := range e.Errs {
		if err != nil {
			failed++
		}
	}
	i, err := e.first()
	return fmt.Sprintf("client: %d of %d specs failed (first: spec %d: %v)", failed, len(e.Errs), i, err)
}

// Unwrap returns the failed parts' errors, for errors.Is and errors.As.
func (e *BatchError) Unwrap() []error { return e.parts }

// GRPCStatus makes status.Code work on a BatchError: it is the status of
// the first failed spec whose outcome is unknown (a retryable error, see
// IsRetryable), else of the first failed spec. A code of a definite failure
// (InvalidArgument, ...) is then true of the failed specs only: Results
// tells which specs were committed.
func (e *BatchError) GRPCStatus() *status.Status {
	_, err := e.first()
	for _, pe := range e.Errs {
		if pe != nil && IsRetryable(pe) {
			err = pe
			break
		}
	}
	if st, ok := status.FromError(err); ok {
		return st
	}
	return status.New(codes.Unknown, err.Error())
}

// reindexInvalid rewrites an InvalidArgument of a part of a total-spec
// batch so that its "spec N" names the spec's index in the whole batch, as
// the server would for the batch sent whole. Other errors are unchanged.
func reindexInvalid(err error, idx []int, total int) error {
	st, ok := status.FromError(err)
	if !ok || st.Code() != codes.InvalidArgument || total <= 1 {
		return err
	}
	msg := st.Message()
	if k, rest, ok := specIndex(msg); ok && k < len(idx) {
		return status.Errorf(codes.InvalidArgument, "spec %d%s", idx[k], rest)
	}
	if len(idx) == 1 {
		// A one-spec part's error has no index.
		return status.Errorf(codes.InvalidArgument, "spec %d: %s", idx[0], msg)
	}
	return err
}

// specIndex parses the server's "spec N: ..." / "spec N is empty"
// InvalidArgument message of a batch: N and what follows it.
func specIndex(msg string) (int, string, bool) {
	rest, ok := strings.CutPrefix(msg, "spec ")
	if !ok {
		return 0, "", false
	}
	n := 0
	for n < len(rest) && rest[n] >= '0' && rest[n] <= '9' {
		n++
	}
	if n == 0 || n == len(rest) || (rest[n] != ':' && rest[n] != ' ') || !canonicalUint(rest[:n]) {
		return 0, "", false
	}
	k, err := strconv.Atoi(rest[:n])
	if err != nil {
		return 0, "", false
	}
	return k, rest[n:], true
}
