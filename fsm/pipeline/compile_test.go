package pipeline_test

import (
	"errors"
	"fmt"
	"strings"
	"testing"

	"pgregory.net/rapid"

	"github.com/hodei-io/hodei/fsm"
	"github.com/hodei-io/hodei/fsm/pipeline"
	"github.com/hodei-io/hodei/proto/hodeiv1"
)

func norm(sp *hodeiv1.JobSpec) (*hodeiv1.JobSpec, error) {
	return fsm.NormalizeSpec(sp, fsm.DefaultConfig())
}

func cmdJob(args ...string) *hodeiv1.JobSpec { return &hodeiv1.JobSpec{Command: args} }

func step(id string, deps ...string) *hodeiv1.PipelineStepSpec {
	return &hodeiv1.PipelineStepSpec{Id: id, DependsOn: deps, Job: cmdJob("true")}
}

func compileErr(t *testing.T, spec *hodeiv1.PipelineSpec) string {
	t.Helper()
	_, err := pipeline.Compile(spec, norm)
	if err == nil {
		t.Fatal("Compile accepted an invalid pipeline")
	}
	if !errors.Is(err, pipeline.ErrInvalid) {
		t.Fatalf("error %v does not wrap ErrInvalid", err)
	}
	return err.Error()
}

func wantAll(t *testing.T, msg string, parts ...string) {
	t.Helper()
	for _, p := range parts {
		if !strings.Contains(msg, p) {
			t.Errorf("error %q does not say %q", msg, p)
		}
	}
}

func TestCompileErrorsNameEachProblem(t *testing.T) {
	msg := compileErr(t, &hodeiv1.PipelineSpec{Steps: []*hodeiv1.PipelineStepSpec{
		step("a", "nope"),
		step("b", "b"),
		step("c", "a"),
		step("c"),
		step("d", "e"), step("e", "f"), step("f", "d"),
		{Id: "g", Job: &hodeiv1.JobSpec{Command: []string{"x"}, Priority: 500}},
		{Id: "h"},
		step("i", "a", "a"),
		{Id: "bad id"},
	}})
	wantAll(t, msg,
		`step "a" depends on unknown step "nope"`,
		`step "b" depends on itself`,
		`duplicate step id "c"`,
		`cycle: d → e → f → d`,
		`step "g": job: invalid job spec: priority 500 is outside 0..100`,
		`step "h" has no job`,
		`step "i" names dependency "a" twice`,
		`step id "bad id" must match`,
	)
	wantAll(t, compileErr(t, &hodeiv1.PipelineSpec{}), "pipeline has no steps")
	wantAll(t, compileErr(t, nil), "pipeline has no steps")
	wantAll(t, compileErr(t, &hodeiv1.PipelineSpec{Steps: []*hodeiv1.PipelineStepSpec{
		{Id: "a", Job: &hodeiv1.JobSpec{Command: []string{"x"}, IdempotencyKey: "k"}},
		{Id: "b", Job: &hodeiv1.JobSpec{Command: []string{"x"}, Tenant: "other"}},
		{Id: "c", Job: &hodeiv1.JobSpec{Kind: "k", Command: []string{"x"}}},
	}}), `step "a": job.idempotency_key`, `step "b": job.tenant "other"`, `step "c": job: invalid job spec: kind "k" runs a handler`)
}

