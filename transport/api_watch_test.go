package transport

import (
	"slices"
	"strings"
	"testing"
)

func TestWatchCursorRoundTrip(t *testing.T) {
	for _, c := range []WatchCursor{
		{Pos: []WatchPos{{}}},
		{Pos: []WatchPos{{Index: 1}, {Index: 1 << 40, N: 7}, {Index: 12, N: 1<<32 - 1}}},
	} {
		got, err := ParseWatchCursor(c.Encode())
		if err != nil {
			t.Fatalf("%v: %v", c, err)
		}
		if !slices.Equal(got.Pos, c.Pos) {
			t.Fatalf("round trip %v -> %v", c, got)
		}
	}
	good := WatchCursor{Pos: []WatchPos{{Index: 5, N: 1}}}.Encode()
	for _, tt := range []struct{ in, want string }{
		{"", "not a watch cursor"},
		{"!!", "not a watch cursor"},
		{"Ag", "not a watch cursor"}, // one byte
		{"AgE", "version 2"},         // version 2
		{"AQA", "bad shard count"},   // zero shards
		{"AQEF", "truncated"},        // index without n
		{good + "AA", "trailing"},    // extra bytes
	} {
		if _, err := ParseWatchCursor(tt.in); err == nil || !strings.Contains(err.Error(), tt.want) {
			t.Errorf("ParseWatchCursor(%q) = %v, want an error containing %q", tt.in, err, tt.want)
		}
	}
}

func FuzzParseWatchCursor(f *testing.F) {
	f.Add(WatchCursor{Pos: []WatchPos{{Index: 5, N: 1}, {Index: 9}}}.Encode())
	f.Add("AQA")
	f.Fuzz(func(t *testing.T, s string) {
		c, err := ParseWatchCursor(s)
		if err != nil {
			return
		}
		again, err := ParseWatchCursor(c.Encode())
		if err != nil || !slices.Equal(again.Pos, c.Pos) {
			t.Fatalf("%q: re-encoded cursor %v does not parse back: %v", s, c, err)
		}
	})
}

func TestWatchFilterMatch(t *testing.T) {
	e := &WatchEvent{JobID: "0-1", Tenant: "a", Kind: ""}
	for _, tt := range []struct {
		f    WatchFilter
		want bool
	}{
		{WatchFilter{}, true},
		{WatchFilter{Tenant: "a"}, true},
		{WatchFilter{Tenant: "b"}, false},
		{WatchFilter{JobID: "0-1"}, true},
		{WatchFilter{JobID: "0-2"}, false},
		{WatchFilter{Kind: "shell"}, true},
		{WatchFilter{Kind: "email"}, false},
	} {
		if got := tt.f.Match(e); got != tt.want {
			t.Errorf("%+v.Match = %v, want %v", tt.f, got, tt.want)
		}
	}
}
