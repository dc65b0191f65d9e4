package main

// hodei pipeline submit|get|list|cancel|retry (issue 13): DAGs of jobs.

import (
	"context"
	"fmt"
	"io"
	"os"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"

	"github.com/hodei-io/hodei/client"
	"github.com/hodei-io/hodei/fsm"
	"github.com/hodei-io/hodei/fsm/pipeline"
	hodeiv1 "github.com/hodei-io/hodei/proto/hodeiv1"
)

func init() { register(newPipelineCmd) }

func newPipelineCmd() *cobra.Command {
	cmd := &cobra.Command{
		Use:   "pipeline",
		Short: "Pipelines: DAGs of jobs with dependencies and trigger rules",
		Long: `Pipelines. A pipeline file (YAML or JSON) lists steps, each a job (command or
kind + payload, and the job options), its depends_on and a trigger rule:
all_success (default), all_done, one_success, one_failed, none_failed (Airflow's
rules). for_each fans a step out into one instance per item ("{{item}}" in its
command, env values and payload); depending on a fan-out step waits for all its
instances. failure_policy fail-fast (default: no new step after a failure) or
continue. Limits: 10,000 steps and 100,000 edges after fan-out, 8 MiB.

  name: build
  steps:
    - id: fetch
      command: echo fetching
    - id: test
      depends_on: [fetch]
      for_each: [unit, e2e]
      command: ["echo", "testing {{item}}"]
    - id: report
      depends_on: [test]
      trigger_rule: all_done
      command: echo done`,
	}
	cmd.AddCommand(newPipelineSubmitCmd(), newPipelineGetCmd(), newPipelineListCmd(), newPipelineCancelCmd(), newPipelineRetryCmd())
	return cmd
}

// readPipelineFile reads FILE ("-" = standard input) and decodes it here,
// so that a file that does not parse fails before anything is sent.
func readPipelineFile(cmd *cobra.Command, path string) (*hodeiv1.PipelineSpec, error) {
	var data []byte
	var err error
	if path == "-" {
		data, err = io.ReadAll(io.LimitReader(cmd.InOrStdin(), pipeline.MaxBytes+1))
	} else {
		data, err = os.ReadFile(path)
	}
	if err != nil {
		return nil, err
	}
	spec, err := fsm.DecodePipeline(data)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	return spec, nil
}

// waitPipeline polls until the pipeline ends or ctx is done (a CLI
// convenience for --wait; tests wait on conditions themselves).
func waitPipeline(ctx context.Context, c *client.Client, id string) (*hodeiv1.Pipeline, error) {
	tick := time.NewTicker(200 * time.Millisecond)
	defer tick.Stop()
	for {
		p, err := c.GetPipeline(ctx, id, false, false)
		if err != nil {
			return nil, err
		}
		if p.GetState() != hodeiv1.PipelineState_PIPELINE_STATE_RUNNING {
			return p, nil
		}
		select {
		case <-ctx.Done():
			return p, ctx.Err()
		case <-tick.C:
		}
	}
}

// pipelineExit makes a waited-for pipeline that did not succeed a
// non-zero exit.
func pipelineExit(p *hodeiv1.Pipeline) error {
	if p.GetState() == hodeiv1.PipelineState_PIPELINE_STATE_SUCCEEDED {
		return nil
	}
	return fmt.Errorf("pipeline %s %s: %s", p.GetId(), pipelineStateName(p.GetState()), p.GetReason())
}

func newPipelineSubmitCmd() *cobra.Command {
	var wait bool
	cmd := &cobra.Command{
		Use:     "submit FILE",
		Short:   "Submit a pipeline file (YAML or JSON; - reads standard input)",
		Example: "  hodei pipeline submit build.yaml\n  hodei pipeline submit build.yaml --wait --output json",
		Args:    cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			spec, err := readPipelineFile(cmd, args[0])
			if err != nil {
				return err
			}
			return withClient(cmd, func(ctx context.Context, c *client.Client) error {
				p, err := c.SubmitPipeline(ctx, spec)
				return showPipeline(ctx, cmd, c, p, err, wait)
			})
		},
	}
	cmd.Flags().BoolVar(&wait, "wait", false, "wait until the pipeline ends (exit 1 unless it SUCCEEDED)")
	return cmd
}