func TestCompileLimits(t *testing.T) {
	many := make([]string, pipeline.MaxSteps+1)
	for i := range many {
		many[i] = fmt.Sprint(i)
	}
	wantAll(t, compileErr(t, &hodeiv1.PipelineSpec{Steps: []*hodeiv1.PipelineStepSpec{
		{Id: "fan", ForEach: many, Job: cmdJob("x")},
	}}), fmt.Sprintf("more than %d steps", pipeline.MaxSteps))

	// 400 x 300 instances fully connected = 120,000 edges.
	a, b := many[:400], many[:300]
	wantAll(t, compileErr(t, &hodeiv1.PipelineSpec{Steps: []*hodeiv1.PipelineStepSpec{
		{Id: "a", ForEach: a, Job: cmdJob("x")},
		{Id: "b", ForEach: b, DependsOn: []string{"a"}, Job: cmdJob("x")},
	}}), fmt.Sprintf("more than %d dependency edges", pipeline.MaxEdges))

	big := strings.Repeat("x", pipeline.MaxBytes)
	wantAll(t, compileErr(t, &hodeiv1.PipelineSpec{Steps: []*hodeiv1.PipelineStepSpec{
		{Id: "a", Job: &hodeiv1.JobSpec{Command: []string{big}}},
	}}), "bytes, limit 8388608")

	// Expansion can pass the byte limit though the spec does not.
	payload := strings.Repeat("y", 1<<20-100) + pipeline.ItemPlaceholder
	wantAll(t, compileErr(t, &hodeiv1.PipelineSpec{Steps: []*hodeiv1.PipelineStepSpec{
		{Id: "a", ForEach: many[:9], Job: &hodeiv1.JobSpec{Kind: "k", Payload: []byte(payload)}},
	}}), "expanded pipeline is")
}

func TestCompileFanOutAndFanIn(t *testing.T) {
	p, err := pipeline.Compile(&hodeiv1.PipelineSpec{Name: "n", Steps: []*hodeiv1.PipelineStepSpec{
		step("setup"),
		{Id: "work", DependsOn: []string{"setup"}, ForEach: []string{"x", "y", "z"},
			Job: &hodeiv1.JobSpec{Command: []string{"run", "--item={{item}}"}, Env: []*hodeiv1.KeyValue{{Key: "I", Value: "{{item}}"}}}},
		step("one", "work[1]"),
		{Id: "join", DependsOn: []string{"work"}, TriggerRule: hodeiv1.TriggerRule_TRIGGER_RULE_ALL_DONE, Job: cmdJob("join")},
	}}, norm)
	if err != nil {
		t.Fatal(err)
	}
	var ids []string
	for _, s := range p.Steps {
		ids = append(ids, s.ID)
	}
	if got := strings.Join(ids, ","); got != "setup,work[0],work[1],work[2],one,join" {
		t.Fatalf("steps %s", got)
	}
	if p.Edges != 3+1+3 || p.Tenant != "default" || p.Policy != hodeiv1.FailurePolicy_FAILURE_POLICY_FAIL_FAST {
		t.Fatalf("edges %d tenant %q policy %v", p.Edges, p.Tenant, p.Policy)
	}
	if w := p.Steps[2]; w.Item != "y" || w.Job.GetCommand()[1] != "--item=y" || w.Job.GetEnv()[0].GetValue() != "y" || w.Job.GetTenant() != "default" {
		t.Fatalf("instance 1: %+v", w)
	}
	if got := fmt.Sprint(p.Steps[5].Parents, p.Steps[4].Parents, p.Children(0), p.Children(2)); got != "[1 2 3] [2] [1 2 3] [4 5]" {
		t.Fatalf("edges: %s", got)
	}
	if p.Steps[5].Rule != hodeiv1.TriggerRule_TRIGGER_RULE_ALL_DONE || p.Steps[0].Rule != hodeiv1.TriggerRule_TRIGGER_RULE_ALL_SUCCESS {
		t.Fatal("rules")
	}
	// An instance reference past the items is unknown.
	wantAll(t, compileErr(t, &hodeiv1.PipelineSpec{Steps: []*hodeiv1.PipelineStepSpec{
		{Id: "w", ForEach: []string{"a"}, Job: cmdJob("x")}, step("v", "w[1]"), step("u", "w[01]"),
	}}), `step "v" depends on unknown step "w[1]"`, `step "u" depends on unknown step "w[01]"`)
}

func TestCycleOfTenThousandIsReportedShort(t *testing.T) {
	msg := compileErr(t, chainSpec(pipeline.MaxSteps, true))
	if len(msg) > 2000 || !strings.Contains(msg, "cycle: s0 → s1") || !strings.Contains(msg, "more) …") || !strings.HasSuffix(msg, "→ s0") {
		t.Fatalf("cycle message (%d bytes): %.300s", len(msg), msg)
	}
}

