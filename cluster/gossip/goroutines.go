package gossip

import (
	"bufio"
	"bytes"
	"context"
	"fmt"
	"runtime/pprof"
	"strconv"
	"strings"
	"sync/atomic"
	"time"
)

// memberlist.Shutdown does not wait for memberlist's goroutines
// (memberlist v0.7.0 memberlist.go:733-753: it waits for the transport's
// listeners, then only closes shutdownCh and stops the tickers). A probe in
// flight keeps running until its ack deadline (state.go:486 waits on ackCh
// for up to the awareness-scaled ProbeInterval, state.go:311 and 339), and
// so may a push/pull or an inbound stream (TCPTimeout). Such goroutines
// call our delegates and logger after Shutdown returned, and goleak sees
// them.
//
// To wait for them, every goroutine memberlist starts for a Gossip carries
// a pprof label unique to that Gossip: Start creates the transport and the
// memberlist on a goroutine with the label, and goroutines inherit the
// labels of the goroutine that starts them (runtime.newproc1), so the
// listeners, the packet handler, the probe/gossip/push-pull loops and
// everything they start (stream handlers, TCP fallback pings, nack timers)
// are labelled. Close and Shutdown count them in the goroutine profile
// until none is left or a deadline passes.
//
// Not covered: callbacks of time.AfterFunc timers (suspicion timeouts,
// suspicion.go:76; ack-handler timeouts, state.go:849 and 876) run on fresh
// goroutines created by the timer code. They are short, and the delegates
// and the log adapter ignore them once the Gossip is closing.

// goroutineLabel is the pprof label key naming the Gossip a goroutine
// belongs to. CPU profiles show memberlist's work under it too.
const goroutineLabel = "hodei.gossip"

var instanceSeq atomic.Uint64

// labelled runs f on a new goroutine carrying this Gossip's label and waits
// for it. The caller's own goroutine labels are left alone.
func (g *Gossip) labelled(f func()) {
	done := make(chan struct{})
	go func() {
		defer close(done)
		pprof.Do(context.Background(), pprof.Labels(goroutineLabel, g.label), func(context.Context) { f() })
	}()
	<-done
}

// goroutines counts the running goroutines that carry this Gossip's label.
func (g *Gossip) goroutines() int {
	var buf bytes.Buffer
	if err := pprof.Lookup("goroutine").WriteTo(&buf, 1); err != nil {
		return 0
	}
	return countLabelled(buf.Bytes(), goroutineLabel, g.label)
}

// countLabelled parses a debug=1 goroutine profile: records start with
// "<count> @ <pcs>", optionally followed by "# labels: {"k":"v", ...}".
func countLabelled(profile []byte, key, value string) int {
	want := fmt.Sprintf("%q:%q", key, value)
	total, cur := 0, 0
	sc := bufio.NewScanner(bytes.NewReader(profile))
	sc.Buffer(make([]byte, 0, 64<<10), 1<<20)
	for sc.Scan() {
		line := sc.Text()
		if n, rest, ok := strings.Cut(line, " @ "); ok && rest != "" {
			if c, err := strconv.Atoi(n); err == nil {
				cur = c
				continue
			}
		}
		if labels, ok := strings.CutPrefix(line, "# labels: "); ok && labelsContain(labels, want) {
			total += cur
			cur = 0
		}
	}
	return total
}

// labelsContain reports whether the "{"k":"v", "k2":"v2"}" label set holds
// the quoted pair want.
func labelsContain(labels, want string) bool {
	labels = strings.TrimSuffix(strings.TrimPrefix(labels, "{"), "}")
	for kv := range strings.SplitSeq(labels, ", ") {
		if kv == want {
			return true
		}
	}
	return false
}

// waitGoroutines waits until no goroutine carries this Gossip's label, or
// until timeout. It returns how many were still running.
func (g *Gossip) waitGoroutines(timeout time.Duration) int {
	deadline := time.Now().Add(timeout)
	delay := time.Millisecond
	for {
		n := g.goroutines()
		if n == 0 || !time.Now().Before(deadline) {
			return n
		}
		// Polling is all there is: memberlist gives no completion signal.
		time.Sleep(min(delay, time.Until(deadline)))
		delay = min(2*delay, 50*time.Millisecond)
	}
}
