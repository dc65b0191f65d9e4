package pipeline_test

import (
	"testing"

	"github.com/hodei-io/hodei/fsm/pipeline"
)

// FuzzDecodeCompile feeds any bytes through the decoder and the validator:
// neither may panic, errors must wrap their sentinels, and an accepted
// plan must be within the limits, acyclic, with consistent edges. The seed
// corpus is in testdata/fuzz/FuzzDecodeCompile (run by go test).
func FuzzDecodeCompile(f *testing.F) {
	f.Add([]byte(yamlFile))
	f.Add([]byte(jsonFile))
	f.Fuzz(func(t *testing.T, data []byte) {
		spec, err := pipeline.Decode(data, decodeOpts)
		if err != nil {
			return
		}
		plan, err := pipeline.Compile(spec, norm)
		if err != nil {
			return
		}
		if len(plan.Steps) == 0 || len(plan.Steps) > pipeline.MaxSteps || plan.Edges > pipeline.MaxEdges {
			t.Fatalf("plan outside the limits: %d steps %d edges", len(plan.Steps), plan.Edges)
		}
		// Acyclic: peel steps in rounds (Kahn's algorithm).
		left := make([]int, len(plan.Steps))
		var ready []int
		edges := 0
		for i, s := range plan.Steps {
			left[i] = len(s.Parents)
			edges += len(s.Parents)
			if left[i] == 0 {
				ready = append(ready, i)
			}
			if s.Job == nil {
				t.Fatalf("step %s has no job", s.ID)
			}
		}
		if edges != plan.Edges {
			t.Fatalf("parents hold %d edges, plan says %d", edges, plan.Edges)
		}
		done := 0
		for len(ready) > 0 {
			i := ready[len(ready)-1]
			ready = ready[:len(ready)-1]
			done++
			for _, c := range plan.Children(i) {
				if left[c]--; left[c] == 0 {
					ready = append(ready, int(c))
				}
			}
		}
		if done != len(plan.Steps) {
			t.Fatalf("accepted plan has a cycle (%d of %d steps peeled)", done, len(plan.Steps))
		}
	})
}