func newPipelineGetCmd() *cobra.Command {
	var specs, stale bool
	cmd := &cobra.Command{
		Use:   "get ID",
		Short: "Show a pipeline: every step's state, attempts and job id",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			return withClient(cmd, func(ctx context.Context, c *client.Client) error {
				p, err := c.GetPipeline(ctx, args[0], specs, stale)
				if err != nil {
					return err
				}
				return printPipeline(cmd.OutOrStdout(), p)
			})
		},
	}
	cmd.Flags().BoolVar(&specs, "specs", false, "include each step's job template (json output)")
	cmd.Flags().BoolVar(&stale, "stale", false, "read this node's replica instead of the shard leader's")
	return cmd
}

func newPipelineListCmd() *cobra.Command {
	var (
		tenant, state, token string
		limit                int32
	)
	cmd := &cobra.Command{
		Use:   "list",
		Short: "List pipelines (summaries; one page)",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			req := &hodeiv1.ListPipelinesRequest{Tenant: tenant, Limit: limit, PageToken: token}
			if state != "" {
				st, ok := hodeiv1.PipelineState_value["PIPELINE_STATE_"+strings.ToUpper(state)]
				if !ok || st == 0 {
					return fmt.Errorf("--state %q: want running, succeeded, failed or cancelled", state)
				}
				req.State = hodeiv1.PipelineState(st)
			}
			return withClient(cmd, func(ctx context.Context, c *client.Client) error {
				ps, next, err := c.ListPipelines(ctx, req)
				if err != nil {
					return err
				}
				if jsonOutput() {
					return printProto(cmd.OutOrStdout(), &hodeiv1.ListPipelinesResponse{Pipelines: ps, NextPageToken: next})
				}
				tw := tabwriter.NewWriter(cmd.OutOrStdout(), 0, 4, 2, ' ', 0)
				fmt.Fprintln(tw, "ID\tTENANT\tNAME\tSTATE\tSTEPS\tSUCCEEDED\tFAILED\tSKIPPED\tCANCELLED\tCREATED")
				for _, p := range ps {
					fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%d\t%d\t%d\t%d\t%d\t%s\n", p.GetId(), p.GetTenant(), dash(p.GetName()),
						pipelineStateName(p.GetState()), p.GetStepCount(), p.GetSucceeded(), p.GetFailed(), p.GetSkipped(),
						p.GetCancelled(), fmtMillis(p.GetCreatedAtMs()))
				}
				if next != "" {
					fmt.Fprintf(tw, "(more: --page-token %s)\n", next)
				}
				return tw.Flush()
			})
		},
	}
	f := cmd.Flags()
	f.StringVar(&tenant, "tenant", "", "only this tenant's pipelines")
	f.StringVar(&state, "state", "", "only pipelines in this state (running, succeeded, failed, cancelled)")
	f.Int32Var(&limit, "limit", 0, "pipelines per page (default 100, max 1000)")
	f.StringVar(&token, "page-token", "", "continue a listing")
	return cmd
}

func newPipelineCancelCmd() *cobra.Command {
	var reason string
	cmd := &cobra.Command{
		Use:   "cancel ID",
		Short: "Cancel a pipeline: its pending and running step jobs are cancelled",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			return withClient(cmd, func(ctx context.Context, c *client.Client) error {
				p, err := c.CancelPipeline(ctx, args[0], reason)
				if err != nil {
					return err
				}
				return printPipeline(cmd.OutOrStdout(), p)
			})
		},
	}
	cmd.Flags().StringVar(&reason, "reason", "", "why (kept in the pipeline's and the jobs' reasons)")
	return cmd
}

