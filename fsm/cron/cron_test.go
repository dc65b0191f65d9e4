package cron

import (
	"errors"
	"strings"
	"testing"
	"time"
)

func mustParse(t *testing.T, spec, tz string) *Schedule {
	t.Helper()
	s, err := Parse(spec, tz)
	if err != nil {
		t.Fatalf("Parse(%q, %q): %v", spec, tz, err)
	}
	return s
}

func utc(s string) time.Time {
	t, err := time.Parse(time.RFC3339, s)
	if err != nil {
		panic(err)
	}
	return t
}

// fires returns the first n fire times after from, in UTC RFC 3339.
func fires(s *Schedule, from time.Time, n int) []string {
	var out []string
	for i := 0; i < n; i++ {
		t, ok := s.Next(from)
		if !ok {
			out = append(out, "none")
			break
		}
		out = append(out, t.UTC().Format(time.RFC3339))
		from = t
	}
	return out
}

func TestNextExact(t *testing.T) {
	cases := []struct {
		name, spec, tz, from string
		want                 []string
	}{
		{"every minute", "* * * * *", "", "2026-01-01T00:00:30Z",
			[]string{"2026-01-01T00:01:00Z", "2026-01-01T00:02:00Z"}},
		{"steps and ranges", "*/20 9-10 * * *", "", "2026-01-01T00:00:00Z",
			[]string{"2026-01-01T09:00:00Z", "2026-01-01T09:20:00Z", "2026-01-01T09:40:00Z", "2026-01-01T10:00:00Z", "2026-01-01T10:20:00Z", "2026-01-01T10:40:00Z", "2026-01-02T09:00:00Z"}},
		{"start/step", "5/30 0 * * *", "", "2026-01-01T00:00:00Z",
			[]string{"2026-01-01T00:05:00Z", "2026-01-01T00:35:00Z", "2026-01-02T00:05:00Z"}},
		{"lists and names", "0 12 * jan,jul mon-wed", "", "2026-01-01T00:00:00Z", // 2026-01-01 is a Thursday
			[]string{"2026-01-05T12:00:00Z", "2026-01-06T12:00:00Z", "2026-01-07T12:00:00Z", "2026-01-12T12:00:00Z"}},
		{"dow 7 is sunday", "0 0 * * 7", "", "2026-01-01T00:00:00Z",
			[]string{"2026-01-04T00:00:00Z", "2026-01-11T00:00:00Z"}},
		{"dom or dow when both restricted", "0 0 13 * fri", "", "2026-02-01T00:00:00Z",
			[]string{"2026-02-06T00:00:00Z", "2026-02-13T00:00:00Z", "2026-02-20T00:00:00Z", "2026-02-27T00:00:00Z", "2026-03-06T00:00:00Z", "2026-03-13T00:00:00Z"}},
		{"feb 29", "0 0 29 2 *", "", "2026-01-01T00:00:00Z",
			[]string{"2028-02-29T00:00:00Z", "2032-02-29T00:00:00Z"}},
		{"31st skips short months", "0 0 31 * *", "", "2026-01-31T00:00:00Z",
			[]string{"2026-03-31T00:00:00Z", "2026-05-31T00:00:00Z"}},
		{"@hourly", "@hourly", "", "2026-01-01T00:59:59Z", []string{"2026-01-01T01:00:00Z", "2026-01-01T02:00:00Z"}},
		{"@daily in a zone", "@daily", "America/New_York", "2026-01-01T00:00:00Z", []string{"2026-01-01T05:00:00Z", "2026-01-02T05:00:00Z"}},
		{"@weekly", "@weekly", "", "2026-01-01T00:00:00Z", []string{"2026-01-04T00:00:00Z", "2026-01-11T00:00:00Z"}},
		{"@monthly", "@monthly", "", "2026-01-15T00:00:00Z", []string{"2026-02-01T00:00:00Z", "2026-03-01T00:00:00Z"}},
		{"@yearly", "@yearly", "", "2026-01-01T00:00:00Z", []string{"2027-01-01T00:00:00Z", "2028-01-01T00:00:00Z"}},
		{"@every 1s", "@every 1s", "", "2026-01-01T00:00:00Z", []string{"2026-01-01T00:00:01Z", "2026-01-01T00:00:02Z"}},
		{"@every 90m from the epoch", "@every 90m", "Europe/Berlin", "2026-01-01T00:00:00Z", []string{"2026-01-01T01:30:00Z", "2026-01-01T03:00:00Z"}},

		// Europe/Berlin: 2026-03-29 02:00 CET -> 03:00 CEST (01:00Z);
		// 2026-10-25 03:00 CEST -> 02:00 CET (01:00Z).
		{"berlin gap fires at the end of the gap", "30 2 * * *", "Europe/Berlin", "2026-03-28T02:00:00Z",
			[]string{"2026-03-29T01:00:00Z", "2026-03-30T00:30:00Z"}},
		{"berlin gap fires once for many wall times", "*/15 2 * * *", "Europe/Berlin", "2026-03-28T23:00:00Z",
			[]string{"2026-03-29T01:00:00Z", "2026-03-30T00:00:00Z", "2026-03-30T00:15:00Z"}},
		{"berlin gap and the first valid time coincide once", "0,30 2,3 * * *", "Europe/Berlin", "2026-03-28T23:00:00Z",
			[]string{"2026-03-29T01:00:00Z", "2026-03-29T01:30:00Z", "2026-03-30T00:00:00Z"}},
		{"berlin repeat fires at the first occurrence", "30 2 * * *", "Europe/Berlin", "2026-10-24T12:00:00Z",
			[]string{"2026-10-25T00:30:00Z", "2026-10-26T01:30:00Z"}},
		{"berlin hourly over the repeat", "0 * * * *", "Europe/Berlin", "2026-10-24T23:30:00Z",
			[]string{"2026-10-25T00:00:00Z", "2026-10-25T02:00:00Z", "2026-10-25T03:00:00Z"}},
		{"berlin every minute over the gap", "* * * * *", "Europe/Berlin", "2026-03-29T00:58:00Z",
			[]string{"2026-03-29T00:59:00Z", "2026-03-29T01:00:00Z", "2026-03-29T01:01:00Z"}},

		// America/New_York: 2026-03-08 02:00 EST -> 03:00 EDT (07:00Z);
		// 2026-11-01 02:00 EDT -> 01:00 EST (06:00Z).
		{"new york gap", "30 2 * * *", "America/New_York", "2026-03-07T12:00:00Z",
			[]string{"2026-03-08T07:00:00Z", "2026-03-09T06:30:00Z"}},
		{"new york repeat", "30 1 * * *", "America/New_York", "2026-10-31T12:00:00Z",
			[]string{"2026-11-01T05:30:00Z", "2026-11-02T06:30:00Z"}},
		{"new york from inside the second pass", "45 1 * * *", "America/New_York", "2026-11-01T06:30:00Z",
			[]string{"2026-11-02T06:45:00Z"}},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			s := mustParse(t, c.spec, c.tz)
			got := fires(s, utc(c.from), len(c.want))
			if strings.Join(got, " ") != strings.Join(c.want, " ") {
				t.Fatalf("%q in %q after %s:\n got %v\nwant %v", c.spec, c.tz, c.from, got, c.want)
			}
		})
	}
}

