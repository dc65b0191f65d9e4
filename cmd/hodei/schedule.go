package main

// hodei schedule create|list|get|pause|resume|trigger|backfill|delete
// (issue 11, cron).

import (
	"context"
	"fmt"
	"io"
	"strconv"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"

	"github.com/hodei-io/hodei/client"
	hodeiv1 "github.com/hodei-io/hodei/proto/hodeiv1"
)

func init() { register(newScheduleCmd) }

func newScheduleCmd() *cobra.Command {
	cmd := &cobra.Command{
		Use:   "schedule",
		Short: "Cron schedules: jobs created at the slots of a cron spec",
		Long: `Cron schedules. A schedule creates its job template's job at every slot of its
spec (5-field cron, @every DURATION, @hourly/@daily/@weekly/@monthly/@yearly) in
its time zone. Each slot fires at most once, across leader changes and restarts;
after downtime, slots younger than the catch-up window (default 1h) are made up
and older ones are counted as missed.`,
	}
	cmd.AddCommand(newScheduleCreateCmd(), newScheduleListCmd(), newScheduleGetCmd(), newSchedulePauseCmd(),
		newScheduleResumeCmd(), newScheduleTriggerCmd(), newScheduleBackfillCmd(), newScheduleDeleteCmd())
	return cmd
}

var overlapNames = map[string]hodeiv1.OverlapPolicy{
	"skip":            hodeiv1.OverlapPolicy_OVERLAP_POLICY_SKIP,
	"buffer-one":      hodeiv1.OverlapPolicy_OVERLAP_POLICY_BUFFER_ONE,
	"allow-all":       hodeiv1.OverlapPolicy_OVERLAP_POLICY_ALLOW_ALL,
	"cancel-previous": hodeiv1.OverlapPolicy_OVERLAP_POLICY_CANCEL_PREVIOUS,
}

func parseOverlap(s string) (hodeiv1.OverlapPolicy, error) {
	if p, ok := overlapNames[strings.ToLower(s)]; ok {
		return p, nil
	}
	return 0, fmt.Errorf("--overlap %q: want skip, buffer-one, allow-all or cancel-previous", s)
}

func overlapName(p hodeiv1.OverlapPolicy) string {
	for n, v := range overlapNames {
		if v == p {
			return n
		}
	}
	return "skip"
}

// parseWhen parses a time flag: RFC 3339, "now", or a duration relative to
// now ("-2h", "30m"). "" is 0 (unset).
func parseWhen(flag, s string, now time.Time) (int64, error) {
	switch s {
	case "":
		return 0, nil
	case "now":
		return now.UnixMilli(), nil
	}
	if t, err := time.Parse(time.RFC3339, s); err == nil {
		return t.UnixMilli(), nil
	}
	if d, err := time.ParseDuration(s); err == nil {
		return now.Add(d).UnixMilli(), nil
	}
	return 0, fmt.Errorf("--%s %q: want an RFC 3339 time, now, or a duration from now (-2h)", flag, s)
}

