package transport

import (
	"errors"
	"fmt"
	"testing"

	"github.com/hashicorp/raft"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

func TestProposedNothingAndRejected(t *testing.T) {
	for _, err := range []error{ErrNoLeader, raft.ErrNotLeader, fmt.Errorf("x: %w", raft.ErrLeadershipTransferInProgress), raft.ErrEnqueueTimeout, fmt.Errorf("closing (%w)", ErrUnavailable)} {
		if !proposedNothing(err) {
			t.Errorf("proposedNothing(%v) = false", err)
		}
	}
	for _, err := range []error{raft.ErrLeadershipLost, errors.New("timeout"), status.Error(codes.Unavailable, "reply lost")} {
		if proposedNothing(err) {
			t.Errorf("proposedNothing(%v) = true: the outcome is unknown", err)
		}
	}
	if !Rejected(status.Error(codes.InvalidArgument, "bad")) || Rejected(status.Error(codes.Unavailable, "x")) || Rejected(errors.New("plain")) {
		t.Error("Rejected")
	}
}
