package fsm

import (
	"fmt"
	"sort"
	"strings"

	"github.com/hodei-io/hodei/proto/hodeiv1"
)

// Worker constraints (issue 11): besides exact labels (JobSpec.labels, k=v),
// a job may require of its worker's labels
//
//	key in (a,b)      the worker has key, with one of the values
//	key not in (a,b)  the worker lacks key, or has another value
//	key               the worker has key (any value)   ("key exists" too)
//	!key              the worker does not have key
//
// ParseConstraint reads that text form (what `hodei job submit
// --constraint` takes); NormalizeSpec validates and normalizes the proto
// form (values sorted and unique, constraints sorted by key then op, no
// two alike), so that a stored spec has one spelling. Keys and values are
// label text: keys match [A-Za-z0-9._/-]+ (at most MaxNameBytes), values
// are 1..MaxNameBytes bytes without ',', '(', ')' or spaces at either end
// (a label with an empty value is matched with "key" and "!key").

const (
	// MaxConstraints bounds the constraints of one spec.
	MaxConstraints = 32
	// MaxConstraintValues bounds the values of one in / not in.
	MaxConstraintValues = 64
)

// ParseConstraint parses one constraint in the text form above. Errors
// wrap ErrInvalidSpec and quote the text.
func ParseConstraint(text string) (*hodeiv1.Constraint, error) {
	s := strings.TrimSpace(text)
	bad := func(why string, args ...any) (*hodeiv1.Constraint, error) {
		return nil, invalid("constraint %q: %s", text, fmt.Sprintf(why, args...))
	}
	if s == "" {
		return bad("empty")
	}
	if strings.HasPrefix(s, "!") {
		key := strings.TrimSpace(s[1:])
		if err := validConstraintKey(key); err != "" {
			return bad("%s", err)
		}
		return &hodeiv1.Constraint{Key: key, Op: hodeiv1.ConstraintOp_CONSTRAINT_OP_NOT_EXISTS}, nil
	}
	// The key runs to the first space or '('.
	i := strings.IndexAny(s, " \t(")
	if i < 0 {
		if err := validConstraintKey(s); err != "" {
			return bad("%s", err)
		}
		return &hodeiv1.Constraint{Key: s, Op: hodeiv1.ConstraintOp_CONSTRAINT_OP_EXISTS}, nil
	}
	key, rest := s[:i], strings.TrimSpace(s[i:])
	if err := validConstraintKey(key); err != "" {
		return bad("%s", err)
	}
	var op hodeiv1.ConstraintOp
	switch {
	case rest == "exists":
		return &hodeiv1.Constraint{Key: key, Op: hodeiv1.ConstraintOp_CONSTRAINT_OP_EXISTS}, nil
	case cutWord(&rest, "not"):
		if !cutWord(&rest, "in") {
			return bad("want \"not in (v1,v2,...)\" after the key")
		}
		op = hodeiv1.ConstraintOp_CONSTRAINT_OP_NOT_IN
	case cutWord(&rest, "in"):
		op = hodeiv1.ConstraintOp_CONSTRAINT_OP_IN
	default:
		return bad("want \"in (...)\", \"not in (...)\" or \"exists\" after the key %q", key)
	}
	if !strings.HasPrefix(rest, "(") || !strings.HasSuffix(rest, ")") {
		return bad("the values must be in parentheses: (v1,v2,...)")
	}
	inner := rest[1 : len(rest)-1]
	if strings.ContainsAny(inner, "()") {
		return bad("a value contains a parenthesis")
	}
	var values []string
	if strings.TrimSpace(inner) != "" {
		for _, v := range strings.Split(inner, ",") {
			values = append(values, strings.TrimSpace(v))
		}
	}
	c := &hodeiv1.Constraint{Key: key, Op: op, Values: values}
	n, err := normalizeConstraint(c)
	if err != nil {
		return bad("%s", strings.TrimPrefix(err.Error(), ErrInvalidSpec.Error()+": "))
	}
	return n, nil
}

// cutWord removes the word w (followed by a space, '(' or the end) from the
// front of *s, and the spaces after it.
func cutWord(s *string, w string) bool {
	if !strings.HasPrefix(*s, w) {
		return false
	}
	r := (*s)[len(w):]
	if r != "" && r[0] != ' ' && r[0] != '\t' && r[0] != '(' {
		return false
	}
	*s = strings.TrimSpace(r)
	return true
}