func newScheduleCreateCmd() *cobra.Command {
	var (
		sc                  hodeiv1.Schedule
		spec                hodeiv1.JobSpec
		cronSpec, tz        string
		start, end, overlap string
		catchUp, jitter     time.Duration
		timeout, delay      time.Duration
		env, labels         []string
		kind, payload       string
		shell               bool
	)
	cmd := &cobra.Command{
		Use:   "create ID --cron SPEC [flags] [-- CMD [ARGS...]]",
		Short: "Create a schedule",
		Example: `  hodei schedule create nightly --cron '30 2 * * *' --tz Europe/Berlin -- ./backup.sh
  hodei schedule create ping --cron '@every 10s' --overlap allow-all -- curl -fsS http://example.com
  hodei schedule create report --tenant shop --cron '0 9 * * mon-fri' --kind report.daily --payload '{"to":"ops"}' --jitter 2m`,
		Args: cobra.MinimumNArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			var err error
			now := time.Now()
			sc.Id, sc.Spec, sc.TimeZone = args[0], cronSpec, tz
			if cronSpec == "" {
				return fmt.Errorf("--cron is required (e.g. '*/5 * * * *', '@every 1m', '@daily')")
			}
			if sc.StartMs, err = parseWhen("start", start, now); err != nil {
				return err
			}
			if sc.EndMs, err = parseWhen("end", end, now); err != nil {
				return err
			}
			if sc.Overlap, err = parseOverlap(overlap); err != nil {
				return err
			}
			if catchUp < 0 || jitter < 0 || timeout < 0 || delay < 0 {
				return fmt.Errorf("durations must not be negative")
			}
			sc.CatchUpWindowMs, sc.JitterMs = catchUp.Milliseconds(), jitter.Milliseconds()
			if n := cmd.ArgsLenAtDash(); n > 1 {
				return fmt.Errorf("give one ID before --, then the job's command")
			}
			argv := args[1:]
			handler := kind != "" && kind != "shell"
			switch {
			case handler && len(argv) > 0:
				return fmt.Errorf("--kind %s runs a Go handler: give --payload, not a command", kind)
			case !handler && len(argv) == 0:
				return fmt.Errorf("give the job's command after --, or --kind for a handler job")
			}
			spec.Kind, spec.Payload, spec.Shell = kind, []byte(payload), shell
			spec.Command = argv
			if shell {
				spec.Command = []string{strings.Join(argv, " ")}
			}
			if len(spec.Command) == 0 {
				spec.Command = nil
			}
			if spec.Env, err = parseKVs("env", env); err != nil {
				return err
			}
			if spec.Labels, err = parseKVs("label", labels); err != nil {
				return err
			}
			spec.TimeoutMs, spec.DelayMs = timeout.Milliseconds(), delay.Milliseconds()
			sc.Template = &spec
			return withClient(cmd, func(ctx context.Context, c *client.Client) error {
				out, err := c.CreateSchedule(ctx, &sc)
				if err != nil {
					return err
				}
				return printSchedule(cmd.OutOrStdout(), out)
			})
		},
	}
	f := cmd.Flags()
	f.StringVar(&sc.Tenant, "tenant", "", "tenant (default \"default\")")
	f.StringVar(&cronSpec, "cron", "", "5-field cron spec, @every DURATION (>= 1s), or @hourly/@daily/@weekly/@monthly/@yearly")
	f.StringVar(&tz, "tz", "", "IANA time zone of the cron fields (default UTC)")
	f.StringVar(&start, "start", "", "no slot before this (RFC 3339, or a duration from now)")
	f.StringVar(&end, "end", "", "no slot after this (RFC 3339, or a duration from now)")
	f.StringVar(&overlap, "overlap", "skip", "while the previous run is unfinished: skip, buffer-one, allow-all or cancel-previous")
	f.DurationVar(&catchUp, "catch-up", 0, "after downtime, make up slots this recent (0 = default 1h)")
	f.DurationVar(&jitter, "jitter", 0, "delay each slot's job by a deterministic 0..jitter")
	f.BoolVar(&sc.Paused, "paused", false, "create paused")
	f.StringVar(&sc.PauseNote, "note", "", "pause note (with --paused)")
	f.Int32Var(&spec.Priority, "priority", 0, "job priority 0..100")
	f.Int32Var(&spec.MaxAttempts, "max-attempts", 0, "job attempts (0 = server default, 3)")
	f.DurationVar(&timeout, "timeout", 0, "kill an attempt after this long (0 = none)")
	f.DurationVar(&delay, "delay", 0, "run each job this long after its slot")
	f.StringArrayVar(&env, "env", nil, "job environment variable K=V (repeatable)")
	f.StringArrayVar(&labels, "label", nil, "required worker label K=V (repeatable)")
	f.BoolVar(&shell, "shell", false, "run the arguments as one /bin/sh -c line")
	f.StringVar(&kind, "kind", "", "run by a worker's Go handler for this kind (no command)")
	f.StringVar(&payload, "payload", "", "the handler job's input (with --kind)")
	return cmd
}

func newScheduleListCmd() *cobra.Command {
	var tenant string
	cmd := &cobra.Command{
		Use:   "list",
		Short: "List schedules",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			return withClient(cmd, func(ctx context.Context, c *client.Client) error {
				scs, err := c.ListSchedules(ctx, tenant)
				if err != nil {
					return err
				}
				if jsonOutput() {
					return printProto(cmd.OutOrStdout(), &hodeiv1.ListSchedulesResponse{Schedules: scs})
				}
				return printSchedulesTable(cmd.OutOrStdout(), scs)
			})
		},
	}
	cmd.Flags().StringVar(&tenant, "tenant", "", "only this tenant's schedules")
	return cmd
}

