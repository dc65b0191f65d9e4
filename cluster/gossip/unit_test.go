package gossip

import (
	"bytes"
	"errors"
	"log/slog"
	"math/rand/v2"
	"net"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/hashicorp/memberlist"
)

func TestMetaRoundTrip(t *testing.T) {
	for _, m := range []Meta{{}, {GRPCAddr: "10.1.2.3:7000", Version: "v0.3.1"}, {GRPCAddr: "[::1]:1", Version: "ünïcode"}} {
		b, err := EncodeMeta(m)
		if err != nil {
			t.Fatal(err)
		}
		got, err := DecodeMeta(b)
		if err != nil || got != m {
			t.Errorf("round trip %+v: got %+v, %v", m, got, err)
		}
	}
	w := wireMeta{Meta: Meta{GRPCAddr: "a", Version: "b"}, leaving: true}
	b, _ := encodeMeta(w)
	if got, err := decodeMeta(b); err != nil || got != w {
		t.Errorf("leaving flag: %+v %v", got, err)
	}
	// Forward compatible: a newer format version with appended fields.
	b = append([]byte{2}, b[1:]...)
	b = append(b, 0xde, 0xad)
	if got, err := DecodeMeta(b); err != nil || got != w.Meta {
		t.Errorf("v2 with extra fields: %+v %v", got, err)
	}
}

func TestMetaDecodeGarbageFailsCleanly(t *testing.T) {
	valid, _ := EncodeMeta(Meta{GRPCAddr: "127.0.0.1:7000", Version: "v1"})
	cases := map[string][]byte{
		"nil":             nil,
		"empty":           {},
		"version 0":       {0, 0, 0, 0},
		"header only":     {1},
		"no fields":       {1, 0},
		"bad varint":      {1, 0, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff},
		"length overflow": {1, 0, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x7f},
		"length too long": {1, 0, 5, 'a', 'b'},
		"missing version": {1, 0, 1, 'a'},
		"not utf8":        {1, 0, 2, 0xc3, 0x28, 0},
		"truncated":       valid[:len(valid)-1],
		"json":            []byte(`{"grpc":"127.0.0.1:7000"}`),
		"too large":       append(append([]byte{}, valid...), make([]byte, MetaMaxSize)...),
	}
	for name, b := range cases {
		m, err := DecodeMeta(b)
		if !errors.Is(err, ErrBadMeta) {
			t.Errorf("%s: want ErrBadMeta, got %+v, %v", name, m, err)
		}
		if err != nil && m != (Meta{}) {
			t.Errorf("%s: non-zero meta with error: %+v", name, m)
		}
	}
	// Random garbage never panics; errors always wrap ErrBadMeta.
	r := rand.New(rand.NewPCG(1, 2))
	for range 20000 {
		b := make([]byte, r.IntN(40))
		for i := range b {
			b[i] = byte(r.UintN(256))
		}
		if _, err := DecodeMeta(b); err != nil && !errors.Is(err, ErrBadMeta) {
			t.Fatalf("%x: %v", b, err)
		}
	}
	// A node gossiping garbage metadata is refused by the alive delegate.
	var a alives
	err := a.NotifyAlive(&memberlist.Node{Name: "x", Addr: net.IPv4(127, 0, 0, 1), Port: 1, Meta: []byte("garbage")})
	if !errors.Is(err, ErrBadMeta) {
		t.Errorf("NotifyAlive(garbage) = %v", err)
	}
	if err := a.NotifyAlive(&memberlist.Node{Name: "x", Meta: valid}); err != nil {
		t.Errorf("NotifyAlive(valid) = %v", err)
	}
}

func FuzzDecodeMeta(f *testing.F) {
	b, _ := EncodeMeta(Meta{GRPCAddr: "1.2.3.4:5", Version: "v"})
	f.Add(b)
	f.Add([]byte{1, 0, 0xff})
	f.Fuzz(func(t *testing.T, b []byte) {
		m, err := DecodeMeta(b)
		if err != nil {
			if !errors.Is(err, ErrBadMeta) {
				t.Fatal(err)
			}
			return
		}
		if b2, err := EncodeMeta(m); err != nil || len(b2) > len(b) {
			t.Fatalf("re-encode %+v: %d bytes, %v", m, len(b2), err)
		}
	})
}

func TestMetaTooLarge(t *testing.T) {
	m := Meta{GRPCAddr: strings.Repeat("a", 300), Version: strings.Repeat("b", 300)}
	if _, err := EncodeMeta(m); !errors.Is(err, ErrMetaTooLarge) {
		t.Errorf("EncodeMeta: %v", err)
	}
	cfg := Config{Name: "a", BindAddr: "127.0.0.1:0", Meta: m}
	if err := cfg.Validate(); !errors.Is(err, ErrMetaTooLarge) {
		t.Errorf("Validate: %v", err)
	}
}

