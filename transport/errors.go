package transport

import (
	"context"
	"errors"
	"strings"

	"github.com/hashicorp/raft"
	"google.golang.org/genproto/googleapis/rpc/errdetails"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/hodei-io/hodei/proto/hodeiv1"
	"github.com/hodei-io/hodei/proto/internalpb"
)

// ErrNoLeader is returned when a shard has no known leader within the request's patience.
var ErrNoLeader = errors.New("no leader known for this shard")

// CodedError is implemented by errors that carry a deterministic FSM result code.
type CodedError interface {
	error
	Code() internalpb.Code
}

// ErrUnavailable marks an error of the backend that a caller should retry
// elsewhere or later (the node is shutting down or starting).
var ErrUnavailable = errors.New("unavailable")

// ToStatus maps any error of the server to a gRPC status. It is the one
// place where errors become gRPC codes.
func ToStatus(err error) error {
	if err == nil {
		return nil
	}
	if _, ok := status.FromError(err); ok {
		return err
	}
	var ce CodedError
	if errors.As(err, &ce) {
		return status.Error(codeOf(ce.Code()), strings.TrimPrefix(ce.Error(), ce.Code().String()+": "))
	}
	switch {
	case errors.Is(err, context.DeadlineExceeded):
		return status.Error(codes.DeadlineExceeded, err.Error())
	case errors.Is(err, context.Canceled):
		return status.Error(codes.Canceled, err.Error())
	case errors.Is(err, raft.ErrNotLeader),
		errors.Is(err, raft.ErrLeadershipLost),
		errors.Is(err, raft.ErrLeadershipTransferInProgress),
		errors.Is(err, raft.ErrRaftShutdown),
		errors.Is(err, raft.ErrEnqueueTimeout),
		errors.Is(err, ErrNoLeader),
		errors.Is(err, ErrUnavailable):
		// The outcome may be unknown (leadership lost after proposing):
		// clients retry with the same request id, which the FSM dedupes.
		return status.Error(codes.Unavailable, err.Error())
	}
	return status.Error(codes.Internal, err.Error())
}

func codeOf(c internalpb.Code) codes.Code {
	switch c {
	case internalpb.Code_CODE_OK:
		return codes.OK
	case internalpb.Code_CODE_INVALID_ARGUMENT:
		return codes.InvalidArgument
	case internalpb.Code_CODE_NOT_FOUND:
		return codes.NotFound
	case internalpb.Code_CODE_FAILED_PRECONDITION:
		return codes.FailedPrecondition
	case internalpb.Code_CODE_ALREADY_EXISTS:
		return codes.AlreadyExists
	case internalpb.Code_CODE_RESOURCE_EXHAUSTED:
		return codes.ResourceExhausted
	}
	return codes.Unknown
}

// invalid returns an InvalidArgument status.
func invalid(format string, args ...any) error {
	return status.Errorf(codes.InvalidArgument, format, args...)
}

// ItemError is the gRPC error of a SubmitJobResponse refused on its own
// (issue 11 quota: code RESOURCE_EXHAUSTED and the limit in reason), nil
// for a stored or duplicate spec.
func ItemError(r *hodeiv1.SubmitJobResponse) error {
	if r.GetCode() == "" {
		return nil
	}
	c := codes.Unknown
	if v, ok := codeByName[r.GetCode()]; ok {
		c = v
	}
	st := status.New(c, r.GetReason())
	if c == codes.ResourceExhausted {
		// A QuotaFailure detail tells clients this is a tenant limit, not
		// an overloaded server: retrying the same call will not help.
		if d, err := st.WithDetails(&errdetails.QuotaFailure{Violations: []*errdetails.QuotaFailure_Violation{{Subject: "tenant", Description: r.GetReason()}}}); err == nil {
			st = d
		}
	}
	return st.Err()
}

var codeByName = map[string]codes.Code{
	"RESOURCE_EXHAUSTED":  codes.ResourceExhausted,
	"INVALID_ARGUMENT":    codes.InvalidArgument,
	"FAILED_PRECONDITION": codes.FailedPrecondition,
	"NOT_FOUND":           codes.NotFound,
	"UNAVAILABLE":         codes.Unavailable,
}
