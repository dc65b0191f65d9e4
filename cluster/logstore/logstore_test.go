package logstore

import (
	"bytes"
	"fmt"
	"testing"
	"time"

	"github.com/hodei-io/hodei/proto/hodeiv1"
)

type fakeClock struct{ t time.Time }

func (c *fakeClock) now() time.Time          { return c.t }
func (c *fakeClock) advance(d time.Duration) { c.t = c.t.Add(d) }

func newStore(t *testing.T, cfg Config) (*Store, *fakeClock) {
	t.Helper()
	clk := &fakeClock{t: time.Unix(1_000_000, 0)}
	cfg.Now = clk.now
	s, err := New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	return s, clk
}

func lines(from, to uint64, size int) []*hodeiv1.LogLine {
	var out []*hodeiv1.LogLine
	for s := from; s <= to; s++ {
		out = append(out, &hodeiv1.LogLine{Seq: s, Stream: hodeiv1.LogStream_LOG_STREAM_STDOUT, Data: bytes.Repeat([]byte{'a' + byte(s%26)}, size)})
	}
	return out
}

func seqs(ls []*hodeiv1.LogLine) []uint64 {
	var out []uint64
	for _, l := range ls {
		out = append(out, l.GetSeq())
	}
	return out
}

func TestConfigValidate(t *testing.T) {
	for _, c := range []Config{
		{MaxLineBytes: 2 << 20, MaxJobBytes: 1 << 20},
		{MaxJobBytes: 2 << 20, MaxTotalBytes: 1 << 20},
		{Retention: -time.Second},
	} {
		if _, err := New(c); err == nil {
			t.Errorf("New(%+v): no error", c)
		}
	}
	if _, err := New(Config{}); err != nil {
		t.Fatalf("defaults: %v", err)
	}
}

func TestAppendReadOrderAndSeqs(t *testing.T) {
	s, _ := newStore(t, Config{})
	kept, dropped := s.Append("0-1", 5, 1, lines(1, 3, 10))
	if kept != 3 || dropped != nil {
		t.Fatalf("kept %d dropped %v", kept, dropped)
	}
	// A reconnect resends 2..4: 2 and 3 are duplicates, 4 is new.
	kept, dropped = s.Append("0-1", 5, 1, lines(2, 4, 10))
	if kept != 1 || dropped[DropDuplicate] != 2 {
		t.Fatalf("kept %d dropped %v", kept, dropped)
	}
	// An older seq after a newer one is refused, never reordered.
	kept, dropped = s.Append("0-1", 5, 1, append(lines(6, 6, 1), lines(5, 5, 1)...))
	if kept != 1 || dropped[DropDuplicate] != 1 {
		t.Fatalf("kept %d dropped %v", kept, dropped)
	}
	r := s.Read(Query{JobID: "0-1"})
	if got := fmt.Sprint(seqs(r.Lines)); got != "[1 2 3 4 6]" || !r.Found || r.Attempt != 1 || r.Token != 5 {
		t.Fatalf("read %s %+v", got, r)
	}
	if r.Lines[0].GetJobId() != "0-1" || r.Lines[0].GetToken() != 5 || r.Lines[0].GetAttempt() != 1 {
		t.Fatalf("line not tagged: %v", r.Lines[0])
	}
	r = s.Read(Query{JobID: "0-1", AfterSeq: 2, Limit: 2})
	if got := fmt.Sprint(seqs(r.Lines)); got != "[3 4]" || !r.More {
		t.Fatalf("after 2 limit 2: %s more=%v", got, r.More)
	}
	if r := s.Read(Query{JobID: "9-9"}); r.Found || len(r.Lines) != 0 {
		t.Fatalf("unknown job: %+v", r)
	}
}

func TestFencingByToken(t *testing.T) {
	s, _ := newStore(t, Config{})
	s.Append("0-1", 5, 1, lines(1, 2, 1))
	s.Append("0-1", 9, 2, lines(1, 3, 1)) // the retry's attempt
	kept, dropped := s.Append("0-1", 5, 1, lines(3, 3, 1))
	if kept != 0 || dropped[DropStale] != 1 {
		t.Fatalf("stale token kept %d dropped %v", kept, dropped)
	}
	if r := s.Read(Query{JobID: "0-1"}); r.Token != 9 || len(r.Lines) != 3 {
		t.Fatalf("latest: %+v", r)
	}
	if r := s.Read(Query{JobID: "0-1", Attempt: 1}); r.Token != 5 || len(r.Lines) != 2 {
		t.Fatalf("attempt 1: %+v", r)
	}
	if r := s.Read(Query{JobID: "0-1", Token: 9}); r.Attempt != 2 || len(r.Lines) != 3 {
		t.Fatalf("token 9: %+v", r)
	}
	// Malformed and oversized lines are counted, never stored.
	_, dropped = s.Append("", 1, 0, lines(1, 1, 1))
	if dropped[DropMalformed] != 1 {
		t.Fatalf("no job id: %v", dropped)
	}
	_, dropped = s.Append("0-2", 0, 0, lines(1, 1, 1))
	if dropped[DropMalformed] != 1 {
		t.Fatalf("no token: %v", dropped)
	}
	_, dropped = s.Append("0-2", 1, 0, append(lines(1, 1, DefaultMaxLineBytes+1), &hodeiv1.LogLine{Seq: 0}))
	if dropped[DropOversized] != 1 || dropped[DropMalformed] != 1 {
		t.Fatalf("oversized/no seq: %v", dropped)
	}
	c := s.Counters()
	if c.Dropped[DropMalformed] != 3 || c.Dropped[DropOversized] != 1 || c.Dropped[DropStale] != 1 || c.Jobs != 1 {
		t.Fatalf("counters %+v", c)
	}
}

