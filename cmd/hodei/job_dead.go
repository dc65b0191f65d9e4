package main

import (
	"context"
	"fmt"
	"io"
	"strconv"
	"strings"
	"text/tabwriter"
	"time"
	"unicode/utf8"

	"github.com/spf13/cobra"

	"github.com/hodei-io/hodei/client"
	"github.com/hodei-io/hodei/cluster"
	hodeiv1 "github.com/hodei-io/hodei/proto/hodeiv1"
)

// Dead letters (issue 11): hodei job retry, hodei job requeue, and the
// attempt history in hodei job get.

func newJobRetryCmd() *cobra.Command {
	return &cobra.Command{
		Use:   "retry ID",
		Short: "Put a DEAD, FAILED or CANCELLED job back to PENDING with fresh attempts",
		Long: `Put a DEAD, FAILED or CANCELLED job back to PENDING. Its attempt counter
restarts at 0, so it gets max_attempts new attempts; its attempt history and
last result are kept, and its retry count goes up by one.`,
		Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			return withClient(cmd, func(ctx context.Context, c *client.Client) error {
				job, err := c.RetryJob(ctx, args[0])
				if err != nil {
					return err
				}
				if jsonOutput() {
					return printProto(cmd.OutOrStdout(), job)
				}
				_, err = fmt.Fprintf(cmd.OutOrStdout(), "%s %s (retry %d)\n", job.GetId(), stateName(job.GetState()), job.GetRetries())
				return err
			})
		},
	}
}

func newJobRequeueCmd() *cobra.Command {
	var (
		tenant, kind, since, until string
		limit                      int32
	)
	cmd := &cobra.Command{
		Use:   "requeue",
		Short: "Put DEAD jobs matching a filter back to PENDING",
		Long: `Put DEAD jobs matching a filter (tenant, kind, time of death) back to PENDING
with fresh attempts, oldest death first, at most --limit per command (default
1000, max 10000). It prints how many were requeued: repeat the command until it
prints 0 to requeue them all.

--since and --until take an RFC 3339 time or a duration meaning that long ago
(--since 24h: jobs that died in the last 24 hours).`,
		Example: `  hodei job requeue --tenant acme --kind email.send --since 2h
  hodei job requeue --since 2026-12-01T00:00:00Z --until 2026-12-02T00:00:00Z --limit 500`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			now := time.Now()
			sinceMs, err := parseAgo("since", since, now)
			if err != nil {
				return err
			}
			untilMs, err := parseAgo("until", until, now)
			if err != nil {
				return err
			}
			if limit < 0 || limit > 10000 {
				return fmt.Errorf("--limit %d outside 0..10000", limit)
			}
			return withClient(cmd, func(ctx context.Context, c *client.Client) error {
				n, err := c.RequeueJobs(ctx, &hodeiv1.RequeueJobsRequest{Tenant: tenant, Kind: kind, SinceMs: sinceMs, UntilMs: untilMs, Limit: limit})
				if err != nil {
					return err
				}
				if jsonOutput() {
					return printProto(cmd.OutOrStdout(), &hodeiv1.RequeueJobsResponse{Requeued: n})
				}
				_, err = fmt.Fprintf(cmd.OutOrStdout(), "requeued %d\n", n)
				return err
			})
		},
	}
	f := cmd.Flags()
	f.StringVar(&tenant, "tenant", "", "only this tenant (default all)")
	f.StringVar(&kind, "kind", "", `only this kind ("shell" = command jobs; default all)`)
	f.StringVar(&since, "since", "", "died at or after (RFC 3339 or a duration ago)")
	f.StringVar(&until, "until", "", "died before (RFC 3339 or a duration ago)")
	f.Int32Var(&limit, "limit", 0, "max jobs this command (0 = server default, 1000; max 10000)")
	return cmd
}