func TestConfigValidate(t *testing.T) {
	ok := Config{Name: "n1", BindAddr: "127.0.0.1:0"}
	if err := ok.Validate(); err != nil {
		t.Fatal(err)
	}
	for _, c := range []struct {
		name string
		mod  func(*Config)
		ok   bool
	}{
		{"empty host binds all", func(c *Config) { c.BindAddr = ":7946" }, true},
		{"ipv6", func(c *Config) { c.BindAddr = "[::1]:0" }, true},
		{"advertise", func(c *Config) { c.AdvertiseAddr = "10.0.0.1:7946" }, true},
		{"no name", func(c *Config) { c.Name = "" }, false},
		{"space in name", func(c *Config) { c.Name = "a b" }, false},
		{"no port", func(c *Config) { c.BindAddr = "127.0.0.1" }, false},
		{"bad port", func(c *Config) { c.BindAddr = "127.0.0.1:70000" }, false},
		{"host name", func(c *Config) { c.BindAddr = "localhost:0" }, false},
		{"advertise host name", func(c *Config) { c.AdvertiseAddr = "node1:7946" }, false},
		{"advertise unspecified", func(c *Config) { c.AdvertiseAddr = "0.0.0.0:7946" }, false},
		{"advertise no host", func(c *Config) { c.AdvertiseAddr = ":7946" }, false},
		{"negative duration", func(c *Config) { c.ProbeInterval = -time.Second }, false},
		{"negative mult", func(c *Config) { c.SuspicionMult = -1 }, false},
	} {
		cfg := ok
		c.mod(&cfg)
		err := cfg.Validate()
		if (err == nil) != c.ok {
			t.Errorf("%s: Validate() = %v, want ok=%v", c.name, err, c.ok)
		}
		if err != nil {
			if g, serr := Start(cfg); serr == nil {
				g.Close()
				t.Errorf("%s: Start accepted an invalid config", c.name)
			}
		}
	}
}

func TestStateString(t *testing.T) {
	for s, want := range map[State]string{Alive: "alive", Suspect: "suspect", Dead: "dead", Left: "left", State(9): "State(9)"} {
		if s.String() != want {
			t.Errorf("%d: %q", int(s), s.String())
		}
	}
}

// A subscriber that does not read never blocks the producer, and once it
// reads it gets the latest state of every member, in first-change order.
func TestSubscriberCoalescesWithoutBlocking(t *testing.T) {
	s := newSubscriber([]Member{{Name: "a", State: Alive}})
	defer s.stop()
	for i := range 10000 { // would deadlock if push blocked
		s.push(Member{Name: "b", State: State(i % 3), GossipAddr: "b"})
		s.push(Member{Name: "c", State: Alive, Since: time.Unix(int64(i), 0)})
	}
	s.push(Member{Name: "b", State: Left})
	s.push(Member{Name: "c", State: Dead})
	var got []Member
	for len(got) < 3 {
		m := <-s.out
		got = append(got, m)
	}
	// Depending on timing the goroutine may already hold one older event
	// per name; the last event per name must be the newest state.
	last := map[string]State{}
	for _, m := range got {
		last[m.Name] = m.State
	}
	for len(last) < 3 || last["b"] != Left || last["c"] != Dead {
		select {
		case m := <-s.out:
			last[m.Name] = m.State
		case <-time.After(5 * time.Second):
			t.Fatalf("latest states not delivered: %v", last)
		}
	}
	select {
	case m := <-s.out:
		t.Fatalf("unexpected extra event %+v", m)
	default:
	}
	s.stop()
	s.stop() // idempotent
	if _, ok := <-s.out; ok {
		t.Fatal("channel open after stop")
	}
	s.push(Member{Name: "late"}) // after stop: ignored, no panic
}

func TestSlogWriterLevels(t *testing.T) {
	var buf bytes.Buffer
	var off atomic.Bool
	l := newStdLogger(slog.New(slog.NewTextHandler(&buf, &slog.HandlerOptions{Level: slog.LevelDebug})), &off)
	l.Printf("[DEBUG] memberlist: d1")
	l.Printf("[INFO] memberlist: i1")
	l.Printf("[WARN] memberlist: w1")
	l.Printf("[ERR] memberlist: e1")
	l.Printf("plain")
	out := buf.String()
	for _, want := range []string{"level=DEBUG msg=d1", "level=INFO msg=i1", "level=WARN msg=w1", "level=ERROR msg=e1", "level=INFO msg=plain"} {
		if !strings.Contains(out, want) {
			t.Errorf("missing %q in:\n%s", want, out)
		}
	}
	off.Store(true)
	l.Printf("[ERR] memberlist: after shutdown")
	if strings.Contains(buf.String(), "after shutdown") {
		t.Error("line logged after the writer was switched off")
	}
}

func TestCountLabelled(t *testing.T) {
	profile := `goroutine profile: total 7
3 @ 0x1 0x2
# labels: {"hodei.gossip":"a#1"}
#	0x1	x.f+0x1	/x.go:1

2 @ 0x1 0x3
# labels: {"hodei.gossip":"a#11", "z":"q"}
#	0x1	x.f+0x1	/x.go:1

1 @ 0x4
# labels: {"a":"b", "hodei.gossip":"a#1"}
#	0x4	x.g+0x1	/x.go:2

1 @ 0x5
#	0x5	x.h+0x1	/x.go:3
`
	for v, want := range map[string]int{"a#1": 4, "a#11": 2, "a#": 0, "b#1": 0} {
		if got := countLabelled([]byte(profile), goroutineLabel, v); got != want {
			t.Errorf("countLabelled(%q) = %d, want %d", v, got, want)
		}
	}
}