// validConstraintKey is "" for a valid key, else why not.
func validConstraintKey(k string) string {
	if k == "" {
		return "the key is empty"
	}
	if len(k) > MaxNameBytes {
		return fmt.Sprintf("the key is %d bytes, limit is %d", len(k), MaxNameBytes)
	}
	for i := 0; i < len(k); i++ {
		c := k[i]
		switch {
		case c >= 'a' && c <= 'z', c >= 'A' && c <= 'Z', c >= '0' && c <= '9', c == '.', c == '_', c == '-', c == '/':
		default:
			return fmt.Sprintf("the key %q must match [A-Za-z0-9._/-]+", k)
		}
	}
	return ""
}

// normalizeConstraint checks c and returns a copy with sorted, unique
// values.
func normalizeConstraint(c *hodeiv1.Constraint) (*hodeiv1.Constraint, error) {
	if c == nil {
		return nil, invalid("constraint is missing")
	}
	if why := validConstraintKey(c.GetKey()); why != "" {
		return nil, invalid("%s", why)
	}
	out := &hodeiv1.Constraint{Key: c.GetKey(), Op: c.GetOp()}
	switch c.GetOp() {
	case hodeiv1.ConstraintOp_CONSTRAINT_OP_IN, hodeiv1.ConstraintOp_CONSTRAINT_OP_NOT_IN:
		vs := c.GetValues()
		if len(vs) == 0 {
			return nil, invalid("%s %s needs at least one value", c.GetKey(), opText(c.GetOp()))
		}
		if len(vs) > MaxConstraintValues {
			return nil, invalid("%s %s has %d values, limit is %d", c.GetKey(), opText(c.GetOp()), len(vs), MaxConstraintValues)
		}
		for _, v := range vs {
			switch {
			case v == "":
				return nil, invalid("%s %s has an empty value", c.GetKey(), opText(c.GetOp()))
			case len(v) > MaxNameBytes:
				return nil, invalid("a value of %s is %d bytes, limit is %d", c.GetKey(), len(v), MaxNameBytes)
			case strings.ContainsAny(v, ",()"):
				return nil, invalid("value %q of %s contains ',' '(' or ')'", v, c.GetKey())
			case v != strings.TrimSpace(v):
				return nil, invalid("value %q of %s has spaces at an end", v, c.GetKey())
			}
		}
		out.Values = append([]string(nil), vs...)
		sort.Strings(out.Values)
		k := 1
		for i := 1; i < len(out.Values); i++ {
			if out.Values[i] != out.Values[k-1] {
				out.Values[k] = out.Values[i]
				k++
			}
		}
		out.Values = out.Values[:k]
	case hodeiv1.ConstraintOp_CONSTRAINT_OP_EXISTS, hodeiv1.ConstraintOp_CONSTRAINT_OP_NOT_EXISTS:
		if len(c.GetValues()) > 0 {
			return nil, invalid("%s %s takes no values", c.GetKey(), opText(c.GetOp()))
		}
	default:
		return nil, invalid("constraint on %s has op %v", c.GetKey(), c.GetOp())
	}
	return out, nil
}

// normalizeConstraints validates and normalizes a spec's constraints; it
// also returns their byte size (counted toward the spec's limit).
func normalizeConstraints(cs []*hodeiv1.Constraint) ([]*hodeiv1.Constraint, int, error) {
	if len(cs) == 0 {
		return nil, 0, nil
	}
	if len(cs) > MaxConstraints {
		return nil, 0, invalid("%d constraints, limit is %d", len(cs), MaxConstraints)
	}
	out := make([]*hodeiv1.Constraint, len(cs))
	size := 0
	for i, c := range cs {
		n, err := normalizeConstraint(c)
		if err != nil {
			return nil, 0, fmt.Errorf("constraint %d: %w", i, err)
		}
		out[i] = n
		size += len(n.GetKey())
		for _, v := range n.GetValues() {
			size += len(v)
		}
	}
	sort.SliceStable(out, func(a, b int) bool {
		if out[a].GetKey() != out[b].GetKey() {
			return out[a].GetKey() < out[b].GetKey()
		}
		return out[a].GetOp() < out[b].GetOp()
	})
	for i := 1; i < len(out); i++ {
		if out[i].GetKey() == out[i-1].GetKey() && out[i].GetOp() == out[i-1].GetOp() {
			return nil, 0, invalid("two %q constraints on %s: write one", opText(out[i].GetOp()), out[i].GetKey())
		}
	}
	return out, size, nil
}