func TestParseErrors(t *testing.T) {
	cases := []struct{ spec, tz, want string }{
		{"", "", "empty"},
		{"* * * *", "", "4 fields"},
		{"60 * * * *", "", "minute field"},
		{"* 24 * * *", "", "hour field"},
		{"* * 0 * *", "", "day of month field"},
		{"* * * 13 *", "", "month field"},
		{"* * * * 8", "", "day of week field"},
		{"*/0 * * * *", "", "step"},
		{"5-1 * * * *", "", "starts after it ends"},
		{"1,,2 * * * *", "", "empty list item"},
		{"0 0 30 2 *", "", "never fires"},
		{"@every 500ms", "", "shorter than"},
		{"@every", "", "one duration"},
		{"@every x", "", "@every"},
		{"@sometimes", "", "unknown descriptor"},
		{"* * * * *", "Mars/Olympus", "unknown time zone"},
		{"* * * * *", "Local", "not an IANA zone"},
		{strings.Repeat("1", MaxSpecBytes+1), "", "limit"},
	}
	for _, c := range cases {
		_, err := Parse(c.spec, c.tz)
		if err == nil || !errors.Is(err, ErrInvalid) || !strings.Contains(err.Error(), c.want) {
			t.Errorf("Parse(%q, %q) = %v, want an ErrInvalid mentioning %q", c.spec, c.tz, err, c.want)
		}
	}
}

func TestJitterDeterministicAndBounded(t *testing.T) {
	if Jitter("a", 1, 0) != 0 {
		t.Fatal("no jitter without a bound")
	}
	seen := map[time.Duration]bool{}
	for slot := int64(0); slot < 1000; slot++ {
		j := Jitter("nightly", slot*1000, 30*time.Second)
		if j < 0 || j >= 30*time.Second {
			t.Fatalf("jitter %v out of [0, 30s)", j)
		}
		if j != Jitter("nightly", slot*1000, 30*time.Second) {
			t.Fatal("jitter is not deterministic")
		}
		seen[j] = true
	}
	if len(seen) < 900 {
		t.Fatalf("jitter spreads poorly: %d distinct values of 1000", len(seen))
	}
}

func BenchmarkNext(b *testing.B) {
	s, _ := Parse("*/5 * * * *", "Europe/Berlin")
	t0 := utc("2026-03-29T00:00:00Z")
	for i := 0; i < b.N; i++ {
		s.Next(t0)
	}
}
