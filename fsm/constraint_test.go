package fsm

import (
	"strings"
	"testing"
	"unicode/utf8"

	"google.golang.org/protobuf/proto"

	"github.com/hodei-io/hodei/proto/hodeiv1"
	"github.com/hodei-io/hodei/proto/internalpb"
)

func TestParseConstraint(t *testing.T) {
	in := hodeiv1.ConstraintOp_CONSTRAINT_OP_IN
	notIn := hodeiv1.ConstraintOp_CONSTRAINT_OP_NOT_IN
	exists := hodeiv1.ConstraintOp_CONSTRAINT_OP_EXISTS
	absent := hodeiv1.ConstraintOp_CONSTRAINT_OP_NOT_EXISTS
	for text, want := range map[string]*hodeiv1.Constraint{
		"region in (eu,us)":        {Key: "region", Op: in, Values: []string{"eu", "us"}},
		" zone in ( b , a , b ) ":  {Key: "zone", Op: in, Values: []string{"a", "b"}},
		"region in(eu)":            {Key: "region", Op: in, Values: []string{"eu"}},
		"region not in (eu)":       {Key: "region", Op: notIn, Values: []string{"eu"}},
		"a/b.c_d-e not  in  (x,y)": {Key: "a/b.c_d-e", Op: notIn, Values: []string{"x", "y"}},
		"gpu":                      {Key: "gpu", Op: exists},
		"gpu exists":               {Key: "gpu", Op: exists},
		"!gpu":                     {Key: "gpu", Op: absent},
		"! gpu":                    {Key: "gpu", Op: absent},
	} {
		got, err := ParseConstraint(text)
		if err != nil {
			t.Errorf("%q: %v", text, err)
			continue
		}
		if !proto.Equal(got, want) {
			t.Errorf("%q: got %v, want %v", text, got, want)
		}
	}
	for text, why := range map[string]string{
		"":             "empty",
		"!":            "key is empty",
		"k in ()":      "at least one value",
		"k in (a,)":    "empty value",
		"k in (a":      "parentheses",
		"k in a,b":     "parentheses",
		"k in (a,(b))": "parenthesis",
		"k notin (a)":  "want \"in (...)\"",
		"k not (a)":    "not in",
		"k = v":        "want \"in (...)\"",
		"k$ in (a)":    "must match",
		"k exists (a)": "want \"in (...)\"",
		"!k in (a)":    "must match",
		"k in (" + strings.Repeat("v,", 64) + "w)": "limit is 64",
	} {
		_, err := ParseConstraint(text)
		if err == nil || !strings.Contains(err.Error(), why) || !strings.Contains(err.Error(), "constraint") {
			t.Errorf("%q: error %v, want one saying %q", text, err, why)
		}
	}
}

