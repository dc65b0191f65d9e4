// Package cron parses schedule specifications and computes their fire
// times. It is pure and deterministic (no clock, no randomness), so the
// shard FSM can call it from Apply: the same spec, zone and instant give the
// same answer on every replica of the same binary.
//
// A spec is one of
//
//   - a standard 5-field cron line "MIN HOUR DOM MONTH DOW": each field is
//     "*", a value, a range "a-b", a list "a,b-c", or any of these with a
//     step "/n" ("*/15", "1-30/2", "5/10" = from 5 to the field's maximum).
//     Months may be named jan..dec, days of the week sun..sat (0 and 7 are
//     both Sunday). As in Vixie cron, when both DOM and DOW are restricted
//     (neither starts with "*") a day matches if either matches;
//   - "@hourly", "@daily" (= "@midnight"), "@weekly", "@monthly",
//     "@yearly" (= "@annually"): the usual 5-field equivalents;
//   - "@every DURATION" (Go duration syntax, at least 1s, whole
//     milliseconds): fires at every multiple of DURATION since the Unix
//     epoch, in absolute time (a zone does not change it).
//
// Cron fields are wall-clock times in the schedule's IANA zone. Two
// daylight-saving rules make Next well defined:
//
//   - Gap (spring forward): a wall time that does not exist that day fires
//     at the first instant after the gap (the transition), once, however
//     many of the schedule's wall times fall into the gap.
//   - Repeat (fall back): a wall time that occurs twice fires once, at its
//     first occurrence; the second pass through the repeated hour fires
//     nothing.
//
// The zone database is embedded (time/tzdata), so a binary in a FROM
// scratch image knows every zone. All replicas of a shard must resolve
// zones from the same data: run the same binary on every node.
package cron

import (
	"errors"
	"fmt"
	"hash/fnv"
	"math/bits"
	"strconv"
	"strings"
	"time"
	_ "time/tzdata" // zones for images without /usr/share/zoneinfo
)

// ErrInvalid is wrapped by every Parse error.
var ErrInvalid = errors.New("invalid cron spec")

// MinEvery is the shortest @every interval.
const MinEvery = time.Second

// MaxSpecBytes bounds the length of a spec.
const MaxSpecBytes = 256

// Schedule is a parsed spec in a zone. The zero value is not valid.
type Schedule struct {
	spec  string
	loc   *time.Location
	every time.Duration // @every; 0 for cron fields

	minute, hour, dom, month, dow uint64 // bit i set = value i allowed
	domStar, dowStar              bool
}

type field struct {
	name     string
	min, max int
	names    map[string]int
}

var (
	monthNames = map[string]int{"jan": 1, "feb": 2, "mar": 3, "apr": 4, "may": 5, "jun": 6,
		"jul": 7, "aug": 8, "sep": 9, "oct": 10, "nov": 11, "dec": 12}
	dowNames = map[string]int{"sun": 0, "mon": 1, "tue": 2, "wed": 3, "thu": 4, "fri": 5, "sat": 6}

	fields = [5]field{
		{name: "minute", min: 0, max: 59},
		{name: "hour", min: 0, max: 23},
		{name: "day of month", min: 1, max: 31},
		{name: "month", min: 1, max: 12, names: monthNames},
		{name: "day of week", min: 0, max: 7, names: dowNames},
	}

	macros = map[string]string{
		"@yearly":   "0 0 1 1 *",
		"@annually": "0 0 1 1 *",
		"@monthly":  "0 0 1 * *",
		"@weekly":   "0 0 * * 0",
		"@daily":    "0 0 * * *",
		"@midnight": "0 0 * * *",
		"@hourly":   "0 * * * *",
	}
)

// LoadZone resolves an IANA zone name; "" is UTC. "Local" is refused: it
// would differ between nodes.
func LoadZone(tz string) (*time.Location, error) {
	if tz == "" || tz == "UTC" {
		return time.UTC, nil
	}
	if tz == "Local" || strings.HasPrefix(tz, "/") || strings.Contains(tz, "..") {
		return nil, fmt.Errorf("%w: time zone %q is not an IANA zone name", ErrInvalid, tz)
	}
	loc, err := time.LoadLocation(tz)
	if err != nil {
		return nil, fmt.Errorf("%w: unknown time zone %q", ErrInvalid, tz)
	}
	return loc, nil
}

