package transport

import (
	"bytes"
	"errors"
	"io"
	"reflect"
	"sync/atomic"
	"testing"
	"time"

	"github.com/hashicorp/raft"
)

// serveGroup answers every RPC of tr from a goroutine until stop is closed:
// AppendEntries succeed with LastLog = last entry index (or echo of
// PrevLogEntry), snapshots are read fully and their size checked.
func serveGroup(t *testing.T, tr RaftTransport, stop <-chan struct{}, seen func(raft.RPC)) <-chan struct{} {
	done := make(chan struct{})
	go func() {
		defer close(done)
		for {
			select {
			case rpc := <-tr.Consumer():
				if seen != nil {
					seen(rpc)
				}
				switch cmd := rpc.Command.(type) {
				case *raft.AppendEntriesRequest:
					last := cmd.PrevLogEntry
					if n := len(cmd.Entries); n > 0 {
						last = cmd.Entries[n-1].Index
					}
					rpc.Respond(&raft.AppendEntriesResponse{Term: cmd.Term, LastLog: last, Success: true}, nil)
				case *raft.InstallSnapshotRequest:
					n, err := io.Copy(io.Discard, rpc.Reader)
					if err == nil && n != cmd.Size {
						err = errors.New("short snapshot")
					}
					rpc.Respond(&raft.InstallSnapshotResponse{Term: cmd.Term, Success: err == nil}, err)
				case *raft.TimeoutNowRequest:
					rpc.Respond(&raft.TimeoutNowResponse{}, nil)
				default:
					rpc.Respond(nil, errors.New("unexpected"))
				}
			case <-stop:
				return
			}
		}
	}()
	return done
}

// Pipelined requests are answered in order through Consumer(), entries
// arrive intact, and at most pipelineWindow are in flight.
func TestRaftPipelineInOrder(t *testing.T) {
	c := newTestCluster(t, 2, nil, clusterOpts{})
	a, b := c.nodes[0], c.nodes[1]
	trB := b.net.Transport(3)
	stop := make(chan struct{})
	var got atomic.Pointer[raft.Log]
	done := serveGroup(t, trB, stop, func(rpc raft.RPC) {
		if req, ok := rpc.Command.(*raft.AppendEntriesRequest); ok && len(req.Entries) > 0 {
			got.Store(req.Entries[0])
		}
	})
	defer func() { close(stop); <-done }()

	p, err := a.net.Transport(3).AppendEntriesPipeline("n2", raft.ServerAddress(b.addr))
	if err != nil {
		t.Fatal(err)
	}
	const n = 1000
	at := time.Unix(1700000000, 123456789)
	results := make(chan error, 1)
	go func() {
		for i := 1; i <= n; i++ {
			f := <-p.Consumer()
			if err := f.Error(); err != nil {
				results <- err
				return
			}
			if f.Response().LastLog != uint64(i) || f.Request().Entries[0].Index != uint64(i) {
				results <- errors.New("out of order")
				return
			}
		}
		results <- nil
	}()
	for i := 1; i <= n; i++ {
		req := &raft.AppendEntriesRequest{
			RPCHeader:    raft.RPCHeader{ProtocolVersion: raft.ProtocolVersionMax, ID: []byte("n1"), Addr: []byte(a.addr)},
			Term:         2,
			Leader:       []byte(a.addr),
			PrevLogEntry: uint64(i - 1), PrevLogTerm: 2, LeaderCommitIndex: uint64(i - 1),
			Entries: []*raft.Log{{Index: uint64(i), Term: 2, Type: raft.LogCommand, Data: bytes.Repeat([]byte{byte(i)}, 100), Extensions: []byte("ext"), AppendedAt: at}},
		}
		if _, err := p.AppendEntries(req, new(raft.AppendEntriesResponse)); err != nil {
			t.Fatalf("append %d: %v", i, err)
		}
	}
	select {
	case err := <-results:
		if err != nil {
			t.Fatal(err)
		}
	case <-time.After(20 * time.Second):
		t.Fatal("pipeline responses did not arrive")
	}
	want := &raft.Log{Index: n, Term: 2, Type: raft.LogCommand, Data: bytes.Repeat([]byte{byte(n % 256)}, 100), Extensions: []byte("ext"), AppendedAt: at}
	if l := got.Load(); l.Index != want.Index || !bytes.Equal(l.Data, want.Data) || !bytes.Equal(l.Extensions, want.Extensions) || !l.AppendedAt.Equal(at) || l.Type != want.Type || l.Term != want.Term {
		t.Fatalf("entry arrived as %+v, want %+v", l, want)
	}
	if err := p.Close(); err != nil {
		t.Fatal(err)
	}
	if _, err := p.AppendEntries(&raft.AppendEntriesRequest{Term: 2}, new(raft.AppendEntriesResponse)); !errors.Is(err, raft.ErrPipelineShutdown) {
		t.Fatalf("append after close: %v", err)
	}
}

