package cluster

import (
	"context"
	"net"
	"path/filepath"
	"testing"
	"time"

	"github.com/hodei-io/hodei/proto/hodeiv1"
)

// The test-only ClockOffset (the chaos harness's clock-skew fault) moves
// the time a leader stamps on what it proposes: a job submitted through a
// node whose clock is an hour ahead is created an hour from now.
func TestClockOffsetShiftsReplicatedTime(t *testing.T) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	peers := []Peer{{ID: "n1", Addr: l.Addr().String()}}
	cfg := testConfig(t, "n1", filepath.Join(t.TempDir(), "n1"), l, peers, 1)
	cfg.ClockOffset = time.Hour
	n, err := New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	defer n.Close()
	waitFor(t, 20*time.Second, "the node to be ready", func() bool { return n.Ready() == nil })
	c := newClient(t, peers[0].Addr)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	before := time.Now()
	resp, err := c.Submit(ctx, &hodeiv1.JobSpec{Command: []string{"true"}})
	if err != nil {
		t.Fatal(err)
	}
	created := time.UnixMilli(resp.GetJob().GetCreatedAtMs())
	if d := created.Sub(before); d < time.Hour-time.Minute || d > time.Hour+time.Minute {
		t.Fatalf("created %v after the submit on a node an hour ahead, want about an hour", d)
	}
}
