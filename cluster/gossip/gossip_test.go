package gossip

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"strings"
	"sync"
	"testing"
	"time"

	"go.uber.org/goleak"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

// logBuf is a concurrency-safe slog handler target that outlives the test,
// so memberlist goroutines logging during shutdown never touch testing.T.
type logBuf struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (l *logBuf) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

func (l *logBuf) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.String()
}

func fastConfig(name string, lb *logBuf) Config {
	return Config{
		Name:     name,
		BindAddr: "127.0.0.1:0",
		Meta:     Meta{GRPCAddr: "127.0.0.1:7" + name, Version: "v-test-" + name},
		Logger:   slog.New(slog.NewTextHandler(lb, &slog.HandlerOptions{Level: slog.LevelDebug})),
		// Fast but not twitchy: with -race on a loaded 2-core machine,
		// 50ms probe timeouts produced false deaths.
		ProbeInterval:    300 * time.Millisecond,
		ProbeTimeout:     150 * time.Millisecond,
		GossipInterval:   20 * time.Millisecond,
		SuspicionMult:    3,
		PushPullInterval: 500 * time.Millisecond,
		TCPTimeout:       time.Second,
	}
}

type node struct {
	*Gossip
	logs *logBuf
}

func start(t *testing.T, name string) node {
	t.Helper()
	lb := &logBuf{}
	g, err := Start(fastConfig(name, lb))
	if err != nil {
		t.Fatalf("start %s: %v", name, err)
	}
	t.Cleanup(func() {
		if err := g.Close(); err != nil {
			t.Logf("close %s: %v", name, err)
		}
		if t.Failed() {
			t.Logf("logs of %s:\n%s", name, lb.String())
		}
	})
	return node{g, lb}
}

// waitFor polls cond until it holds or the deadline passes.
func waitFor(t *testing.T, d time.Duration, what string, cond func() error) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), d)
	defer cancel()
	tick := time.NewTicker(10 * time.Millisecond)
	defer tick.Stop()
	for {
		err := cond()
		if err == nil {
			return
		}
		select {
		case <-ctx.Done():
			t.Fatalf("timed out after %v waiting for %s: %v", d, what, err)
		case <-tick.C:
		}
	}
}

func memberState(g *Gossip, name string) (Member, error) {
	m, ok := g.Member(name)
	if !ok {
		return m, fmt.Errorf("%s does not know %s", g.name, name)
	}
	return m, nil
}

func cluster(t *testing.T, names ...string) []node {
	t.Helper()
	nodes := make([]node, len(names))
	for i, n := range names {
		nodes[i] = start(t, n)
	}
	for i := 1; i < len(nodes); i++ {
		// Join through the previous node so the view must spread by gossip.
		if n, err := nodes[i].Join([]string{nodes[i-1].LocalAddr()}); err != nil || n != 1 {
			t.Fatalf("%s join: n=%d err=%v", names[i], n, err)
		}
	}
	for _, obs := range nodes {
		waitFor(t, 10*time.Second, obs.name+" sees everyone alive", func() error {
			for _, n := range nodes {
				m, err := memberState(obs.Gossip, n.name)
				if err != nil {
					return err
				}
				if m.State != Alive {
					return fmt.Errorf("%s sees %s %v", obs.name, n.name, m.State)
				}
			}
			return nil
		})
	}
	return nodes
}

func TestThreeMembersSeeEachOtherWithMeta(t *testing.T) {
	a := start(t, "a")
	events, cancel := a.Subscribe()
	defer cancel()

	nodes := cluster(t, "b", "c")
	if _, err := nodes[0].Join([]string{a.LocalAddr()}); err != nil {
		t.Fatal(err)
	}
	all := append([]node{a}, nodes...)
	for _, obs := range all {
		waitFor(t, 10*time.Second, obs.name+" sees a, b, c", func() error {
			ms := obs.Members()
			if len(ms) != 3 {
				return fmt.Errorf("%d members: %v", len(ms), ms)
			}
			for i, n := range all {
				m := ms[i] // sorted by name: a, b, c
				want := Member{Name: n.name, GossipAddr: n.LocalAddr(), Meta: n.cfg.Meta, State: Alive, Since: m.Since}
				if m != want {
					return fmt.Errorf("got %+v want %+v", m, want)
				}
				if m.Since.IsZero() {
					return fmt.Errorf("%s: zero Since", m.Name)
				}
				if _, dead := obs.DeadSince(n.name); dead {
					return fmt.Errorf("DeadSince(%s) reports dead", n.name)
				}
			}
			return nil
		})
	}

	// The subscriber saw itself first (initial state), then b and c join.
	want := map[string]Meta{}
	for _, n := range all {
		want[n.name] = n.cfg.Meta
	}
	waitForEvent(t, events, func(m Member) bool {
		if meta, ok := want[m.Name]; ok && m.State == Alive && m.Meta == meta {
			delete(want, m.Name)
		}
		return len(want) == 0
	})
}

