package client

import (
	"bytes"
	"fmt"
	"strings"
	"testing"
	"time"

	hodeiv1 "github.com/hodei-io/hodei/proto/hodeiv1"
)

func testLogJob(q *logQueue) *Job {
	return &Job{job: &hodeiv1.Job{Id: "0-7"}, token: 42, lq: q}
}

func TestJobLogLinesCutAndNumbered(t *testing.T) {
	woken := 0
	q := newLogQueue(DefaultLogQueueBytes, 0, func() { woken++ })
	j := testLogJob(q)
	fmt.Fprint(j.Stdout(), "one\ntw")
	fmt.Fprint(j.Stderr(), "err\n")
	fmt.Fprint(j.Stdout(), "o\n\nthree")
	long := strings.Repeat("x", MaxLogLine+10)
	fmt.Fprint(j.Stderr(), long+"\n")
	j.Logf("formatted %d", 5)
	j.flushLog() // "three" has no newline: sent at the end
	got, again := q.take(time.Now())
	if again != 0 {
		t.Fatalf("unlimited rate asked to wait %v", again)
	}
	want := []struct {
		stream hodeiv1.LogStream
		data   string
	}{
		{hodeiv1.LogStream_LOG_STREAM_STDOUT, "one"},
		{hodeiv1.LogStream_LOG_STREAM_STDERR, "err"},
		{hodeiv1.LogStream_LOG_STREAM_STDOUT, "two"},
		{hodeiv1.LogStream_LOG_STREAM_STDOUT, ""},
		{hodeiv1.LogStream_LOG_STREAM_STDERR, long[:MaxLogLine]},
		{hodeiv1.LogStream_LOG_STREAM_STDERR, long[MaxLogLine:]},
		{hodeiv1.LogStream_LOG_STREAM_STDOUT, "threeformatted 5"},
	}
	if len(got) != len(want) {
		t.Fatalf("%d lines, want %d", len(got), len(want))
	}
	for i, l := range got {
		if l.GetSeq() != uint64(i+1) || l.GetJobId() != "0-7" || l.GetToken() != 42 || l.GetStream() != want[i].stream || string(l.GetData()) != want[i].data {
			t.Fatalf("line %d: seq %d %v %q, want %v %q", i, l.GetSeq(), l.GetStream(), l.GetData(), want[i].stream, want[i].data)
		}
	}
	if woken != 1 { // only the push onto an empty queue wakes the sender
		t.Fatalf("woken %d times, want 1", woken)
	}
	if got, _ := q.take(time.Now()); got != nil {
		t.Fatalf("queue not empty: %d", len(got))
	}
}

// A full queue drops lines without blocking and says so with a marker.
func TestJobLogDropsWithMarker(t *testing.T) {
	q := newLogQueue(64<<10, 0, func() {})
	j := testLogJob(q)
	line := bytes.Repeat([]byte("y"), 1000)
	for i := 0; i < 100; i++ { // ~106 KB into a 64 KiB queue
		j.Stdout().Write(append(line, '\n'))
	}
	first, _ := q.take(time.Now())
	j.Logf("after")
	j.flushLog()
	rest, _ := q.take(time.Now())
	if len(first) == 0 || len(first) >= 100 || len(rest) != 2 {
		t.Fatalf("first %d lines, then %d", len(first), len(rest))
	}
	m := rest[0]
	dropped := int64(100-len(first)) * 1001
	if m.GetDroppedBytes() != dropped || string(m.GetData()) != fmt.Sprintf("[%d bytes dropped]", dropped) {
		t.Fatalf("marker %v, want %d bytes dropped", m, dropped)
	}
	if m.GetSeq() != uint64(len(first)+1) || rest[1].GetSeq() != m.GetSeq()+1 || string(rest[1].GetData()) != "after" {
		t.Fatalf("seqs %d %d after %d lines", m.GetSeq(), rest[1].GetSeq(), len(first))
	}
}

// The rate bounds what one take returns and says when to come back.
func TestLogQueueRate(t *testing.T) {
	q := newLogQueue(DefaultLogQueueBytes, 64<<10, func() {})
	j := testLogJob(q)
	line := bytes.Repeat([]byte("z"), 1000)
	for i := 0; i < 100; i++ {
		j.Stdout().Write(append(line, '\n'))
	}
	now := time.Now()
	got, again := q.take(now)
	if n := len(got); n == 0 || n > 64<<10/1000 || again <= 0 {
		t.Fatalf("took %d lines, again in %v", n, again)
	}
	more, _ := q.take(now.Add(again))
	if len(more) == 0 {
		t.Fatal("nothing more after the wait")
	}
	if more[0].GetSeq() != got[len(got)-1].GetSeq()+1 {
		t.Fatal("order lost across takes")
	}
}

// A Job made outside a Worker discards its log writes.
func TestJobLogWithoutWorker(t *testing.T) {
	j := &Job{job: &hodeiv1.Job{Id: "0-1"}}
	if n, err := j.Stdout().Write([]byte("x\n")); n != 2 || err != nil {
		t.Fatalf("write %d %v", n, err)
	}
	j.Logf("nothing")
	j.flushLog()
}
