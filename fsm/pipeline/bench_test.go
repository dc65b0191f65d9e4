package pipeline_test

import (
	"fmt"
	"testing"

	"github.com/hodei-io/hodei/fsm/pipeline"
	"github.com/hodei-io/hodei/proto/hodeiv1"
)

// wideSpec is n steps where step i depends on up to k distinct earlier
// steps (a deterministic spread), about n*k edges.
func wideSpec(n, k int) *hodeiv1.PipelineSpec {
	sp := &hodeiv1.PipelineSpec{}
	job := cmdJob("true")
	for i := 0; i < n; i++ {
		s := &hodeiv1.PipelineStepSpec{Id: fmt.Sprintf("s%d", i), Job: job}
		for d := 1; d <= k && d <= i; d++ {
			// parents i-1, i-1-7, i-1-2*7, ... wrapped into [0, i)
			s.DependsOn = append(s.DependsOn, fmt.Sprintf("s%d", (i-d*7%i+i)%i))
		}
		sp.Steps = append(sp.Steps, dedupDeps(s))
	}
	return sp
}

func dedupDeps(s *hodeiv1.PipelineStepSpec) *hodeiv1.PipelineStepSpec {
	seen := map[string]bool{}
	out := s.DependsOn[:0]
	for _, d := range s.DependsOn {
		if !seen[d] {
			seen[d] = true
			out = append(out, d)
		}
	}
	s.DependsOn = out
	return s
}

// BenchmarkValidate10kSteps50kEdges is the graph validation of issue 13's
// target (≤ 20 ms): ids, dependencies, edge counts, cycle search, child
// rows. Templates are checked for presence only (norm == nil).
func BenchmarkValidate10kSteps50kEdges(b *testing.B) {
	sp := wideSpec(10_000, 5)
	p, err := pipeline.Compile(sp, nil)
	if err != nil {
		b.Fatal(err)
	}
	b.ReportAllocs()
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		if _, err := pipeline.Compile(sp, nil); err != nil {
			b.Fatal(err)
		}
	}
	b.ReportMetric(float64(p.Edges), "edges")
}

// BenchmarkCompile10kSteps50kEdges is the same with every step template
// normalized by fsm.NormalizeSpec, as SubmitPipeline does in the FSM.
func BenchmarkCompile10kSteps50kEdges(b *testing.B) {
	sp := wideSpec(10_000, 5)
	b.ReportAllocs()
	for i := 0; i < b.N; i++ {
		if _, err := pipeline.Compile(sp, norm); err != nil {
			b.Fatal(err)
		}
	}
}

// BenchmarkValidateCycle10k is a 10,000-step cycle: found and reported
// (with its path shortened) in the same order of time.
func BenchmarkValidateCycle10k(b *testing.B) {
	sp := chainSpec(10_000, true)
	b.ReportAllocs()
	for i := 0; i < b.N; i++ {
		if _, err := pipeline.Compile(sp, nil); err == nil {
			b.Fatal("cycle not found")
		}
	}
}