// scheduleIDCmd is a command on one schedule: ID argument and --tenant.
func scheduleIDCmd(use, short string, run func(ctx context.Context, c *client.Client, cmd *cobra.Command, tenant, id string) error) (*cobra.Command, *string) {
	tenant := new(string)
	cmd := &cobra.Command{
		Use:   use,
		Short: short,
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			return withClient(cmd, func(ctx context.Context, c *client.Client) error {
				return run(ctx, c, cmd, *tenant, args[0])
			})
		},
	}
	cmd.Flags().StringVar(tenant, "tenant", "", "the schedule's tenant (default \"default\")")
	return cmd, tenant
}

func newScheduleGetCmd() *cobra.Command {
	cmd, _ := scheduleIDCmd("get ID", "Show a schedule: spec, next and last fire, counters", func(ctx context.Context, c *client.Client, cmd *cobra.Command, tenant, id string) error {
		sc, err := c.GetSchedule(ctx, tenant, id)
		if err != nil {
			return err
		}
		return printSchedule(cmd.OutOrStdout(), sc)
	})
	return cmd
}

func newSchedulePauseCmd() *cobra.Command {
	var note string
	cmd, _ := scheduleIDCmd("pause ID", "Pause a schedule (no fires until resumed)", func(ctx context.Context, c *client.Client, cmd *cobra.Command, tenant, id string) error {
		sc, err := c.PauseSchedule(ctx, tenant, id, note)
		if err != nil {
			return err
		}
		return printSchedule(cmd.OutOrStdout(), sc)
	})
	cmd.Flags().StringVar(&note, "note", "", "why it is paused (shown by get)")
	return cmd
}

func newScheduleResumeCmd() *cobra.Command {
	cmd, _ := scheduleIDCmd("resume ID", "Resume a paused schedule from its next slot (slots passed while paused are not made up)", func(ctx context.Context, c *client.Client, cmd *cobra.Command, tenant, id string) error {
		sc, err := c.ResumeSchedule(ctx, tenant, id)
		if err != nil {
			return err
		}
		return printSchedule(cmd.OutOrStdout(), sc)
	})
	return cmd
}

func newScheduleTriggerCmd() *cobra.Command {
	cmd, _ := scheduleIDCmd("trigger ID", "Run the schedule's job now", func(ctx context.Context, c *client.Client, cmd *cobra.Command, tenant, id string) error {
		resp, err := c.TriggerSchedule(ctx, tenant, id)
		if err != nil {
			return err
		}
		if jsonOutput() {
			return printProto(cmd.OutOrStdout(), resp)
		}
		_, err = fmt.Fprintf(cmd.OutOrStdout(), "%s %s\n", resp.GetJob().GetId(), stateName(resp.GetJob().GetState()))
		return err
	})
	return cmd
}

func newScheduleBackfillCmd() *cobra.Command {
	var from, to string
	cmd, _ := scheduleIDCmd("backfill ID --from T --to T", "Create the jobs of the slots in a past range (at most 1000 slots)", func(ctx context.Context, c *client.Client, cmd *cobra.Command, tenant, id string) error {
		now := time.Now()
		f, err := parseWhen("from", from, now)
		if err != nil {
			return err
		}
		t, err := parseWhen("to", to, now)
		if err != nil {
			return err
		}
		if f == 0 || t == 0 {
			return fmt.Errorf("--from and --to are required")
		}
		resp, err := c.BackfillSchedule(ctx, tenant, id, f, t)
		if err != nil {
			return err
		}
		if jsonOutput() {
			return printProto(cmd.OutOrStdout(), resp)
		}
		tw := tabwriter.NewWriter(cmd.OutOrStdout(), 0, 4, 2, ' ', 0)
		fmt.Fprintln(tw, "SLOT\tJOB\tSTATE")
		created := 0
		for _, r := range resp.GetJobs() {
			state := stateName(r.GetJob().GetState())
			if r.GetDuplicate() {
				state += " (slot already had its job)"
			} else {
				created++
			}
			fmt.Fprintf(tw, "%s\t%s\t%s\n", fmtMillis(r.GetJob().GetScheduleSlotMs()), r.GetJob().GetId(), state)
		}
		if err := tw.Flush(); err != nil {
			return err
		}
		_, err = fmt.Fprintf(cmd.OutOrStdout(), "%d slots, %d jobs created\n", len(resp.GetJobs()), created)
		return err
	})
	cmd.Flags().StringVar(&from, "from", "", "first slot time (RFC 3339, or a duration from now: -6h)")
	cmd.Flags().StringVar(&to, "to", "", "last slot time (RFC 3339, now, or a duration from now)")
	return cmd
}

