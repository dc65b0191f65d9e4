package pipeline

import (
	"testing"

	"github.com/hodei-io/hodei/proto/hodeiv1"
)

// TestDecideTable is the trigger-rule table: each rule against the parent
// outcomes that decide it, including the partial states where it must
// still wait (airflow#39801: rules misfiring on fan-out).
func TestDecideTable(t *testing.T) {
	const (
		allSuccess = hodeiv1.TriggerRule_TRIGGER_RULE_ALL_SUCCESS
		unset      = hodeiv1.TriggerRule_TRIGGER_RULE_UNSPECIFIED
		allDone    = hodeiv1.TriggerRule_TRIGGER_RULE_ALL_DONE
		oneSuccess = hodeiv1.TriggerRule_TRIGGER_RULE_ONE_SUCCESS
		oneFailed  = hodeiv1.TriggerRule_TRIGGER_RULE_ONE_FAILED
		noneFailed = hodeiv1.TriggerRule_TRIGGER_RULE_NONE_FAILED
	)
	c := func(parents, ok, failed, skipped int32) Counts {
		return Counts{Parents: parents, Succeeded: ok, Failed: failed, Skipped: skipped}
	}
	cases := []struct {
		rule hodeiv1.TriggerRule
		c    Counts
		want Decision
	}{
		// No parents: a root runs whatever its rule.
		{allSuccess, c(0, 0, 0, 0), Run},
		{oneFailed, c(0, 0, 0, 0), Run},
		{oneSuccess, c(0, 0, 0, 0), Run},
		{noneFailed, c(0, 0, 0, 0), Run},
		{allDone, c(0, 0, 0, 0), Run},

		{allSuccess, c(3, 0, 0, 0), Wait},
		{allSuccess, c(3, 2, 0, 0), Wait},
		{allSuccess, c(3, 3, 0, 0), Run},
		{allSuccess, c(3, 1, 1, 0), Skip},
		{allSuccess, c(3, 1, 0, 1), Skip},
		{unset, c(2, 2, 0, 0), Run},
		{unset, c(2, 0, 1, 0), Skip},

		{allDone, c(3, 2, 0, 0), Wait},
		{allDone, c(3, 1, 1, 0), Wait},
		{allDone, c(3, 1, 1, 1), Run},
		{allDone, c(3, 0, 3, 0), Run},
		{allDone, c(3, 0, 0, 3), Run},

		{oneSuccess, c(3, 0, 0, 0), Wait},
		{oneSuccess, c(3, 0, 2, 0), Wait},
		{oneSuccess, c(3, 1, 0, 0), Run}, // at the first success, not waiting for the rest
		{oneSuccess, c(3, 0, 2, 1), Skip},
		{oneSuccess, c(1, 0, 0, 1), Skip},

		{oneFailed, c(3, 2, 0, 0), Wait},
		{oneFailed, c(3, 0, 1, 0), Run},
		{oneFailed, c(3, 2, 0, 1), Skip},
		{oneFailed, c(2, 2, 0, 0), Skip},

		{noneFailed, c(3, 1, 0, 1), Wait},
		{noneFailed, c(3, 2, 0, 1), Run},
		{noneFailed, c(3, 0, 0, 3), Run},
		{noneFailed, c(3, 0, 1, 0), Skip}, // as soon as one failed
		{noneFailed, c(3, 2, 1, 0), Skip},
	}
	for _, tc := range cases {
		if got := Decide(tc.rule, tc.c); got != tc.want {
			t.Errorf("Decide(%s, %+v) = %s, want %s", RuleName(tc.rule), tc.c, got, tc.want)
		}
	}
}

// TestDecideIsMonotone checks, for every rule and every order in which 4
// parents can end, that once a decision is Run or Skip it never changes
// as more parents end (the FSM decides a step once per run).
func TestDecideIsMonotone(t *testing.T) {
	rules := []hodeiv1.TriggerRule{1, 2, 3, 4, 5}
	const n = 4
	// outcome sequences: each parent 0=success 1=failed 2=skipped
	total := 1
	for i := 0; i < n; i++ {
		total *= 3
	}
	for _, r := range rules {
		for code := 0; code < total; code++ {
			c := Counts{Parents: n}
			first := Wait
			x := code
			for i := 0; i < n; i++ {
				switch x % 3 {
				case 0:
					c.Succeeded++
				case 1:
					c.Failed++
				case 2:
					c.Skipped++
				}
				x /= 3
				d := Decide(r, c)
				if first != Wait && d != first {
					t.Fatalf("%s: decision changed from %s to %s at %+v", RuleName(r), first, d, c)
				}
				if first == Wait {
					first = d
				}
			}
			if first == Wait {
				t.Fatalf("%s: still waiting after every parent ended (%+v)", RuleName(r), c)
			}
		}
	}
}

func TestRuleAndPolicyNames(t *testing.T) {
	for _, r := range []hodeiv1.TriggerRule{1, 2, 3, 4, 5} {
		got, err := ParseRule(RuleName(r))
		if err != nil || got != r {
			t.Fatalf("ParseRule(RuleName(%v)) = %v, %v", r, got, err)
		}
	}
	if _, err := ParseRule("some_success"); err == nil {
		t.Fatal("an unknown rule parsed")
	}
	for _, p := range []hodeiv1.FailurePolicy{1, 2} {
		got, err := ParsePolicy(PolicyName(p))
		if err != nil || got != p {
			t.Fatalf("ParsePolicy(PolicyName(%v)) = %v, %v", p, got, err)
		}
	}
	if _, err := ParsePolicy("retry"); err == nil {
		t.Fatal("an unknown policy parsed")
	}
}
