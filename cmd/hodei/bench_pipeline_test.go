package main

import (
	"testing"

	"github.com/hodei-io/hodei/fsm"
)

// TestBenchPipelineSpecs: the bench modes' pipelines are valid and have
// the shapes (1,000 fanned out then 1 fan-in; a chain of 100).
func TestBenchPipelineSpecs(t *testing.T) {
	for _, tc := range []struct {
		shape        string
		n, steps, ed int
	}{{"fan", defaultFanSteps, 1001, 1000}, {"chain", defaultChainSteps, 100, 99}} {
		sp, err := benchPipelineSpec(tc.shape, tc.n)
		if err != nil {
			t.Fatal(err)
		}
		if _, err := fsm.ValidatePipeline(sp, fsm.DefaultConfig()); err != nil {
			t.Fatalf("%s: %v", tc.shape, err)
		}
		edges, steps := 0, 0
		for _, s := range sp.GetSteps() {
			k := 1
			if len(s.GetForEach()) > 0 {
				k = len(s.GetForEach())
			}
			steps += k
			if s.GetId() == "join" {
				edges += defaultFanSteps
			} else {
				edges += len(s.GetDependsOn()) * k
			}
		}
		if steps != tc.steps || edges != tc.ed {
			t.Fatalf("%s: %d steps %d edges", tc.shape, steps, edges)
		}
	}
	if _, err := benchPipelineSpec("star", 3); err == nil {
		t.Fatal("unknown shape accepted")
	}
}