// parseAgo reads a time flag of the dead-letter commands: an RFC 3339 time,
// or a duration ago ("24h" = 24 hours before now).
func parseAgo(flag, v string, now time.Time) (int64, error) {
	if v == "" {
		return 0, nil
	}
	if d, err := time.ParseDuration(v); err == nil {
		if d < 0 {
			return 0, fmt.Errorf("--%s %q: a duration ago must not be negative", flag, v)
		}
		return now.Add(-d).UnixMilli(), nil
	}
	t, err := time.Parse(time.RFC3339, v)
	if err != nil {
		return 0, fmt.Errorf("--%s %q: want an RFC 3339 time (2026-12-01T10:00:00Z) or a duration (24h)", flag, v)
	}
	return t.UnixMilli(), nil
}

// deadRows adds the dead-letter fields to a job's text block.
func deadRows(row func(k, v string), job *hodeiv1.Job) {
	if job.GetDeadAtMs() > 0 {
		row("Dead", fmt.Sprintf("%s (%s)", fmtMillis(job.GetDeadAtMs()), job.GetDeadReason()))
	}
	if job.GetRetries() > 0 {
		row("Retries", strconv.Itoa(int(job.GetRetries())))
	}
}

// printAttemptHistory writes the earlier attempts as a table, oldest first.
func printAttemptHistory(w io.Writer, job *hodeiv1.Job) error {
	h := job.GetHistory()
	if len(h) == 0 {
		return nil
	}
	fmt.Fprintln(w, "Earlier attempts:")
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "  ATTEMPT\tWORKER\tTOKEN\tSTARTED\tFINISHED\tEXIT\tERROR\tOUTPUT TAIL")
	for _, a := range h {
		errText := a.GetError()
		if a.GetLeaseExpired() {
			errText = "lease expired"
		}
		fmt.Fprintf(tw, "  %d\t%s\t%d\t%s\t%s\t%d\t%s\t%s\n", a.GetAttempt(), dash(a.GetWorkerId()), a.GetLeaseToken(),
			msOrDash(a.GetStartedAtMs()), msOrDash(a.GetFinishedAtMs()), a.GetExitCode(), dash(oneLine(errText, 60)), dash(oneLine(string(a.GetOutputTail()), 40)))
	}
	return tw.Flush()
}

func dash(s string) string {
	if s == "" {
		return "-"
	}
	return s
}

func msOrDash(ms int64) string {
	if ms == 0 {
		return "-"
	}
	return fmtMillis(ms)
}

// oneLine is s on one line, valid UTF-8, at most n runes (its end kept).
func oneLine(s string, n int) string {
	s = strings.ToValidUTF8(s, "\uFFFD")
	s = strings.Join(strings.Fields(s), " ")
	if utf8.RuneCountInString(s) > n {
		r := []rune(s)
		s = "…" + string(r[len(r)-n+1:])
	}
	return s
}

// addDeadServerFlags adds the dead-letter settings to `hodei server`. The
// FSM settings must be the same on every node of the cluster. apply copies
// the duration into cfg before the node starts.
func addDeadServerFlags(cmd *cobra.Command, cfg *cluster.Config) (apply func()) {
	retention := time.Duration(cfg.FSM.DeadRetentionMs) * time.Millisecond
	f := cmd.Flags()
	f.DurationVar(&retention, "dead-retention", retention, "how long DEAD jobs are kept (0: until the per-tenant bound evicts them); the same on every node")
	f.IntVar(&cfg.FSM.MaxDeadPerTenant, "max-dead-per-tenant", cfg.FSM.MaxDeadPerTenant, "DEAD jobs kept per tenant per shard (the oldest is evicted, counted and logged); the same on every node")
	f.BoolVar(&cfg.DeadLetters, "dead-letters", cfg.DeadLetters, "propose version 4 entries (jobs end DEAD with their attempt history); turn off while upgrading from a release without dead letters")
	return func() { cfg.FSM.DeadRetentionMs = retention.Milliseconds() }
}
