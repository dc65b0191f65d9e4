package cron

import (
	"fmt"
	"testing"
	"time"

	"pgregory.net/rapid"
)

// refMatches reports whether wall time v (seconds of a UTC clock) matches
// the cron fields of s, by the definition, field by field.
func refMatches(s *Schedule, v int64) bool {
	t := time.Unix(v, 0).UTC()
	return s.minute&(1<<t.Minute()) != 0 && s.hour&(1<<t.Hour()) != 0 &&
		s.month&(1<<int(t.Month())) != 0 && s.dayMatches(t)
}

// refFires is a brute-force reference of the fire times in [from, to):
// it walks every minute instant u and fires at u iff some wall time not
// seen before — in (the largest wall time before u, wall(u)] — matches.
// That one rule is the package's DST contract: a normal minute has one new
// wall time; after a gap the skipped ones fire at the first instant after
// it, once; in a repeat no wall time is new, so nothing fires twice.
func refFires(s *Schedule, from, to int64) []int64 {
	var out []int64
	maxWall := wallSeconds(time.Unix(from, 0).In(s.loc))
	for u := from + 60; u < to; u += 60 {
		w := wallSeconds(time.Unix(u, 0).In(s.loc))
		fire := false
		for v := maxWall + 60; v <= w; v += 60 {
			if refMatches(s, v) {
				fire = true
				break
			}
		}
		if fire {
			out = append(out, u)
		}
		maxWall = max(maxWall, w)
	}
	return out
}

// TestNextMatchesReference checks Next against refFires for random specs
// over three days around daylight-saving transitions in zones with 1 h
// and 30 min shifts, and around ordinary days.
func TestNextMatchesReference(t *testing.T) {
	windows := []struct {
		tz   string
		from string
	}{
		{"Europe/Berlin", "2026-03-28T12:00:00Z"},
		{"Europe/Berlin", "2026-10-24T12:00:00Z"},
		{"America/New_York", "2026-03-07T12:00:00Z"},
		{"America/New_York", "2026-10-31T12:00:00Z"},
		{"Australia/Lord_Howe", "2026-04-04T00:00:00Z"}, // 30 min fall back
		{"Australia/Lord_Howe", "2026-10-03T00:00:00Z"}, // 30 min spring forward
		{"UTC", "2026-06-01T00:00:00Z"},
	}
	field := func(name string, lo, hi int) *rapid.Generator[string] {
		return rapid.Custom(func(rt *rapid.T) string {
			switch rapid.IntRange(0, 4).Draw(rt, name+"-form") {
			case 0:
				return "*"
			case 1:
				return fmt.Sprint(rapid.IntRange(lo, hi).Draw(rt, name))
			case 2:
				a := rapid.IntRange(lo, hi).Draw(rt, name+"-a")
				b := rapid.IntRange(a, hi).Draw(rt, name+"-b")
				return fmt.Sprintf("%d-%d", a, b)
			case 3:
				return fmt.Sprintf("*/%d", rapid.IntRange(1, hi).Draw(rt, name+"-step"))
			default:
				a := rapid.IntRange(lo, hi).Draw(rt, name+"-x")
				b := rapid.IntRange(lo, hi).Draw(rt, name+"-y")
				return fmt.Sprintf("%d,%d", a, b)
			}
		})
	}
	rapid.Check(t, func(rt *rapid.T) {
		spec := fmt.Sprintf("%s %s %s * %s", field("min", 0, 59).Draw(rt, "m"), field("hour", 0, 23).Draw(rt, "h"),
			field("dom", 1, 31).Draw(rt, "dom"), field("dow", 0, 6).Draw(rt, "dow"))
		w := windows[rapid.IntRange(0, len(windows)-1).Draw(rt, "window")]
		s, err := Parse(spec, w.tz)
		if err != nil {
			rt.Fatalf("Parse(%q): %v", spec, err)
		}
		from := utc(w.from).Unix()
		to := from + 3*86400
		want := refFires(s, from, to)
		var got []int64
		for at := time.Unix(from, 0); ; {
			n, ok := s.Next(at)
			if !ok || n.Unix() >= to {
				break
			}
			got = append(got, n.Unix())
			at = n
		}
		if len(got) != len(want) {
			rt.Fatalf("%q in %s from %s: %d fires, reference %d\n got %v\nwant %v", spec, w.tz, w.from, len(got), len(want), head(got), head(want))
		}
		for i := range got {
			if got[i] != want[i] {
				rt.Fatalf("%q in %s from %s: fire %d at %s, reference %s", spec, w.tz, w.from, i,
					time.Unix(got[i], 0).UTC().Format(time.RFC3339), time.Unix(want[i], 0).UTC().Format(time.RFC3339))
			}
		}
	})
}

func head(xs []int64) []string {
	var out []string
	for i, x := range xs {
		if i == 6 {
			out = append(out, "...")
			break
		}
		out = append(out, time.Unix(x, 0).UTC().Format(time.RFC3339))
	}
	return out
}
