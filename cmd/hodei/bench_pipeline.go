package main

// hodei bench --mode pipeline-fan | pipeline-chain (issue 13): the wall
// time of one pipeline of no-op command jobs ("true", run by the cluster's
// shell workers: hodei dev's, or --dev's embedded ones) from submit to
// SUCCEEDED.

import (
	"context"
	"fmt"
	"time"

	hodeiv1 "github.com/hodei-io/hodei/proto/hodeiv1"
)

// Default sizes: the fan-out of 1,000 then fan-in of 1, and a
// chain of 100 steps.
const (
	defaultFanSteps   = 1000
	defaultChainSteps = 100
)

// benchPipelineSpec builds the pipeline a pipeline mode runs: "fan" is
// work[0..n-1] (one step fanned out over n items) then join (all of them);
// "chain" is s1 <- s2 <- ... <- sn, each depending on the previous one.
func benchPipelineSpec(shape string, n int) (*hodeiv1.PipelineSpec, error) {
	if n < 1 {
		return nil, fmt.Errorf("--steps must be >= 1")
	}
	job := func() *hodeiv1.JobSpec { return &hodeiv1.JobSpec{Command: []string{"true"}} }
	sp := &hodeiv1.PipelineSpec{Name: "bench-" + shape, Tenant: "bench"}
	switch shape {
	case "fan":
		work := &hodeiv1.PipelineStepSpec{Id: "work", Job: job()}
		for i := 0; i < n; i++ {
			work.ForEach = append(work.ForEach, fmt.Sprint(i))
		}
		sp.Steps = []*hodeiv1.PipelineStepSpec{work, {Id: "join", DependsOn: []string{"work"}, Job: job()}}
	case "chain":
		for i := 1; i <= n; i++ {
			s := &hodeiv1.PipelineStepSpec{Id: fmt.Sprintf("s%d", i), Job: job()}
			if i > 1 {
				s.DependsOn = []string{fmt.Sprintf("s%d", i-1)}
			}
			sp.Steps = append(sp.Steps, s)
		}
	default:
		return nil, fmt.Errorf("unknown pipeline shape %q", shape)
	}
	return sp, nil
}

// benchPipeline submits one pipeline and waits (polling GetPipeline every
// 10 ms) until it ends: E2ESeconds is submit to SUCCEEDED, Completed the
// steps, PerStepMs the wall time per step (the per-step latency of a
// chain: release, lease, run, complete, release the next).
func benchPipeline(ctx context.Context, c *benchClients, o benchOptions, shape string) (benchReport, error) {
	n := o.steps
	if n == 0 {
		n = defaultChainSteps
		if shape == "fan" {
			n = defaultFanSteps
		}
	}
	spec, err := benchPipelineSpec(shape, n)
	if err != nil {
		return benchReport{}, err
	}
	cl := c.main()
	start := time.Now()
	p, err := cl.SubmitPipeline(ctx, spec)
	if err != nil {
		return benchReport{}, err
	}
	rep := benchReport{Mode: "pipeline-" + shape, Clients: 1, Batch: 1, Tenants: 1, Submitted: 1, PipelineID: p.GetId()}
	rep.Seconds = time.Since(start).Seconds()
	for p.GetState() == hodeiv1.PipelineState_PIPELINE_STATE_RUNNING {
		select {
		case <-ctx.Done():
			return rep, ctx.Err()
		case <-time.After(10 * time.Millisecond):
		}
		if p, err = cl.GetPipeline(ctx, rep.PipelineID, false, false); err != nil {
			return rep, err
		}
	}
	el := time.Since(start)
	if p.GetState() != hodeiv1.PipelineState_PIPELINE_STATE_SUCCEEDED {
		return rep, fmt.Errorf("pipeline %s ended %s: %s", p.GetId(), p.GetState(), p.GetReason())
	}
	rep.Completed = int64(p.GetStepCount())
	rep.E2ESeconds = el.Seconds()
	rep.JobsPerSec = float64(rep.Completed) / el.Seconds()
	rep.PerStepMs = float64(el.Microseconds()) / 1000 / float64(rep.Completed)
	return rep, nil
}
