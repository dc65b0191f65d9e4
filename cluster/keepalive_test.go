package cluster

import (
	"context"
	"io"
	"net"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/hodei-io/hodei/client"
	"github.com/hodei-io/hodei/proto/hodeiv1"
)

// blackholeProxy forwards TCP to a target until blackhole is called; from
// then on it swallows every byte both ways without closing a connection
// (what a dead host or a middlebox that lost its state looks like: the
// sockets stay open, nothing arrives), and closes new connections at once.
type blackholeProxy struct {
	lis   net.Listener
	dead  atomic.Bool
	mu    sync.Mutex
	conns []net.Conn
	wg    sync.WaitGroup
}

func newBlackholeProxy(t *testing.T, target string) *blackholeProxy {
	t.Helper()
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	p := &blackholeProxy{lis: lis}
	p.wg.Add(1)
	go func() {
		defer p.wg.Done()
		for {
			in, err := lis.Accept()
			if err != nil {
				return
			}
			if p.dead.Load() {
				in.Close()
				continue
			}
			out, err := net.Dial("tcp", target)
			if err != nil {
				in.Close()
				continue
			}
			p.mu.Lock()
			p.conns = append(p.conns, in, out)
			p.mu.Unlock()
			p.wg.Add(2)
			go p.pipe(out, in)
			go p.pipe(in, out)
		}
	}()
	t.Cleanup(func() {
		lis.Close()
		p.mu.Lock()
		for _, c := range p.conns {
			c.Close()
		}
		p.mu.Unlock()
		p.wg.Wait()
	})
	return p
}

func (p *blackholeProxy) pipe(dst io.Writer, src io.Reader) {
	defer p.wg.Done()
	buf := make([]byte, 32<<10)
	for {
		n, err := src.Read(buf)
		if err != nil {
			return
		}
		if p.dead.Load() {
			continue
		}
		if _, err := dst.Write(buf[:n]); err != nil {
			return
		}
	}
}

func (p *blackholeProxy) addr() string { return p.lis.Addr().String() }

// F7: a worker stream whose connection dies silently. The node's keepalive
// pings go unanswered, so it closes the connection and the session (its
// credit is no longer offered to the shards); the worker's own pings go
// unanswered too, so it leaves the dead connection and reconnects to its
// next address, and jobs run again. Without keepalives both sides would
// wait for TCP's retransmission timeout (many minutes).
func TestWorkerStreamSilentDeathIsDetected(t *testing.T) {
	tc := startClusterWith(t, 1, 1, func(c *Config) {
		c.Keepalive = time.Second
		c.KeepaliveTimeout = time.Second
	})
	node := tc.nodes[0]
	proxy := newBlackholeProxy(t, tc.addrs()[0])
	wc, err := client.New(client.Config{Addrs: []string{proxy.addr(), tc.addrs()[0]}, KeepaliveTimeout: time.Second})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { wc.Close() })
	w, err := client.NewWorker(wc, client.WorkerConfig{ID: "w", Concurrency: 4, LeaseTTL: 2 * time.Second, DrainTimeout: 5 * time.Second, Logger: testLogger(t)})
	if err != nil {
		t.Fatal(err)
	}
	w.Handle("ok", func(ctx context.Context, j *client.Job) error { return nil })
	ctx, stop := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- w.Run(ctx) }()
	defer func() {
		stop()
		if err := <-done; err != nil {
			t.Errorf("Run: %v", err)
		}
	}()
	sessions := func() int { return node.dispatch.Load().Sessions() }
	waitFor(t, 10*time.Second, "the worker's stream through the proxy", func() bool { return sessions() == 1 })

	c := newClient(t, tc.addrs()...)
	run := func() {
		t.Helper()
		r, err := c.Submit(context.Background(), &hodeiv1.JobSpec{Kind: "ok"})
		if err != nil {
			t.Fatal(err)
		}
		waitFor(t, 20*time.Second, "the job to succeed", func() bool {
			j, err := c.Get(context.Background(), r.GetJob().GetId())
			return err == nil && j.GetState() == hodeiv1.JobState_JOB_STATE_SUCCEEDED
		})
	}
	run()

	proxy.dead.Store(true)
	// The node pings after 1s of silence and gives up 1s later; the
	// worker's pings start after 10s (grpc-go's floor), so the node is
	// first to notice.
	waitFor(t, 10*time.Second, "the node to close the silent stream", func() bool { return sessions() == 0 })
	waitFor(t, 30*time.Second, "the worker to reconnect on its next address", func() bool { return sessions() == 1 })
	run()
}