func TestCrashedMemberSeenDead(t *testing.T) {
	nodes := cluster(t, "a", "b", "c")
	a, b, c := nodes[0], nodes[1], nodes[2]
	events, cancel := a.Subscribe()
	defer cancel()

	before := time.Now()
	if err := c.close(false); err != nil { // Shutdown only, no leave
		t.Fatal(err)
	}
	for _, obs := range []node{a, b} {
		waitFor(t, 15*time.Second, obs.name+" sees c dead", func() error {
			m, err := memberState(obs.Gossip, "c")
			if err != nil {
				return err
			}
			if m.State != Dead {
				return fmt.Errorf("c is %v", m.State)
			}
			since, ok := obs.DeadSince("c")
			if !ok || since.Before(before) || since != m.Since {
				return fmt.Errorf("DeadSince = %v, %v (closed at %v)", since, ok, before)
			}
			return nil
		})
		for _, other := range []string{"a", "b"} {
			if m, _ := obs.Member(other); m.State != Alive {
				t.Errorf("%s sees %s %v", obs.name, other, m.State)
			}
		}
	}
	// The subscriber gets c's death (after the initial alive states).
	waitForEvent(t, events, func(m Member) bool { return m.Name == "c" && m.State == Dead })
}

func waitForEvent(t *testing.T, ch <-chan Member, match func(Member) bool) {
	t.Helper()
	deadline := time.After(10 * time.Second)
	for {
		select {
		case m, ok := <-ch:
			if !ok {
				t.Fatal("subscription closed")
			}
			if match(m) {
				return
			}
		case <-deadline:
			t.Fatal("timed out waiting for event")
		}
	}
}

func TestLeaveSeenLeft(t *testing.T) {
	nodes := cluster(t, "a", "b", "c")
	a, b, c := nodes[0], nodes[1], nodes[2]
	if err := c.Leave(5 * time.Second); err != nil {
		t.Fatal(err)
	}
	if err := c.Leave(time.Second); err != nil {
		t.Fatalf("second Leave: %v", err)
	}
	if _, err := c.Join([]string{a.LocalAddr()}); !errors.Is(err, ErrClosed) {
		t.Fatalf("Join after Leave: %v", err)
	}
	for _, obs := range []node{a, b} {
		waitFor(t, 10*time.Second, obs.name+" sees c left", func() error {
			m, err := memberState(obs.Gossip, "c")
			if err != nil {
				return err
			}
			if m.State != Left {
				return fmt.Errorf("c is %v", m.State)
			}
			if _, ok := obs.DeadSince("c"); !ok {
				return errors.New("DeadSince(c) not ok")
			}
			return nil
		})
	}
	if m, _ := c.Member("c"); m.State != Left {
		t.Errorf("c sees itself %v", m.State)
	}
	// Left members stay visible until forgotten.
	if !a.Forget("c") || a.Forget("c") || a.Forget("b") {
		t.Error("Forget: want true for left c once, false for alive b")
	}
	if len(a.Members()) != 2 {
		t.Errorf("members after Forget: %v", a.Members())
	}
}

func TestNameConflictRejected(t *testing.T) {
	nodes := cluster(t, "a", "b")
	a, b := nodes[0], nodes[1]
	impostor := start(t, "b")

	_, err := impostor.Join([]string{a.LocalAddr()})
	if !errors.Is(err, ErrNameConflict) {
		t.Fatalf("impostor join: want ErrNameConflict, got %v", err)
	}
	if !strings.Contains(err.Error(), `"b"`) {
		t.Errorf("error does not name the node: %v", err)
	}
	// The contacted node refuses the merge too (asynchronously: it answers
	// the push/pull before merging) and says so.
	waitFor(t, 5*time.Second, "a logs the conflict", func() error {
		if !strings.Contains(a.logs.String(), "NAME CONFLICT") {
			return errors.New("not yet")
		}
		return nil
	})
	if !strings.Contains(impostor.logs.String(), "NAME CONFLICT") {
		t.Errorf("impostor did not log the conflict:\n%s", impostor.logs.String())
	}
	// Neither side merged anything.
	if ms := impostor.Members(); len(ms) != 1 || ms[0].GossipAddr != impostor.LocalAddr() {
		t.Errorf("impostor members: %v", ms)
	}
	for _, obs := range []node{a, b} {
		m, err := memberState(obs.Gossip, "b")
		if err != nil {
			t.Fatal(err)
		}
		if m.GossipAddr != b.LocalAddr() || m.State != Alive {
			t.Errorf("%s sees b as %+v, want alive at %s", obs.name, m, b.LocalAddr())
		}
		if len(obs.Members()) != 2 {
			t.Errorf("%s members: %v", obs.name, obs.Members())
		}
	}
	// The same name at the same address (a restart) is not a conflict.
	if _, err := b.Join([]string{a.LocalAddr()}); err != nil {
		t.Errorf("rejoin of the real b: %v", err)
	}
}