func TestJobBoundEvictsOldestLines(t *testing.T) {
	cost := int64(1000 + lineOverhead)
	s, _ := newStore(t, Config{MaxLineBytes: 1000, MaxJobBytes: 10 * cost, MaxTotalBytes: 100 * cost})
	s.Append("0-1", 1, 1, lines(1, 4, 1000))
	s.Append("0-1", 2, 2, lines(1, 8, 1000)) // 12 lines: the 2 oldest of attempt 1 go
	c := s.Counters()
	if c.Bytes != 10*cost || c.EvictedJob != 2 {
		t.Fatalf("counters %+v", c)
	}
	r := s.Read(Query{JobID: "0-1", Attempt: 1})
	if got := fmt.Sprint(seqs(r.Lines)); got != "[3 4]" || !r.Truncated {
		t.Fatalf("attempt 1 after eviction: %s truncated=%v", got, r.Truncated)
	}
	if r := s.Read(Query{JobID: "0-1", Attempt: 1, AfterSeq: 2}); r.Truncated {
		t.Fatal("nothing after seq 2 was evicted")
	}
	if r := s.Read(Query{JobID: "0-1", Attempt: 2}); len(r.Lines) != 8 || r.Truncated {
		t.Fatalf("attempt 2: %d lines truncated=%v", len(r.Lines), r.Truncated)
	}
}

func TestTotalBoundEvictsLeastRecentlyWrittenJob(t *testing.T) {
	cost := int64(1000 + lineOverhead)
	s, _ := newStore(t, Config{MaxLineBytes: 1000, MaxJobBytes: 4 * cost, MaxTotalBytes: 10 * cost})
	s.Append("0-1", 1, 1, lines(1, 4, 1000))
	s.Append("0-2", 1, 1, lines(1, 4, 1000))
	s.Append("0-1", 1, 1, lines(5, 5, 1000)) // 0-1 is now the most recent
	s.Append("0-3", 1, 1, lines(1, 3, 1000)) // 11 lines: 0-2 goes, whole
	c := s.Counters()
	if c.EvictedTotal != 1 || c.Jobs != 2 || c.Bytes > 10*cost {
		t.Fatalf("counters %+v", c)
	}
	if r := s.Read(Query{JobID: "0-2"}); r.Found {
		t.Fatal("0-2 should be evicted")
	}
	if r := s.Read(Query{JobID: "0-1"}); len(r.Lines) != 4 {
		t.Fatalf("0-1: %d lines", len(r.Lines))
	}
}

func TestRetentionIndependentOfJobGC(t *testing.T) {
	s, clk := newStore(t, Config{Retention: time.Hour})
	s.Append("0-1", 1, 1, lines(1, 2, 1)) // ends now
	s.Append("0-2", 1, 1, lines(1, 2, 1)) // still running
	s.Append("0-3", 1, 1, lines(1, 2, 1)) // garbage-collected: unknown
	state := map[string]bool{"0-2": true}
	live := func(id string) bool { return state[id] }
	s.Sweep(live)
	clk.advance(30 * time.Minute)
	s.Append("0-2", 1, 1, lines(3, 3, 1))
	clk.advance(29 * time.Minute)
	s.Sweep(live)
	if c := s.Counters(); c.Jobs != 3 || c.Expired != 0 {
		t.Fatalf("before the hour: %+v", c)
	}
	clk.advance(2 * time.Minute)
	s.Sweep(live)
	if c := s.Counters(); c.Jobs != 1 || c.Expired != 2 {
		t.Fatalf("after the hour: %+v", c)
	}
	if r := s.Read(Query{JobID: "0-2"}); !r.Found {
		t.Fatal("a running job's lines went")
	}
	// A live job silent for a whole retention period goes too.
	clk.advance(time.Hour)
	s.Sweep(live)
	if c := s.Counters(); c.Jobs != 0 || c.Bytes != 0 {
		t.Fatalf("silent job kept: %+v", c)
	}
}

func TestWaitWakesOnAppend(t *testing.T) {
	s, _ := newStore(t, Config{})
	ch := s.Wait("0-1")
	select {
	case <-ch:
		t.Fatal("woken before any line")
	default:
	}
	s.Append("0-2", 1, 1, lines(1, 1, 1))
	select {
	case <-ch:
		t.Fatal("woken by another job's line")
	default:
	}
	s.Append("0-1", 1, 1, lines(1, 1, 1))
	select {
	case <-ch:
	case <-time.After(time.Second):
		t.Fatal("not woken")
	}
	// Waiters of jobs that never get a line are woken and forgotten by Sweep.
	ch = s.Wait("0-9")
	s.Sweep(func(string) bool { return true })
	select {
	case <-ch:
	default:
		t.Fatal("sweep left a waiter")
	}
}