// Closing the receiving group fails the pipeline: in-flight futures carry
// an error and later appends fail, so raft falls back and retries.
func TestRaftPipelineFailsWhenPeerCloses(t *testing.T) {
	c := newTestCluster(t, 2, nil, clusterOpts{})
	a, b := c.nodes[0], c.nodes[1]
	trB := b.net.Transport(3) // never consumed: requests wait in the handler
	p, err := a.net.Transport(3).AppendEntriesPipeline("n2", raft.ServerAddress(b.addr))
	if err != nil {
		t.Fatal(err)
	}
	defer func() { _ = p.Close() }()
	if _, err := p.AppendEntries(&raft.AppendEntriesRequest{Term: 1, PrevLogEntry: 1}, new(raft.AppendEntriesResponse)); err != nil {
		t.Fatal(err)
	}
	_ = trB.Close()
	select {
	case f := <-p.Consumer():
		if f.Error() == nil {
			t.Fatal("future succeeded after the peer closed")
		}
	case <-time.After(10 * time.Second):
		t.Fatal("no failed future after the peer closed")
	}
	waitFor(t, 5*time.Second, "appends to fail", func() bool {
		_, err := p.AppendEntries(&raft.AppendEntriesRequest{Term: 1, PrevLogEntry: 2}, new(raft.AppendEntriesResponse))
		if err == nil {
			<-p.Consumer()
		}
		return err != nil
	})
}

// Heartbeats take the fast path when a handler is set, other RPCs the
// consumer; every raft struct survives the round trip.
func TestRaftHeartbeatFastPathAndRoundTrip(t *testing.T) {
	c := newTestCluster(t, 2, nil, clusterOpts{})
	a, b := c.nodes[0], c.nodes[1]
	trA, trB := a.net.Transport(5), b.net.Transport(5)
	var hb atomic.Int64
	trB.SetHeartbeatHandler(func(rpc raft.RPC) {
		hb.Add(1)
		rpc.Respond(&raft.AppendEntriesResponse{Term: 9, Success: true}, nil)
	})
	var consumed atomic.Int64
	var lastCmd atomic.Pointer[any]
	stop := make(chan struct{})
	done := serveGroup(t, trB, stop, func(rpc raft.RPC) {
		consumed.Add(1)
		cmd := rpc.Command
		lastCmd.Store(&cmd)
	})
	defer func() { close(stop); <-done }()
	target := raft.ServerAddress(b.addr)
	hdr := raft.RPCHeader{ProtocolVersion: 3, ID: []byte("n1"), Addr: []byte(a.addr)}

	var resp raft.AppendEntriesResponse
	if err := trA.AppendEntries("n2", target, &raft.AppendEntriesRequest{RPCHeader: hdr, Term: 9, Leader: []byte(a.addr)}, &resp); err != nil {
		t.Fatal(err)
	}
	if hb.Load() != 1 || consumed.Load() != 0 || resp.Term != 9 || !resp.Success {
		t.Fatalf("heartbeat: hb=%d consumed=%d resp=%+v", hb.Load(), consumed.Load(), resp)
	}
	if err := trA.AppendEntries("n2", target, &raft.AppendEntriesRequest{RPCHeader: hdr, Term: 9, Leader: []byte(a.addr), LeaderCommitIndex: 4}, &resp); err != nil {
		t.Fatal(err)
	}
	if hb.Load() != 1 || consumed.Load() != 1 {
		t.Fatalf("non-heartbeat took the fast path: hb=%d consumed=%d", hb.Load(), consumed.Load())
	}

	tn := &raft.TimeoutNowRequest{RPCHeader: hdr}
	if err := trA.TimeoutNow("n2", target, tn, new(raft.TimeoutNowResponse)); err != nil {
		t.Fatal(err)
	}
	if got := *lastCmd.Load(); !reflect.DeepEqual(got, tn) {
		t.Fatalf("TimeoutNow arrived as %#v", got)
	}

	// Snapshot spanning several chunks, then one of zero bytes.
	for _, size := range []int{2*snapshotChunkSize + 17, 0} {
		data := bytes.Repeat([]byte{7}, size)
		req := &raft.InstallSnapshotRequest{RPCHeader: hdr, SnapshotVersion: 1, Term: 9, Leader: []byte(a.addr), LastLogIndex: 100, LastLogTerm: 8, Configuration: []byte("cfg"), ConfigurationIndex: 3, Size: int64(size)}
		var sresp raft.InstallSnapshotResponse
		if err := trA.InstallSnapshot("n2", target, req, &sresp, bytes.NewReader(data)); err != nil {
			t.Fatalf("snapshot of %d bytes: %v", size, err)
		}
		if !sresp.Success || sresp.Term != 9 {
			t.Fatalf("snapshot response %+v", sresp)
		}
		got, _ := (*lastCmd.Load()).(*raft.InstallSnapshotRequest)
		if got == nil || got.Size != req.Size || got.LastLogIndex != 100 || string(got.Configuration) != "cfg" || got.ConfigurationIndex != 3 || got.SnapshotVersion != 1 {
			t.Fatalf("snapshot request arrived as %+v", got)
		}
	}
	// A reader shorter than the announced size fails the stream.
	short := &raft.InstallSnapshotRequest{RPCHeader: hdr, Term: 9, Size: 100}
	if err := trA.InstallSnapshot("n2", target, short, new(raft.InstallSnapshotResponse), bytes.NewReader(make([]byte, 10))); err == nil {
		t.Fatal("short snapshot succeeded")
	}

	if got, want := trA.DecodePeer(trA.EncodePeer("n2", target)), target; got != want {
		t.Fatalf("DecodePeer = %q, want %q", got, want)
	}
	if trA.LocalAddr() != raft.ServerAddress(a.addr) {
		t.Fatalf("LocalAddr = %q", trA.LocalAddr())
	}
}

