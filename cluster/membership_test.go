package cluster

import (
	"testing"

	"github.com/hashicorp/raft"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/hodei-io/hodei/fsm"
	"github.com/hodei-io/hodei/proto/hodeiv1"
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

func TestReplicaLag(t *testing.T) {
	st := &hodeiv1.StatusResponse{Shards: []*hodeiv1.ShardStatus{
		{Shard: 0, State: "Follower", AppliedIndex: 90},
		{Shard: 1, State: "Candidate", AppliedIndex: 100},
		{Shard: 2, State: "Follower", AppliedIndex: 120},
	}}
	if lag, ok := replicaLag(st, 0, 100); !ok || lag != 10 {
		t.Fatalf("shard 0: lag %d ok %v", lag, ok)
	}
	if _, ok := replicaLag(st, 1, 100); ok {
		t.Fatal("a candidate replica is a balance target")
	}
	if lag, ok := replicaLag(st, 2, 100); !ok || lag != 0 {
		t.Fatalf("shard 2 ahead of the local commit: lag %d ok %v", lag, ok)
	}
	if _, ok := replicaLag(st, 7, 100); ok {
		t.Fatal("missing shard is a balance target")
	}
}