func TestAdvertiseAddrWithPortZeroBind(t *testing.T) {
	lb := &logBuf{}
	cfg := fastConfig("x", lb)
	cfg.AdvertiseAddr = "127.0.0.2:4444"
	g, err := Start(cfg)
	if err != nil {
		t.Fatal(err)
	}
	defer g.Close()
	if got := g.LocalAddr(); got != "127.0.0.2:4444" {
		t.Errorf("LocalAddr = %s", got)
	}
	if m, _ := g.Member("x"); m.GossipAddr != "127.0.0.2:4444" {
		t.Errorf("self member %+v", m)
	}

	cfg = fastConfig("y", lb)
	cfg.AdvertiseAddr = "127.0.0.3:0" // port 0: use the bound port
	g2, err := Start(cfg)
	if err != nil {
		t.Fatal(err)
	}
	defer g2.Close()
	if got := g2.LocalAddr(); !strings.HasPrefix(got, "127.0.0.3:") || strings.HasSuffix(got, ":0") {
		t.Errorf("LocalAddr = %s", got)
	}
}

func TestBindConflictFailsCleanly(t *testing.T) {
	a := start(t, "a")
	cfg := fastConfig("b", &logBuf{})
	cfg.BindAddr = a.LocalAddr()
	if g, err := Start(cfg); err == nil {
		g.Close()
		t.Fatal("second bind on the same port succeeded")
	}
}

func TestCloseIdempotentAndClosesSubscriptions(t *testing.T) {
	a := start(t, "a")
	ch, cancel := a.Subscribe()
	if m := <-ch; m.Name != "a" || m.State != Alive {
		t.Fatalf("initial event %+v", m)
	}
	if err := a.Close(); err != nil {
		t.Fatal(err)
	}
	if err := a.Close(); err != nil {
		t.Fatal(err)
	}
	if _, ok := <-ch; ok {
		t.Fatal("subscription not closed by Close")
	}
	cancel() // after Close: no-op
	cancel()
	ch2, cancel2 := a.Subscribe()
	if _, ok := <-ch2; ok {
		t.Fatal("subscription after Close not closed")
	}
	cancel2()
	if err := a.Leave(time.Second); !errors.Is(err, ErrClosed) {
		t.Errorf("Leave after Close: %v", err)
	}
	if _, err := a.Join([]string{"127.0.0.1:1"}); !errors.Is(err, ErrClosed) {
		t.Errorf("Join after Close: %v", err)
	}
	if err := a.UpdateMeta(Meta{}, time.Second); !errors.Is(err, ErrClosed) {
		t.Errorf("UpdateMeta after Close: %v", err)
	}
}

func TestUpdateMetaPropagates(t *testing.T) {
	nodes := cluster(t, "a", "b")
	a, b := nodes[0], nodes[1]
	events, cancel := a.Subscribe()
	defer cancel()
	want := Meta{GRPCAddr: "10.0.0.9:7000", Version: "v2"}
	if err := b.UpdateMeta(want, 5*time.Second); err != nil {
		t.Fatal(err)
	}
	waitForEvent(t, events, func(m Member) bool { return m.Name == "b" && m.Meta == want })
	if m, _ := a.Member("b"); m.Meta != want || m.State != Alive {
		t.Errorf("a sees b %+v", m)
	}
	big := Meta{GRPCAddr: strings.Repeat("x", MetaMaxSize)}
	if err := b.UpdateMeta(big, time.Second); !errors.Is(err, ErrMetaTooLarge) {
		t.Errorf("UpdateMeta(big): %v", err)
	}
}