// The pool hands out one connection per address and refuses after Close.
func TestPool(t *testing.T) {
	p := NewPool()
	c1, err := p.Get("127.0.0.1:1")
	if err != nil {
		t.Fatal(err)
	}
	c2, _ := p.Get("127.0.0.1:1")
	c3, _ := p.Get("127.0.0.1:2")
	if c1 != c2 || c1 == c3 {
		t.Fatal("pool does not share connections per address")
	}
	if err := p.Close(); err != nil {
		t.Fatal(err)
	}
	if err := p.Close(); err != nil {
		t.Fatal(err)
	}
	if _, err := p.Get("127.0.0.1:1"); !errors.Is(err, ErrPoolClosed) {
		t.Fatalf("Get after Close: %v", err)
	}
}

// Closing the network closes every group: open pipelines stop, later calls
// fail with ErrTransportShutdown, and Close is idempotent.
func TestRaftNetworkClose(t *testing.T) {
	c := newTestCluster(t, 2, nil, clusterOpts{})
	a, b := c.nodes[0], c.nodes[1]
	stop := make(chan struct{})
	done := serveGroup(t, b.net.Transport(1), stop, nil)
	defer func() { close(stop); <-done }()

	tr := a.net.Transport(1)
	p, err := tr.AppendEntriesPipeline("n2", raft.ServerAddress(b.addr))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := p.AppendEntries(&raft.AppendEntriesRequest{Term: 1, PrevLogEntry: 1}, new(raft.AppendEntriesResponse)); err != nil {
		t.Fatal(err)
	}
	if err := a.net.Close(); err != nil {
		t.Fatal(err)
	}
	if err := a.net.Close(); err != nil {
		t.Fatal(err)
	}
	if _, err := p.AppendEntries(&raft.AppendEntriesRequest{Term: 1}, new(raft.AppendEntriesResponse)); !errors.Is(err, raft.ErrPipelineShutdown) {
		t.Fatalf("pipeline append after network close: %v", err)
	}
	var resp raft.RequestVoteResponse
	if err := tr.RequestVote("n2", raft.ServerAddress(b.addr), &raft.RequestVoteRequest{Term: 1}, &resp); !errors.Is(err, raft.ErrTransportShutdown) {
		t.Fatalf("RequestVote after close: %v", err)
	}
	if err := a.net.Transport(2).RequestVote("n2", raft.ServerAddress(b.addr), &raft.RequestVoteRequest{Term: 1}, &resp); !errors.Is(err, raft.ErrTransportShutdown) {
		t.Fatalf("new group after network close: %v", err)
	}
}
