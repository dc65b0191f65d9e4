package fsm

import (
	"testing"

	"google.golang.org/protobuf/proto"

	"github.com/hodei-io/hodei/proto/hodeiv1"
)

// A lease applied again under its request id (the API's retry of a lease
// whose outcome it did not learn) answers with the original grant, tokens
// included, and grants nothing more, even with ready jobs left; once a
// granted job has moved on, its lease is no longer valid and is left out
// of the answer. A lease under a new id grants afresh.
func TestLeaseDedupReturnsOriginalGrant(t *testing.T) {
	h := newHarness(t)
	h.ok(submitCmd(spec("a"), spec("b"), spec("c"), spec("d"), spec("e")))
	first := h.ok(withRID("r1/0", leaseCmd("w", 2)))
	if len(first.GetLeases()) != 2 {
		t.Fatalf("first lease granted %d jobs, want 2", len(first.GetLeases()))
	}
	before := h.digest()
	again := h.ok(withRID("r1/0", leaseCmd("w", 2)))
	if !proto.Equal(first, again) {
		t.Fatalf("repeated lease answered\n%v\nwant the original\n%v", again, first)
	}
	if h.digest() != before {
		t.Fatal("repeated lease changed the state")
	}
	for _, l := range first.GetLeases() {
		j := h.job(l.GetJob().GetId())
		if j.GetAttempts() != 1 || j.GetLeaseToken() != l.GetToken() || j.GetState() != hodeiv1.JobState_JOB_STATE_RUNNING {
			t.Fatalf("job %s: attempts %d token %d state %v, want 1, %d, RUNNING", j.GetId(), j.GetAttempts(), j.GetLeaseToken(), j.GetState(), l.GetToken())
		}
	}
	// After one of its jobs completed: the other lease, as granted.
	l0 := first.GetLeases()[0]
	h.ok(completeCmd(l0.GetJob().GetId(), l0.GetToken(), true, false))
	if again := h.ok(withRID("r1/0", leaseCmd("w", 2))); len(again.GetLeases()) != 1 || !proto.Equal(again.GetLeases()[0], first.GetLeases()[1]) {
		t.Fatalf("repeated lease after a completion answered %v, want only %v", again, first.GetLeases()[1])
	}
	// A new id leases the remaining ready jobs.
	if next := h.ok(withRID("r1/0/1", leaseCmd("w", 5))); len(next.GetLeases()) != 3 {
		t.Fatalf("lease under a new id granted %d jobs, want 3", len(next.GetLeases()))
	}
}