// Parse parses spec in the IANA zone tz ("" = UTC). Errors wrap ErrInvalid
// and name the part that is wrong.
func Parse(spec, tz string) (*Schedule, error) {
	if len(spec) > MaxSpecBytes {
		return nil, fmt.Errorf("%w: spec is %d bytes, limit is %d", ErrInvalid, len(spec), MaxSpecBytes)
	}
	loc, err := LoadZone(tz)
	if err != nil {
		return nil, err
	}
	s := strings.TrimSpace(spec)
	if s == "" {
		return nil, fmt.Errorf("%w: spec is empty", ErrInvalid)
	}
	out := &Schedule{spec: s, loc: loc}
	if strings.HasPrefix(s, "@") {
		f := strings.Fields(s)
		if strings.EqualFold(f[0], "@every") {
			if len(f) != 2 {
				return nil, fmt.Errorf("%w: %q: @every takes one duration", ErrInvalid, spec)
			}
			d, err := time.ParseDuration(f[1])
			if err != nil {
				return nil, fmt.Errorf("%w: @every: %v", ErrInvalid, err)
			}
			if d < MinEvery {
				return nil, fmt.Errorf("%w: @every %v is shorter than %v", ErrInvalid, d, MinEvery)
			}
			if d%time.Millisecond != 0 {
				return nil, fmt.Errorf("%w: @every %v is not a whole number of milliseconds", ErrInvalid, d)
			}
			out.every = d
			return out, nil
		}
		m, ok := macros[strings.ToLower(f[0])]
		if !ok || len(f) != 1 {
			return nil, fmt.Errorf("%w: unknown descriptor %q (want @every DURATION, @hourly, @daily, @weekly, @monthly or @yearly)", ErrInvalid, s)
		}
		s = m
	}
	parts := strings.Fields(s)
	if len(parts) != 5 {
		return nil, fmt.Errorf("%w: %q has %d fields, want 5 (minute hour day-of-month month day-of-week)", ErrInvalid, spec, len(parts))
	}
	var sets [5]uint64
	for i, p := range parts {
		set, err := parseField(p, fields[i])
		if err != nil {
			return nil, err
		}
		sets[i] = set
	}
	out.minute, out.hour, out.dom, out.month, out.dow = sets[0], sets[1], sets[2], sets[3], sets[4]
	if out.dow&(1<<7) != 0 { // 7 is Sunday too
		out.dow = out.dow&^(1<<7) | 1
	}
	out.domStar = strings.HasPrefix(parts[2], "*")
	out.dowStar = strings.HasPrefix(parts[4], "*")
	if out.dowStar {
		// Day of month alone decides: it must exist in some allowed month
		// (a restricted day of week would make any month possible).
		if !out.domPossible() {
			return nil, fmt.Errorf("%w: %q never fires: no allowed month has the allowed days of the month", ErrInvalid, spec)
		}
	}
	return out, nil
}

// domPossible reports whether some allowed month has an allowed day.
func (s *Schedule) domPossible() bool {
	maxDays := [13]int{0, 31, 29, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31}
	for m := 1; m <= 12; m++ {
		if s.month&(1<<m) == 0 {
			continue
		}
		if s.dom&(uint64(1)<<(maxDays[m]+1)-1) != 0 {
			return true
		}
	}
	return false
}

func parseField(p string, f field) (uint64, error) {
	var set uint64
	for _, item := range strings.Split(p, ",") {
		if item == "" {
			return 0, fmt.Errorf("%w: %s field %q has an empty list item", ErrInvalid, f.name, p)
		}
		rng, stepStr, hasStep := strings.Cut(item, "/")
		step := 1
		if hasStep {
			n, err := strconv.Atoi(stepStr)
			if err != nil || n < 1 || n > f.max {
				return 0, fmt.Errorf("%w: %s field: step %q must be 1..%d", ErrInvalid, f.name, stepStr, f.max)
			}
			step = n
		}
		var lo, hi int
		switch {
		case rng == "*":
			lo, hi = f.min, f.max
			if f.name == "day of week" {
				hi = 6
			}
		case strings.Contains(rng, "-"):
			a, b, _ := strings.Cut(rng, "-")
			var err error
			if lo, err = value(a, f); err != nil {
				return 0, err
			}
			if hi, err = value(b, f); err != nil {
				return 0, err
			}
			if lo > hi {
				return 0, fmt.Errorf("%w: %s field: range %q starts after it ends", ErrInvalid, f.name, rng)
			}
		default:
			v, err := value(rng, f)
			if err != nil {
				return 0, err
			}
			lo, hi = v, v
			if hasStep {
				hi = f.max
			}
		}
		for v := lo; v <= hi; v += step {
			set |= 1 << v
		}
	}
	return set, nil
}

func value(s string, f field) (int, error) {
	if v, ok := f.names[strings.ToLower(s)]; ok {
		return v, nil
	}
	v, err := strconv.Atoi(s)
	if err != nil || v < f.min || v > f.max {
		return 0, fmt.Errorf("%w: %s field: %q is not a value in %d..%d", ErrInvalid, f.name, s, f.min, f.max)
	}
	return v, nil
}

// String returns the spec as given (trimmed).
func (s *Schedule) String() string { return s.spec }

// Location returns the schedule's zone.
func (s *Schedule) Location() *time.Location { return s.loc }

// Every returns the @every interval, or 0 for a cron spec.
func (s *Schedule) Every() time.Duration { return s.every }

// searchYears bounds Next's search; a parsed spec always fires within it
// (the rarest, Feb 29, recurs within 8 years).
const searchYears = 9

