package main

import (
	"context"
	"fmt"
	"os"
	"os/signal"
	"strings"
	"syscall"
	"time"

	"github.com/spf13/cobra"

	"github.com/hodei-io/hodei/client"
	hodeiv1 "github.com/hodei-io/hodei/proto/hodeiv1"
)

func init() { register(newJobCmd) }

func newJobCmd() *cobra.Command {
	cmd := &cobra.Command{
		Use:   "job",
		Short: "Submit, inspect, list and cancel jobs",
	}
	cmd.AddCommand(newJobSubmitCmd(), newJobGetCmd(), newJobListCmd(), newJobCancelCmd())
	cmd.AddCommand(newJobWatchCmd())                     // issue 11 watch (job_watch.go)
	cmd.AddCommand(newJobLogsCmd())                      // job_logs.go
	cmd.AddCommand(newJobRetryCmd(), newJobRequeueCmd()) // issue 11 dead, job_dead.go
	return cmd
}

// signalContext is the command's context, cancelled on SIGINT/SIGTERM.
func signalContext(cmd *cobra.Command) (context.Context, context.CancelFunc) {
	parent := cmd.Context()
	if parent == nil {
		parent = context.Background()
	}
	return signal.NotifyContext(parent, os.Interrupt, syscall.SIGTERM)
}

// withClient runs fn with a client on --addr and maps gRPC errors for printing.
func withClient(cmd *cobra.Command, fn func(ctx context.Context, c *client.Client) error) error {
	c, err := newAPIClient()
	if err != nil {
		return err
	}
	defer c.Close()
	ctx, cancel := signalContext(cmd)
	defer cancel()
	return rpcError(fn(ctx, c))
}

