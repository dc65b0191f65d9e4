package transport

import (
	"context"
	"errors"
	"fmt"
	"testing"

	"github.com/hashicorp/raft"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/hodei-io/hodei/proto/internalpb"
)

type testCoded struct{}

func (testCoded) Error() string         { return "CODE_INVALID_ARGUMENT: lease: worker_id is empty" }
func (testCoded) Code() internalpb.Code { return internalpb.Code_CODE_INVALID_ARGUMENT }

// What leaseShard can return, locally or from a forward (through
// forwardErr), and whether the long-poll may move on (nothing proposed,
// or refused) or must retry the same id (the outcome is unknown).
func TestLeaseOutcomeOf(t *testing.T) {
	unavailable := status.Error(codes.Unavailable, "x")
	for _, tc := range []struct {
		name string
		err  error
		want leaseOutcome
	}{
		{"no leader known", fmt.Errorf("shard 1: %w", ErrNoLeader), leaseNotProposed},
		{"not the leader", raft.ErrNotLeader, leaseNotProposed},
		{"transfer in progress", raft.ErrLeadershipTransferInProgress, leaseNotProposed},
		{"enqueue timeout", raft.ErrEnqueueTimeout, leaseNotProposed},
		{"connect failed", notProposedError{status.Error(codes.Unavailable, "connect")}, leaseNotProposed},
		{"forward with not-proposed trailer", notProposedError{forwardErr(unavailable)}, leaseNotProposed},
		{"FSM refused", testCoded{}, leaseRejected},
		{"forward refused", forwardErr(status.Error(codes.InvalidArgument, "x")), leaseRejected},
		{"forward failed precondition", forwardErr(status.Error(codes.FailedPrecondition, "x")), leaseRejected},
		{"leadership lost", raft.ErrLeadershipLost, leaseUnknown},
		{"raft shut down", raft.ErrRaftShutdown, leaseUnknown},
		{"local deadline", context.DeadlineExceeded, leaseUnknown},
		{"forward deadline", forwardErr(status.Error(codes.DeadlineExceeded, "x")), leaseUnknown},
		{"forward canceled", forwardErr(status.Error(codes.Canceled, "x")), leaseUnknown},
		{"forward unavailable", forwardErr(unavailable), leaseUnknown},
		{"leader's leadership lost, forwarded", forwardErr(ToStatus(raft.ErrLeadershipLost)), leaseUnknown},
		{"forward reply too large", forwardErr(status.Error(codes.ResourceExhausted, "x")), leaseUnknown},
		{"plain error", errors.New("boom"), leaseUnknown},
	} {
		if got := leaseOutcomeOf(tc.err); got != tc.want {
			t.Errorf("%s (%v): outcome %d, want %d", tc.name, tc.err, got, tc.want)
		}
	}
	// The wrapper keeps the status for the caller.
	if c := status.Code(ToStatus(notProposedError{unavailable})); c != codes.Unavailable {
		t.Errorf("ToStatus of a not-proposed Unavailable: %v", c)
	}
}

func TestLeaseID(t *testing.T) {
	if got := leaseID("r", 3, 0); got != "r/3" {
		t.Errorf("first id %q, want r/3 (the per-shard id a caller's retry meets)", got)
	}
	if got := leaseID("r", 3, 2); got != "r/3/2" {
		t.Errorf("third id %q, want r/3/2", got)
	}
	if a, b := newLeaseRequestID(), newLeaseRequestID(); a == b || a == "" {
		t.Errorf("server request ids %q, %q", a, b)
	}
}