func opText(op hodeiv1.ConstraintOp) string {
	switch op {
	case hodeiv1.ConstraintOp_CONSTRAINT_OP_IN:
		return "in"
	case hodeiv1.ConstraintOp_CONSTRAINT_OP_NOT_IN:
		return "not in"
	case hodeiv1.ConstraintOp_CONSTRAINT_OP_EXISTS:
		return "exists"
	case hodeiv1.ConstraintOp_CONSTRAINT_OP_NOT_EXISTS:
		return "!"
	}
	return op.String()
}

// FormatConstraint is the text form of a normalized constraint, as
// ParseConstraint reads it.
func FormatConstraint(c *hodeiv1.Constraint) string {
	switch c.GetOp() {
	case hodeiv1.ConstraintOp_CONSTRAINT_OP_IN, hodeiv1.ConstraintOp_CONSTRAINT_OP_NOT_IN:
		return c.GetKey() + " " + opText(c.GetOp()) + " (" + strings.Join(c.GetValues(), ",") + ")"
	case hodeiv1.ConstraintOp_CONSTRAINT_OP_EXISTS:
		return c.GetKey()
	case hodeiv1.ConstraintOp_CONSTRAINT_OP_NOT_EXISTS:
		return "!" + c.GetKey()
	}
	return c.GetKey() + " " + c.GetOp().String()
}

// constraintHolds reports whether a worker with labels (key -> value)
// satisfies c. Values are sorted (normalized), so in is a binary search.
func constraintHolds(c *hodeiv1.Constraint, labels map[string]string) bool {
	v, ok := labels[c.GetKey()]
	switch c.GetOp() {
	case hodeiv1.ConstraintOp_CONSTRAINT_OP_EXISTS:
		return ok
	case hodeiv1.ConstraintOp_CONSTRAINT_OP_NOT_EXISTS:
		return !ok
	case hodeiv1.ConstraintOp_CONSTRAINT_OP_IN:
		return ok && hasValue(c.GetValues(), v)
	case hodeiv1.ConstraintOp_CONSTRAINT_OP_NOT_IN:
		return !ok || !hasValue(c.GetValues(), v)
	}
	return false
}

func hasValue(sorted []string, v string) bool {
	i := sort.SearchStrings(sorted, v)
	return i < len(sorted) && sorted[i] == v
}

// Unmatched explains why no worker of profiles (labels and kinds, as
// workers announce them) can run a job of spec: "" if one can, else a
// sentence naming the first requirement that none meets. It is for
// reports (GetJob), not for leasing.
func Unmatched(spec *hodeiv1.JobSpec, profiles []WorkerProfile) string {
	if len(profiles) == 0 {
		return ""
	}
	ms := make([]matcher, len(profiles))
	for i, p := range profiles {
		ms[i] = newMatcher(p.Labels, p.Kinds)
	}
	j := &hodeiv1.Job{Spec: spec}
	for _, m := range ms {
		if m.runsOn(j) {
			return ""
		}
	}
	anyKind := false
	for _, m := range ms {
		if _, ok := m.kinds[JobKind(spec)]; m.kinds == nil || ok {
			anyKind = true
		}
	}
	if !anyKind {
		return fmt.Sprintf("no connected worker runs kind %q", JobKind(spec))
	}
	for _, kv := range spec.GetLabels() {
		found := false
		for _, m := range ms {
			if v, ok := m.labels[kv.GetKey()]; ok && v == kv.GetValue() {
				found = true
				break
			}
		}
		if !found {
			return fmt.Sprintf("no connected worker has label %s=%s", kv.GetKey(), kv.GetValue())
		}
	}
	for _, c := range spec.GetConstraints() {
		found := false
		for _, m := range ms {
			if constraintHolds(c, m.labels) {
				found = true
				break
			}
		}
		if !found {
			return "no connected worker has label " + FormatConstraint(c)
		}
	}
	return "no connected worker meets every label and constraint together"
}

// WorkerProfile is what a worker announces about itself: its labels and
// the kinds it runs (empty = every kind).
type WorkerProfile struct {
	Labels []*hodeiv1.KeyValue
	Kinds  []string
}