func newScheduleDeleteCmd() *cobra.Command {
	cmd, _ := scheduleIDCmd("delete ID", "Delete a schedule (its jobs stay)", func(ctx context.Context, c *client.Client, cmd *cobra.Command, tenant, id string) error {
		if err := c.DeleteSchedule(ctx, tenant, id); err != nil {
			return err
		}
		if jsonOutput() {
			return printProto(cmd.OutOrStdout(), &hodeiv1.DeleteScheduleResponse{})
		}
		_, err := fmt.Fprintf(cmd.OutOrStdout(), "deleted %s\n", id)
		return err
	})
	return cmd
}

// fmtSlot formats a slot time in the schedule's zone (and UTC).
func fmtSlot(ms int64, tz string) string {
	if ms == 0 {
		return "-"
	}
	t := time.UnixMilli(ms).UTC()
	if loc, err := time.LoadLocation(tz); err == nil && tz != "" {
		return t.In(loc).Format(time.RFC3339) + " (" + t.Format(time.RFC3339) + ")"
	}
	return t.Format(time.RFC3339)
}

// printSchedule prints one schedule in the --output format.
func printSchedule(w io.Writer, sc *hodeiv1.Schedule) error {
	if jsonOutput() {
		return printProto(w, sc)
	}
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	row := func(k, v string) { fmt.Fprintf(tw, "%s:\t%s\n", k, v) }
	tz := sc.GetTimeZone()
	if tz == "" {
		tz = "UTC"
	}
	row("ID", sc.GetId())
	row("Tenant", sc.GetTenant())
	row("Spec", sc.GetSpec())
	row("Time zone", tz)
	state := "active"
	if sc.GetPaused() {
		state = "paused"
		if sc.GetPauseNote() != "" {
			state += ": " + sc.GetPauseNote()
		}
	} else if sc.GetNextFireMs() == 0 {
		state = "ended (no slot left before its end)"
	}
	row("State", state)
	if sc.GetStartMs() > 0 {
		row("Start", fmtSlot(sc.GetStartMs(), sc.GetTimeZone()))
	}
	if sc.GetEndMs() > 0 {
		row("End", fmtSlot(sc.GetEndMs(), sc.GetTimeZone()))
	}
	row("Overlap", overlapName(sc.GetOverlap()))
	row("Catch-up window", (time.Duration(sc.GetCatchUpWindowMs()) * time.Millisecond).String())
	if sc.GetJitterMs() > 0 {
		row("Jitter", (time.Duration(sc.GetJitterMs()) * time.Millisecond).String())
	}
	if k := sc.GetTemplate().GetKind(); k != "" && k != "shell" {
		row("Job", fmt.Sprintf("kind %s (payload %d bytes)", k, len(sc.GetTemplate().GetPayload())))
	} else {
		row("Job", commandLine(sc.GetTemplate()))
	}
	row("Next fire", fmtSlot(sc.GetNextFireMs(), sc.GetTimeZone()))
	row("Last fire", fmtSlot(sc.GetLastFireMs(), sc.GetTimeZone()))
	if sc.GetLastJobId() != "" {
		row("Last job", sc.GetLastJobId())
	}
	if sc.GetBufferedSlotMs() != 0 {
		row("Buffered slot", fmtSlot(sc.GetBufferedSlotMs(), sc.GetTimeZone()))
	}
	row("Fired", strconv.FormatUint(sc.GetFired(), 10))
	row("Skipped (overlap)", strconv.FormatUint(sc.GetSkipped(), 10))
	row("Missed (outside catch-up)", strconv.FormatUint(sc.GetMissed(), 10))
	if sc.GetCreatedAtMs() > 0 {
		row("Created", fmtMillis(sc.GetCreatedAtMs()))
	}
	return tw.Flush()
}

func printSchedulesTable(w io.Writer, scs []*hodeiv1.Schedule) error {
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "TENANT\tID\tSPEC\tTZ\tSTATE\tNEXT FIRE\tFIRED\tSKIPPED\tMISSED")
	for _, sc := range scs {
		state := "active"
		if sc.GetPaused() {
			state = "paused"
		}
		tz := sc.GetTimeZone()
		if tz == "" {
			tz = "UTC"
		}
		next := "-"
		if sc.GetNextFireMs() != 0 {
			next = time.UnixMilli(sc.GetNextFireMs()).UTC().Format(time.RFC3339)
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\t%d\t%d\t%d\n", sc.GetTenant(), sc.GetId(), sc.GetSpec(), tz, state, next,
			sc.GetFired(), sc.GetSkipped(), sc.GetMissed())
	}
	return tw.Flush()
}