// chainSpec is s0 depends on s1 depends on ... s(n-1), closed into a cycle
// (s(n-1) depends on s0) when cyclic.
func chainSpec(n int, cyclic bool) *hodeiv1.PipelineSpec {
	sp := &hodeiv1.PipelineSpec{}
	job := cmdJob("true")
	for i := 0; i < n; i++ {
		s := &hodeiv1.PipelineStepSpec{Id: fmt.Sprintf("s%d", i), Job: job}
		if i+1 < n {
			s.DependsOn = []string{fmt.Sprintf("s%d", i+1)}
		} else if cyclic {
			s.DependsOn = []string{"s0"}
		}
		sp.Steps = append(sp.Steps, s)
	}
	return sp
}

// refHasCycle is the simple reference: peel steps whose parents are all
// peeled until nothing changes (O(n²)); a cycle exists iff some remain.
func refHasCycle(parents [][]int) bool {
	peeled := make([]bool, len(parents))
	for changed := true; changed; {
		changed = false
		for i, ps := range parents {
			if peeled[i] {
				continue
			}
			ok := true
			for _, p := range ps {
				ok = ok && peeled[p]
			}
			if ok {
				peeled[i], changed = true, true
			}
		}
	}
	for _, p := range peeled {
		if !p {
			return true
		}
	}
	return false
}

// TestCompileCyclesMatchReference: on random graphs, Compile reports a
// cycle exactly when the reference finds one, every reported path is a
// real cycle of dependency edges, and accepted plans have consistent
// parent and child lists.
func TestCompileCyclesMatchReference(t *testing.T) {
	rapid.Check(t, func(rt *rapid.T) {
		n := rapid.IntRange(1, 14).Draw(rt, "n")
		parents := make([][]int, n)
		sp := &hodeiv1.PipelineSpec{}
		edge := map[[2]string]bool{}
		for i := 0; i < n; i++ {
			s := &hodeiv1.PipelineStepSpec{Id: fmt.Sprintf("n%d", i), Job: cmdJob("x")}
			used := map[int]bool{}
			k := rapid.IntRange(0, 3).Draw(rt, "k")
			for d := 0; d < k; d++ {
				p := rapid.IntRange(0, n-1).Draw(rt, "p")
				if p == i || used[p] {
					continue
				}
				used[p] = true
				parents[i] = append(parents[i], p)
				s.DependsOn = append(s.DependsOn, fmt.Sprintf("n%d", p))
				edge[[2]string{s.Id, fmt.Sprintf("n%d", p)}] = true
			}
			sp.Steps = append(sp.Steps, s)
		}
		plan, err := pipeline.Compile(sp, norm)
		want := refHasCycle(parents)
		if want != (err != nil) {
			rt.Fatalf("reference says cycle=%v, Compile says %v", want, err)
		}
		if err != nil {
			for _, part := range strings.Split(err.Error(), "; ") {
				if strings.HasSuffix(part, "more cycles") {
					continue
				}
				i := strings.Index(part, "cycle: ")
				if i < 0 {
					rt.Fatalf("unexpected problem %q", part)
				}
				path := strings.Split(part[i+len("cycle: "):], " → ")
				if len(path) < 3 || path[0] != path[len(path)-1] {
					rt.Fatalf("path %q is not closed", part)
				}
				for j := 0; j+1 < len(path); j++ {
					if !edge[[2]string{path[j], path[j+1]}] {
						rt.Fatalf("path %q: %s does not depend on %s", part, path[j], path[j+1])
					}
				}
			}
			return
		}
		edges := 0
		for i, s := range plan.Steps {
			if len(s.Parents) != len(parents[i]) {
				rt.Fatalf("step %d parents %v, want %v", i, s.Parents, parents[i])
			}
			for _, p := range s.Parents {
				found := false
				for _, c := range plan.Children(int(p)) {
					found = found || int(c) == i
				}
				if !found {
					rt.Fatalf("step %d missing from children of %d", i, p)
				}
			}
			edges += len(plan.Children(i))
		}
		if edges != plan.Edges {
			rt.Fatalf("children hold %d edges, plan says %d", edges, plan.Edges)
		}
	})
}