// Next returns the first fire time strictly after after, following the
// daylight-saving rules of the package comment. ok is false if there is
// none within searchYears (only possible for times near the end of the
// representable range).
func (s *Schedule) Next(after time.Time) (time.Time, bool) {
	if s.every > 0 {
		d := s.every.Milliseconds()
		ms := after.UnixMilli()
		// smallest multiple of d strictly greater than ms (floor division)
		q := ms / d
		if ms%d != 0 && ms < 0 {
			q--
		}
		return time.UnixMilli((q + 1) * d).UTC(), true
	}
	after = after.In(s.loc)
	// Candidate wall times more than slack before after's wall time cannot
	// map to an instant after it (offsets change by far less).
	const slack = 6 * 3600
	afterWall := wallSeconds(after)
	// Near after, in the usual case of no transition within two days, a
	// wall time maps to an instant by after's offset: no zone lookups.
	_, offNow := after.Zone()
	stable := s.offsetAt(after.Unix()-2*86400) == int64(offNow) && s.offsetAt(after.Unix()+2*86400) == int64(offNow)
	lo := afterWall - slack // wall times before lo cannot fire after after
	if stable {
		lo = afterWall
	}
	day := time.Date(after.Year(), after.Month(), after.Day(), 0, 0, 0, 0, time.UTC).AddDate(0, 0, -1)
	end := day.AddDate(searchYears, 0, 0)
	for ; day.Before(end); day = day.AddDate(0, 0, 1) {
		if s.month&(1<<int(day.Month())) == 0 {
			// jump to the first day of the next month
			day = time.Date(day.Year(), day.Month()+1, 1, 0, 0, 0, 0, time.UTC).AddDate(0, 0, -1)
			continue
		}
		if !s.dayMatches(day) {
			continue
		}
		base := day.Unix()
		if base+86400 <= lo {
			continue
		}
		for h := 0; h < 24; h++ {
			if s.hour&(1<<h) == 0 {
				continue
			}
			if base+int64(h+1)*3600 <= lo {
				continue
			}
			for m := s.minute; m != 0; m &= m - 1 {
				min := bits.TrailingZeros64(m)
				w := base + int64(h)*3600 + int64(min)*60
				if w < lo {
					continue
				}
				if stable && w <= afterWall+86400 {
					if w <= afterWall {
						continue
					}
					return time.Unix(w-int64(offNow), 0).In(s.loc), true
				}
				if t := s.instant(w); t.After(after) {
					return t, true
				}
			}
		}
	}
	return time.Time{}, false
}

func (s *Schedule) dayMatches(day time.Time) bool {
	domOK := s.dom&(1<<day.Day()) != 0
	dowOK := s.dow&(1<<int(day.Weekday())) != 0
	if s.domStar || s.dowStar {
		return domOK && dowOK
	}
	return domOK || dowOK
}

// offsetAt is the zone offset (seconds east of UTC) at instant u.
func (s *Schedule) offsetAt(u int64) int64 {
	_, off := time.Unix(u, 0).In(s.loc).Zone()
	return int64(off)
}

// wallSeconds is t's wall clock in its zone, as seconds of a UTC clock.
func wallSeconds(t time.Time) int64 {
	_, off := t.Zone()
	return t.Unix() + int64(off)
}

// instant maps a wall time (seconds of a UTC clock) in s.loc to the instant
// it fires at: the unique instant with that wall time; the first of two
// (repeat); or, in a gap, the transition that ends the gap.
func (s *Schedule) instant(wall int64) time.Time {
	offAt := s.offsetAt
	// Offsets in effect a day before and after cover any one transition.
	oa, ob := offAt(wall-86400), offAt(wall+86400)
	u1, u2 := wall-oa, wall-ob
	v1, v2 := u1+offAt(u1) == wall, u2+offAt(u2) == wall
	switch {
	case v1 && v2:
		return time.Unix(min(u1, u2), 0).In(s.loc)
	case v1:
		return time.Unix(u1, 0).In(s.loc)
	case v2:
		return time.Unix(u2, 0).In(s.loc)
	}
	// A gap: the zone in effect at the later candidate starts at the
	// transition.
	start, _ := time.Unix(max(u1, u2), 0).In(s.loc).ZoneBounds()
	if start.IsZero() {
		return time.Unix(max(u1, u2), 0).In(s.loc)
	}
	return start
}

// Jitter returns a deterministic delay in [0, max) for the slot of a
// schedule: a hash of (id, slotMs), so every replica and every retry agree
// and slots of one schedule spread out. max <= 0 gives 0.
func Jitter(id string, slotMs int64, max time.Duration) time.Duration {
	if max <= 0 {
		return 0
	}
	h := fnv.New64a()
	h.Write([]byte(id))
	var b [8]byte
	for i := range b {
		b[i] = byte(uint64(slotMs) >> (8 * i))
	}
	h.Write(b[:])
	ms := max.Milliseconds()
	if ms <= 0 {
		return 0
	}
	return time.Duration(h.Sum64()%uint64(ms)) * time.Millisecond
}
