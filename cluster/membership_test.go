package cluster

import (
	"testing"

	"github.com/hashicorp/raft"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/hodei-io/hodei/fsm"
	"github.com/hodei-io/hodei/proto/internalpb"
)

// A refusal from a remote group leader is final; leadership and
// reachability errors are retried.
func TestRetryableMembership(t *testing.T) {
	for _, c := range []struct {
		err  error
		want bool
	}{
		{&fsm.CodeError{C: internalpb.Code_CODE_FAILED_PRECONDITION, Msg: "x"}, false},
		{status.Error(codes.FailedPrecondition, "would lose quorum"), false},
		{status.Error(codes.InvalidArgument, "bad"), false},
		{status.Error(codes.AlreadyExists, "member"), false},
		{status.Error(codes.Unavailable, "not the leader"), true},
		{status.Error(codes.DeadlineExceeded, "slow"), true},
		{raft.ErrNotLeader, true},
	} {
		if got := retryableMembership(c.err); got != c.want {
			t.Errorf("retryableMembership(%v) = %v, want %v", c.err, got, c.want)
		}
	}
}