func TestConstraintMatching(t *testing.T) {
	h := newHarness(t)
	mk := func(cs ...string) *hodeiv1.JobSpec {
		sp := spec("true")
		for _, c := range cs {
			p, err := ParseConstraint(c)
			if err != nil {
				t.Fatal(err)
			}
			sp.Constraints = append(sp.Constraints, p)
		}
		return sp
	}
	// In an entry of version 3 (what an older binary applies) a spec with
	// constraints is refused: it would drop them and lease anywhere.
	h.index++
	r := h.f.ApplyEntry(h.index, &internalpb.Entry{Version: EntryVersionDispatch, NowMs: h.now,
		Commands: []*internalpb.Command{submitCmd(mk("gpu"))}})[0]
	wantCode(t, r, internalpb.Code_CODE_INVALID_ARGUMENT, "constraints need an entry of version 4")

	res := h.submitted(mk("region in (us,eu)"), mk("region not in (eu)"), mk("gpu"), mk("!gpu", "region in (eu)"))
	if got := res[0].GetJob().GetSpec().GetConstraints()[0].GetValues(); strings.Join(got, ",") != "eu,us" {
		t.Fatalf("stored values %v, want them sorted", got)
	}
	leased := func(worker string, labels ...*hodeiv1.KeyValue) []string {
		var ids []string
		for _, l := range h.ok(leaseCmd(worker, 10, labels...)).GetLeases() {
			ids = append(ids, l.GetJob().GetId())
			h.ok(cancelCmd(l.GetJob().GetId(), "")) // keep the others' view simple
		}
		return ids
	}
	_ = leased
	// Check each job against worker profiles with the pure matcher.
	for _, tc := range []struct {
		labels []*hodeiv1.KeyValue
		want   []bool
	}{
		{nil, []bool{false, true, false, false}},
		{[]*hodeiv1.KeyValue{kv("region", "eu")}, []bool{true, false, false, true}},
		{[]*hodeiv1.KeyValue{kv("region", "us"), kv("gpu", "")}, []bool{true, true, true, false}},
		{[]*hodeiv1.KeyValue{kv("region", "ap")}, []bool{false, true, false, false}},
	} {
		m := newMatcher(tc.labels, nil)
		for i, r := range res {
			if got := m.runsOn(r.GetJob()); got != tc.want[i] {
				t.Errorf("labels %v, job %d (%v): runs=%v, want %v", tc.labels, i, r.GetJob().GetSpec().GetConstraints(), got, tc.want[i])
			}
		}
	}
	// And through a lease: a worker in eu without a gpu gets jobs 0 and 3.
	got := leased("w", kv("region", "eu"))
	if strings.Join(got, " ") != res[0].GetJob().GetId()+" "+res[3].GetJob().GetId() {
		t.Fatalf("leased %v", got)
	}
	// Normalization: duplicates of a constraint are refused, order fixed.
	sp := mk("b", "a in (x)")
	n, err := NormalizeSpec(sp, DefaultConfig())
	if err != nil || n.GetConstraints()[0].GetKey() != "a" {
		t.Fatalf("normalize: %v %v", n, err)
	}
	if _, err := NormalizeSpec(mk("a", "a"), DefaultConfig()); err == nil || !strings.Contains(err.Error(), "two") {
		t.Fatalf("duplicate constraint: %v", err)
	}
	bad := spec("true")
	bad.Constraints = []*hodeiv1.Constraint{{Key: "k", Op: hodeiv1.ConstraintOp_CONSTRAINT_OP_EXISTS, Values: []string{"x"}}}
	if _, err := NormalizeSpec(bad, DefaultConfig()); err == nil || !strings.Contains(err.Error(), "constraint 0") {
		t.Fatalf("exists with values: %v", err)
	}
}

func TestUnmatched(t *testing.T) {
	sp := spec("true")
	c, _ := ParseConstraint("region in (eu,us)")
	sp.Constraints = []*hodeiv1.Constraint{c}
	ps := []WorkerProfile{{Labels: []*hodeiv1.KeyValue{kv("region", "ap")}}}
	if got := Unmatched(sp, ps); got != "no connected worker has label region in (eu,us)" {
		t.Fatalf("got %q", got)
	}
	if got := Unmatched(sp, append(ps, WorkerProfile{Labels: []*hodeiv1.KeyValue{kv("region", "eu")}})); got != "" {
		t.Fatalf("a matching profile: %q", got)
	}
	if got := Unmatched(kindSpec("mail", ""), ps[:0]); got != "" {
		t.Fatalf("no profiles: %q", got)
	}
	if got := Unmatched(kindSpec("mail", ""), []WorkerProfile{{Kinds: []string{"shell"}}}); !strings.Contains(got, `kind "mail"`) {
		t.Fatalf("kind: %q", got)
	}
}

// FuzzConstraint: the parser never panics; what it accepts is normalized
// (NormalizeSpec takes it unchanged) and its text form parses back to the
// same constraint.
func FuzzConstraint(f *testing.F) {
	for _, s := range []string{"region in (eu,us)", "!gpu", "gpu exists", "k not in (a)"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, text string) {
		c, err := ParseConstraint(text)
		if err != nil {
			if !strings.Contains(err.Error(), "constraint") {
				t.Fatalf("error %q does not say constraint", err)
			}
			return
		}
		if !utf8.ValidString(c.GetKey()) {
			t.Fatalf("key %q", c.GetKey())
		}
		n, err := normalizeConstraint(c)
		if err != nil || !proto.Equal(n, c) {
			t.Fatalf("accepted %q as %v, which does not normalize to itself: %v %v", text, c, n, err)
		}
		back, err := ParseConstraint(FormatConstraint(c))
		if err != nil || !proto.Equal(back, c) {
			t.Fatalf("%q -> %v -> %q -> %v (%v)", text, c, FormatConstraint(c), back, err)
		}
	})
}
