package pipeline_test

import (
	"errors"
	"strings"
	"testing"

	"github.com/hodei-io/hodei/fsm"
	"github.com/hodei-io/hodei/fsm/pipeline"
	"github.com/hodei-io/hodei/proto/hodeiv1"
)

var decodeOpts = pipeline.DecodeOptions{ParseConstraint: fsm.ParseConstraint}

const yamlFile = `name: build
tenant: acme
failure_policy: continue
steps:
  - id: fetch
    command: git clone repo
  - id: test
    depends_on: [fetch]
    for_each: [unit, e2e]
    command: ["make", "test-{{item}}"]
    env: {B: "2", A: "1"}
    constraints: ["region in (eu,us)"]
    max_attempts: 2
  - id: report
    depends_on: [test]
    trigger_rule: all_done
    kind: notify
    payload: done
`

const jsonFile = `{"name": "build", "tenant": "acme", "failure_policy": "continue", "steps": [
  {"id": "fetch", "command": "git clone repo"},
  {"id": "test", "depends_on": ["fetch"], "for_each": ["unit", "e2e"], "command": ["make", "test-{{item}}"],
   "env": {"B": "2", "A": "1"}, "constraints": ["region in (eu,us)"], "max_attempts": 2},
  {"id": "report", "depends_on": ["test"], "trigger_rule": "all_done", "kind": "notify", "payload": "done"}
]}`

func TestDecodeYAMLAndJSONAgree(t *testing.T) {
	y, err := pipeline.Decode([]byte(yamlFile), decodeOpts)
	if err != nil {
		t.Fatal(err)
	}
	j, err := pipeline.Decode([]byte(jsonFile), decodeOpts)
	if err != nil {
		t.Fatal(err)
	}
	if y.String() != j.String() {
		t.Fatalf("yaml and json differ:\n%v\n%v", y, j)
	}
	if y.GetFailurePolicy() != hodeiv1.FailurePolicy_FAILURE_POLICY_CONTINUE || len(y.GetSteps()) != 3 {
		t.Fatalf("spec %v", y)
	}
	f := y.GetSteps()[0].GetJob()
	if !f.GetShell() || f.GetCommand()[0] != "git clone repo" {
		t.Fatalf("a string command is a shell line: %v", f)
	}
	tj := y.GetSteps()[1].GetJob()
	if tj.GetShell() || tj.GetEnv()[0].GetKey() != "A" || tj.GetConstraints()[0].GetOp() != hodeiv1.ConstraintOp_CONSTRAINT_OP_IN || tj.GetMaxAttempts() != 2 {
		t.Fatalf("test step %v", tj)
	}
	if r := y.GetSteps()[2]; r.GetTriggerRule() != hodeiv1.TriggerRule_TRIGGER_RULE_ALL_DONE || string(r.GetJob().GetPayload()) != "done" {
		t.Fatalf("report %v", r)
	}
	p, err := pipeline.Compile(y, norm)
	if err != nil {
		t.Fatal(err)
	}
	if len(p.Steps) != 4 || p.Tenant != "acme" {
		t.Fatalf("plan %d steps tenant %s", len(p.Steps), p.Tenant)
	}
}

func TestDecodeErrorsHaveLineAndColumn(t *testing.T) {
	cases := []struct{ in, want string }{
		{"steps:\n  - id: a\n    command: [x\n", "line 3, column 14"},
		{"steps:\n  - id: a\n    comand: x\n", `line 3, column 5: unknown field "comand"`},
		{"steps: 5", "line 1, column 8"},
		{"{\"steps\": [{\"id\": 1}]}", "line 1, column 20"},
		{"{\n  \"steps\": [\n    {\"id\": \"a\",}\n  ]\n}", "line 3, column 16"},
		{"{\"steps\": [], \"extra\": 1}", `unknown field "extra"`},
		{"{\"steps\": []} {}", "data after the pipeline object"},
		{"{\"steps\": [", "line 1, column 12"},
		{"steps:\n  - id: a\n    trigger_rule: sometimes\n", `step a: trigger rule "sometimes"`},
		{"failure_policy: retry\n", `failure policy "retry"`},
		{"steps:\n  - id: a\n    constraints: ['region in (']\n", `step a: constraint "region in ("`},
		{"\xff\xfe", "not valid UTF-8"},
	}
	for _, tc := range cases {
		_, err := pipeline.Decode([]byte(tc.in), decodeOpts)
		if err == nil || !errors.Is(err, pipeline.ErrDecode) || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("Decode(%q) = %v, want an error with %q", tc.in, err, tc.want)
		}
	}
	if _, err := pipeline.Decode([]byte(strings.Repeat(" ", pipeline.MaxBytes+1)), decodeOpts); err == nil || !strings.Contains(err.Error(), "limit 8388608") {
		t.Fatalf("oversized file: %v", err)
	}
}
