package gossip

import (
	"errors"
	"fmt"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"
)

// Nodes are started and stopped (alternately Close and Shutdown) over and
// over while member events flow: a stable member keeps changing its
// metadata, the stopping node has a subscriber, and another goroutine keeps
// calling its read methods and Subscribe during Close. Run with -race.
// After Close/Shutdown returns, none of memberlist's goroutines of that node
// may be running, its subscription must be closed, and nothing may touch its
// state or its logger any more (memberlist timers fire after Shutdown).
func TestStartStopWhileEventsFlow(t *testing.T) {
	nodes := cluster(t, "a", "b")
	a, b := nodes[0], nodes[1]

	// Events keep flowing: b changes its metadata again and again.
	stopChurn := make(chan struct{})
	churnDone := make(chan struct{})
	go func() {
		defer close(churnDone)
		for i := 0; ; i++ {
			select {
			case <-stopChurn:
				return
			default:
			}
			meta := Meta{GRPCAddr: b.cfg.Meta.GRPCAddr, Version: fmt.Sprintf("churn-%d", i)}
			if err := b.UpdateMeta(meta, time.Second); err != nil && !errors.Is(err, ErrClosed) {
				t.Errorf("b UpdateMeta: %v", err)
				return
			}
		}
	}()
	defer func() { close(stopChurn); <-churnDone }()
	aEvents, cancelA := a.Subscribe()
	defer cancelA()
	aDone := make(chan struct{})
	go func() {
		defer close(aDone)
		for range aEvents {
		}
	}()
	defer func() { cancelA(); <-aDone }()

	type stopped struct {
		g       *Gossip
		logs    *logBuf
		logLen  int
		members []Member
	}
	var done []stopped
	const rounds = 8
	for i := range rounds {
		name := fmt.Sprintf("x%d", i)
		lb := &logBuf{}
		x, err := Start(fastConfig(name, lb))
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { x.Close() })

		// A subscriber that counts the updates of b it sees.
		events, cancel := x.Subscribe()
		var mu sync.Mutex
		seenB := 0
		subDone := make(chan struct{})
		go func() {
			defer close(subDone)
			for m := range events {
				if m.Name == "b" {
					mu.Lock()
					seenB++
					mu.Unlock()
				}
			}
		}()
		// Readers and subscribers racing Close.
		stopHammer := make(chan struct{})
		hammerDone := make(chan struct{})
		go func() {
			defer close(hammerDone)
			for {
				select {
				case <-stopHammer:
					return
				default:
				}
				x.Members()
				x.Member("b")
				x.DeadSince("b")
				x.Forget("b")
				ch, c := x.Subscribe()
				<-ch // initial state, or closed after Close
				c()
			}
		}()

		if n, err := x.Join([]string{a.LocalAddr()}); err != nil || n != 1 {
			t.Fatalf("%s join: n=%d err=%v", name, n, err)
		}
		waitFor(t, 20*time.Second, name+" and a see each other, and "+name+" gets b's updates", func() error {
			for _, want := range []struct {
				obs  *Gossip
				name string
			}{{x, "a"}, {x, "b"}, {a.Gossip, name}} {
				if m, err := memberState(want.obs, want.name); err != nil || m.State != Alive {
					return fmt.Errorf("%s sees %s: %+v %v", want.obs.name, want.name, m, err)
				}
			}
			mu.Lock()
			defer mu.Unlock()
			if seenB < 3 {
				return fmt.Errorf("%s saw %d events of b", name, seenB)
			}
			return nil
		})

		leave := i%2 == 0
		if leave {
			err = x.Close()
		} else {
			err = x.Shutdown()
		}
		if err != nil {
			t.Errorf("%s close (leave=%v): %v", name, leave, err)
		}
		if n := x.goroutines(); n != 0 {
			t.Errorf("%s: %d memberlist goroutines still running after close", name, n)
		}
		select {
		case <-subDone:
		case <-time.After(10 * time.Second):
			t.Fatalf("%s: subscription not closed by close", name)
		}
		cancel()
		close(stopHammer)
		<-hammerDone
		done = append(done, stopped{x, lb, len(lb.String()), x.Members()})
		if leave {
			// Left as a rule, Dead if the leaving flag lost the race with
			// the leave message (best effort, see Leave).
			waitFor(t, 20*time.Second, "a sees "+name+" gone", func() error {
				if m, err := memberState(a.Gossip, name); err != nil || (m.State != Left && m.State != Dead) {
					return fmt.Errorf("%+v %v", m, err)
				}
				return nil
			})
		}
	}

	// b's updates kept reaching a throughout.
	if m, err := memberState(a.Gossip, "b"); err != nil || m.State != Alive {
		t.Errorf("a sees b %+v %v", m, err)
	}
	// The stopped nodes stayed quiet: no log line and no member change after
	// their close returned, although memberlist kept timers (suspicion of
	// the crashed ones) and the others kept gossiping about them.
	for _, s := range done {
		if got := s.logs.String(); len(got) != s.logLen {
			t.Errorf("%s logged after close:\n%s", s.g.name, got[s.logLen:])
		}
		if got := s.g.Members(); !slices.Equal(got, s.members) {
			t.Errorf("%s members changed after close:\n%v\n%v", s.g.name, s.members, got)
		}
	}
}

// Close also waits for memberlist's goroutines when the node is the last
// one left, probing members that went away (the slow case: failed probes
// stretch memberlist's probe interval).
func TestCloseWaitsForMemberlistGoroutines(t *testing.T) {
	nodes := cluster(t, "a", "b", "c")
	for _, n := range nodes[1:] {
		if err := n.Shutdown(); err != nil {
			t.Fatal(err)
		}
	}
	a := nodes[0]
	waitFor(t, 20*time.Second, "a to start suspecting b or c", func() error {
		if a.goroutines() == 0 {
			return errors.New("a has no labelled goroutines")
		}
		if logs := a.logs.String(); !strings.Contains(logs, "Failed UDP ping") && !strings.Contains(logs, "Suspect") {
			return errors.New("no failed probe yet")
		}
		return nil
	})
	if err := a.Shutdown(); err != nil {
		t.Fatal(err)
	}
	if n := a.goroutines(); n != 0 {
		t.Fatalf("%d memberlist goroutines still running after Shutdown", n)
	}
}