func newPipelineRetryCmd() *cobra.Command {
	var from string
	var wait bool
	cmd := &cobra.Command{
		Use:   "retry ID [--from STEP]",
		Short: "Run an ended pipeline's failed, cancelled and skipped steps again (succeeded ones are kept)",
		Long: `Run an ended pipeline again: every step that did not succeed goes back to
waiting and is decided afresh by its trigger rule. With --from STEP, that step
(a fan-out step: all its instances) and everything downstream of it run again
too, even if they succeeded.`,
		Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			return withClient(cmd, func(ctx context.Context, c *client.Client) error {
				p, err := c.RetryPipeline(ctx, args[0], from)
				return showPipeline(ctx, cmd, c, p, err, wait)
			})
		},
	}
	cmd.Flags().StringVar(&from, "from", "", "also re-run this step and everything downstream of it")
	cmd.Flags().BoolVar(&wait, "wait", false, "wait until the pipeline ends (exit 1 unless it SUCCEEDED)")
	return cmd
}

func pipelineStateName(s hodeiv1.PipelineState) string {
	return strings.TrimPrefix(s.String(), "PIPELINE_STATE_")
}

func stepStateName(s hodeiv1.StepState) string {
	return strings.TrimPrefix(s.String(), "STEP_STATE_")
}

// printPipeline prints a pipeline in the --output format: text is a
// header and one row per step (state, attempts, runs, job id, reason).
func printPipeline(w io.Writer, p *hodeiv1.Pipeline) error {
	if jsonOutput() {
		return printProto(w, p)
	}
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	row := func(k, v string) { fmt.Fprintf(tw, "%s:\t%s\n", k, v) }
	row("ID", p.GetId())
	row("Tenant", p.GetTenant())
	if p.GetName() != "" {
		row("Name", p.GetName())
	}
	state := pipelineStateName(p.GetState())
	if p.GetReason() != "" {
		state += " (" + p.GetReason() + ")"
	}
	row("State", state)
	row("Failure policy", pipeline.PolicyName(p.GetFailurePolicy()))
	row("Steps", fmt.Sprintf("%d: %d succeeded, %d failed, %d skipped, %d cancelled", p.GetStepCount(), p.GetSucceeded(),
		p.GetFailed(), p.GetSkipped(), p.GetCancelled()))
	if p.GetRetries() > 0 {
		row("Retries", fmt.Sprint(p.GetRetries()))
	}
	row("Created", fmtMillis(p.GetCreatedAtMs()))
	if p.GetFinishedAtMs() > 0 {
		row("Finished", fmtMillis(p.GetFinishedAtMs()))
	}
	if err := tw.Flush(); err != nil {
		return err
	}
	if len(p.GetSteps()) == 0 {
		return nil
	}
	fmt.Fprintln(w)
	tw = tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "STEP\tSTATE\tATTEMPTS\tRUNS\tJOB\tRULE\tDEPENDS ON\tREASON")
	for _, s := range p.GetSteps() {
		deps := strings.Join(s.GetDependsOn(), ",")
		if len(deps) > 40 {
			deps = fmt.Sprintf("%d steps", len(s.GetDependsOn()))
		}
		fmt.Fprintf(tw, "%s\t%s\t%d\t%d\t%s\t%s\t%s\t%s\n", s.GetId(), stepStateName(s.GetState()), s.GetAttempts(), s.GetRuns(),
			dash(s.GetJobId()), pipeline.RuleName(s.GetTriggerRule()), dash(deps), dash(s.GetReason()))
	}
	return tw.Flush()
}

// showPipeline finishes a submit or retry: with wait, until the pipeline
// ends (the exit code then says how); then prints it.
func showPipeline(ctx context.Context, cmd *cobra.Command, c *client.Client, p *hodeiv1.Pipeline, err error, wait bool) error {
	if err != nil {
		return err
	}
	if wait {
		if p, err = waitPipeline(ctx, c, p.GetId()); err != nil {
			return err
		}
	}
	if err := printPipeline(cmd.OutOrStdout(), p); err != nil {
		return err
	}
	if wait {
		return pipelineExit(p)
	}
	return nil
}