func newJobSubmitCmd() *cobra.Command {
	var (
		spec          hodeiv1.JobSpec
		timeout       time.Duration
		delay         time.Duration
		env, labels   []string
		constraints   []string
		wait          bool
		pollEvery     time.Duration
		priority      int32
		maxAttempts   int32
		tenant, ikey  string
		shell         bool
		backoffBase   time.Duration
		backoffMaxDur time.Duration
		kind, payload string
	)
	cmd := &cobra.Command{
		Use:   "submit [flags] [-- CMD [ARGS...]]",
		Short: "Submit a job",
		Long: `Submit a job and print it (id and state).

The command is run as argv by a worker; with --shell the arguments are joined
into one line run by /bin/sh -c. With --kind the job is run by a worker's Go
handler for that kind, with --payload as its input, and takes no command. With --wait the command polls the job until it
finishes, prints it, and exits non-zero unless it SUCCEEDED.`,
		Example: `  hodei job submit -- echo hello
  hodei job submit --tenant acme --priority 10 --timeout 5m --env A=1 -- ./build.sh --fast
  hodei job submit --shell --wait -- 'make test | tail -20'
  hodei job submit --tenant shop --kind email.send --payload ada@example.com`,
		RunE: func(cmd *cobra.Command, args []string) error {
			var err error
			spec.Tenant, spec.Priority, spec.MaxAttempts, spec.IdempotencyKey, spec.Shell = tenant, priority, maxAttempts, ikey, shell
			spec.Kind, spec.Payload = kind, []byte(payload)
			handler := kind != "" && kind != "shell"
			switch {
			case handler && len(args) > 0:
				return fmt.Errorf("--kind %s runs a Go handler: give --payload, not a command", kind)
			case !handler && len(args) == 0:
				return fmt.Errorf("give a command after --, or --kind for a handler job")
			case !handler && payload != "":
				return fmt.Errorf("--payload is for handler jobs (--kind)")
			}
			if len(args) > 0 {
				spec.Command = args
			}
			if shell {
				spec.Command = []string{strings.Join(args, " ")}
			}
			if spec.Env, err = parseKVs("env", env); err != nil {
				return err
			}
			if spec.Labels, err = parseKVs("label", labels); err != nil {
				return err
			}
			if spec.Constraints, err = parseConstraints(constraints); err != nil {
				return err
			}
			for name, d := range map[string]time.Duration{"timeout": timeout, "delay": delay, "backoff-base": backoffBase, "backoff-max": backoffMaxDur} {
				if d < 0 {
					return fmt.Errorf("--%s must not be negative", name)
				}
			}
			if priority < 0 || priority > 100 {
				return fmt.Errorf("--priority %d outside 0..100", priority)
			}
			spec.TimeoutMs, spec.DelayMs = timeout.Milliseconds(), delay.Milliseconds()
			spec.BackoffBaseMs, spec.BackoffMaxMs = backoffBase.Milliseconds(), backoffMaxDur.Milliseconds()
			return withClient(cmd, func(ctx context.Context, c *client.Client) error {
				resp, err := c.Submit(ctx, &spec)
				if err != nil {
					return err
				}
				job := resp.GetJob()
				if !wait {
					return printSubmitted(cmd, resp)
				}
				if !jsonOutput() {
					fmt.Fprintf(cmd.ErrOrStderr(), "job %s submitted, waiting...\n", job.GetId())
				}
				if job, err = waitJob(ctx, c, job, pollEvery); err != nil {
					return err
				}
				if err := printJob(cmd.OutOrStdout(), job); err != nil {
					return err
				}
				if job.GetState() != hodeiv1.JobState_JOB_STATE_SUCCEEDED {
					return fmt.Errorf("job %s finished %s", job.GetId(), stateName(job.GetState()))
				}
				return nil
			})
		},
	}
	f := cmd.Flags()
	f.SetInterspersed(false) // everything after CMD belongs to CMD
	f.StringVar(&tenant, "tenant", "", "tenant (default \"default\")")
	f.Int32Var(&priority, "priority", 0, "priority 0..100, higher runs first within the tenant")
	f.Int32Var(&maxAttempts, "max-attempts", 0, "attempts before the job FAILS (0 = server default, 3)")
	f.DurationVar(&timeout, "timeout", 0, "kill an attempt after this long (0 = none)")
	f.DurationVar(&delay, "delay", 0, "run no earlier than this long after submission")
	f.DurationVar(&backoffBase, "backoff-base", 0, "retry backoff base (0 = server default, 1s)")
	f.DurationVar(&backoffMaxDur, "backoff-max", 0, "retry backoff cap (0 = server default, 60s)")
	f.StringArrayVar(&env, "env", nil, "environment variable K=V (repeatable)")
	f.StringArrayVar(&labels, "label", nil, "required worker label K=V (repeatable)")
	f.StringArrayVar(&constraints, "constraint", nil, "worker label constraint: 'K in (a,b)', 'K not in (a,b)', 'K' (exists) or '!K' (repeatable)")
	f.StringVar(&ikey, "idempotency-key", "", "unique per tenant: resubmitting returns the first job")
	f.BoolVar(&shell, "shell", false, "run the arguments as one /bin/sh -c line")
	f.StringVar(&kind, "kind", "", "run by a worker's Go handler for this kind (no command)")
	f.StringVar(&payload, "payload", "", "the handler job's input (with --kind)")
	f.BoolVar(&wait, "wait", false, "wait until the job finishes; exit non-zero unless it succeeded")
	f.DurationVar(&pollEvery, "poll", 250*time.Millisecond, "with --wait: first poll interval (grows to 2s)")
	return cmd
}

// printSubmitted prints a submitted job: "ID STATE" in text mode.
func printSubmitted(cmd *cobra.Command, resp *hodeiv1.SubmitJobResponse) error {
	if jsonOutput() {
		return printProto(cmd.OutOrStdout(), resp.GetJob())
	}
	dup := ""
	if resp.GetDuplicate() {
		dup = " (duplicate: idempotency key matched an existing job)"
	}
	_, err := fmt.Fprintf(cmd.OutOrStdout(), "%s %s%s\n", resp.GetJob().GetId(), stateName(resp.GetJob().GetState()), dup)
	return err
}

