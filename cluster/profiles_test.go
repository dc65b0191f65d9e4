package cluster

import (
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/hodei-io/hodei/fsm"
	"github.com/hodei-io/hodei/proto/hodeiv1"
)

func TestUnmatchedReport(t *testing.T) {
	n := &Node{}
	c, err := fsm.ParseConstraint("gpu")
	if err != nil {
		t.Fatal(err)
	}
	now := time.Now()
	job := &hodeiv1.Job{State: hodeiv1.JobState_JOB_STATE_PENDING, ReadyAtMs: now.UnixMilli(),
		Spec: &hodeiv1.JobSpec{Command: []string{"true"}, Constraints: []*hodeiv1.Constraint{c}}}
	if got := n.unmatched(job); got != "" {
		t.Fatalf("just ready, no worker seen: %q", got)
	}
	job.ReadyAtMs = now.Add(-unmatchedGrace).UnixMilli()
	if got := n.unmatched(job); !strings.Contains(got, "no worker that can run it asked for work") {
		t.Fatalf("ready for the grace, no worker seen: %q", got)
	}
	n.profiles.note([]*hodeiv1.KeyValue{{Key: "zone", Value: "a"}}, nil, now)
	if got := n.unmatched(job); got != "no connected worker has label gpu" {
		t.Fatalf("a worker without gpu seen: %q", got)
	}
	n.profiles.note([]*hodeiv1.KeyValue{{Key: "gpu", Value: "1"}}, nil, now)
	if got := n.unmatched(job); got != "" {
		t.Fatalf("a gpu worker seen: %q", got)
	}
	job.State = hodeiv1.JobState_JOB_STATE_RUNNING
	if got := n.unmatched(job); got != "" {
		t.Fatalf("running: %q", got)
	}
	// Old profiles leave the window; the book stays bounded.
	var pb profileBook
	pb.note(nil, []string{"old"}, now.Add(-2*profileWindow))
	for i := 0; i < maxProfiles+10; i++ {
		pb.note([]*hodeiv1.KeyValue{{Key: "k", Value: fmt.Sprint(i)}}, nil, now)
	}
	if got := len(pb.recent(now)); got != maxProfiles {
		t.Fatalf("%d profiles kept, want %d", got, maxProfiles)
	}
}
