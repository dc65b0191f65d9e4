package cron

import (
	"errors"
	"testing"
	"time"
)

// FuzzCronSpec checks Parse and Next on arbitrary specs and zones: a bad
// spec is an ErrInvalid (never a panic); a good one fires strictly after
// the instant asked, its fire times increase, and the spec's String parses
// to the same schedule. The seed corpus is in testdata/fuzz/FuzzCronSpec
// and runs with every `go test`.
func FuzzCronSpec(f *testing.F) {
	for _, s := range []string{"* * * * *", "*/15 2 * * *", "0 0 13 * fri", "@every 1s", "@daily", "0 0 29 2 *"} {
		f.Add(s, "Europe/Berlin", int64(1774745000))
	}
	f.Fuzz(func(t *testing.T, spec, tz string, afterSec int64) {
		s, err := Parse(spec, tz)
		if err != nil {
			if !errors.Is(err, ErrInvalid) {
				t.Fatalf("Parse(%q, %q): error %v does not wrap ErrInvalid", spec, tz, err)
			}
			return
		}
		// Keep instants where calendars are ordinary (1900..2200).
		const lo, span = -2208988800, 9467280000
		afterSec = lo + ((afterSec%span)+span)%span
		after := time.Unix(afterSec, 0)
		again, err := Parse(s.String(), tz)
		if err != nil {
			t.Fatalf("String %q of a valid spec does not parse: %v", s.String(), err)
		}
		prev := after
		for i := 0; i < 3; i++ {
			n, ok := s.Next(prev)
			if !ok {
				if s.Every() > 0 {
					t.Fatalf("@every has no next fire after %v", prev)
				}
				return
			}
			if !n.After(prev) {
				t.Fatalf("%q in %q: Next(%v) = %v is not after it", spec, tz, prev, n)
			}
			if m, _ := again.Next(prev); !m.Equal(n) {
				t.Fatalf("reparsed %q disagrees: %v vs %v", s.String(), m, n)
			}
			prev = n
		}
	})
}