// waitJob polls a job until it is terminal or ctx ends.
func waitJob(ctx context.Context, c *client.Client, job *hodeiv1.Job, every time.Duration) (*hodeiv1.Job, error) {
	if every <= 0 {
		every = 250 * time.Millisecond
	}
	for !terminal(job.GetState()) {
		t := time.NewTimer(every)
		select {
		case <-ctx.Done():
			t.Stop()
			return nil, fmt.Errorf("stopped waiting for job %s (%s): %w", job.GetId(), stateName(job.GetState()), context.Cause(ctx))
		case <-t.C:
		}
		every = min(every*3/2, 2*time.Second)
		j, err := c.Get(ctx, job.GetId())
		if err != nil {
			return nil, err
		}
		job = j
	}
	return job, nil
}

func newJobGetCmd() *cobra.Command {
	var stale bool
	cmd := &cobra.Command{
		Use:   "get ID",
		Short: "Show a job with its last result and attempt history",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			return withClient(cmd, func(ctx context.Context, c *client.Client) error {
				var opts []client.ReadOption
				if stale {
					opts = append(opts, client.Stale())
				}
				job, err := c.Get(ctx, args[0], opts...)
				if err != nil {
					return err
				}
				return printJob(cmd.OutOrStdout(), job)
			})
		},
	}
	cmd.Flags().BoolVar(&stale, "stale", false, "read from any replica (faster, possibly behind)")
	return cmd
}

func newJobListCmd() *cobra.Command {
	var (
		tenant, state, page string
		limit               int32
		stale               bool
	)
	cmd := &cobra.Command{
		Use:   "list",
		Short: "List jobs",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			st, err := parseState(state)
			if err != nil {
				return err
			}
			if limit < 0 || limit > 10000 {
				return fmt.Errorf("--limit %d outside 0..10000", limit)
			}
			return withClient(cmd, func(ctx context.Context, c *client.Client) error {
				resp, err := c.List(ctx, &hodeiv1.ListJobsRequest{Tenant: tenant, State: st, Limit: limit, PageToken: page, Stale: stale})
				if err != nil {
					return err
				}
				if jsonOutput() {
					return printProto(cmd.OutOrStdout(), resp)
				}
				if err := printJobsTable(cmd.OutOrStdout(), resp.GetJobs()); err != nil {
					return err
				}
				if tok := resp.GetNextPageToken(); tok != "" {
					fmt.Fprintf(cmd.ErrOrStderr(), "more: --page-token %s\n", tok)
				}
				return nil
			})
		},
	}
	f := cmd.Flags()
	f.StringVar(&tenant, "tenant", "", "only this tenant (default all)")
	f.StringVar(&state, "state", "", "only this state: pending|running|succeeded|failed|cancelled|dead")
	f.Int32Var(&limit, "limit", 0, "max jobs (0 = server default, 100; max 10000)")
	f.StringVar(&page, "page-token", "", "continue a previous listing")
	f.BoolVar(&stale, "stale", false, "read from any replica (faster, possibly behind)")
	return cmd
}

func newJobCancelCmd() *cobra.Command {
	var reason string
	cmd := &cobra.Command{
		Use:   "cancel ID",
		Short: "Cancel a job",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			return withClient(cmd, func(ctx context.Context, c *client.Client) error {
				job, err := c.Cancel(ctx, args[0], reason)
				if err != nil {
					return err
				}
				if jsonOutput() {
					return printProto(cmd.OutOrStdout(), job)
				}
				_, err = fmt.Fprintf(cmd.OutOrStdout(), "%s %s\n", job.GetId(), stateName(job.GetState()))
				return err
			})
		},
	}
	cmd.Flags().StringVar(&reason, "reason", "", "why (kept on the job)")
	return cmd
}
