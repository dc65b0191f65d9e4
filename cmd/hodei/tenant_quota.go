package main

import (
	"context"
	"fmt"
	"strconv"
	"strings"
	"text/tabwriter"

	"github.com/spf13/cobra"

	"github.com/hodei-io/hodei/client"
	"github.com/hodei-io/hodei/fsm"
	"github.com/hodei-io/hodei/proto/hodeiv1"
)

// Tenant settings with quotas (issue 11): `hodei operator tenant set` and
// `list`, and the --constraint flag of `hodei job submit`.

func newTenantSetCmd() *cobra.Command {
	var (
		weight                uint32
		maxQueued, maxRunning uint32
		rate                  string
		burst                 uint32
	)
	cmd := &cobra.Command{
		Use:   "set NAME [--weight N] [--max-queued N] [--max-running N] [--submit-rate R/s [--burst B]]",
		Short: "Set a tenant's fair-share weight (1..1000) and quotas (0 = unlimited)",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			f := cmd.Flags()
			req := &hodeiv1.SetTenantRequest{Tenant: args[0], Weight: weight}
			if f.Changed("max-queued") {
				req.MaxQueued = &maxQueued
			}
			if f.Changed("max-running") {
				req.MaxRunning = &maxRunning
			}
			if f.Changed("submit-rate") {
				r, err := parseRate(rate)
				if err != nil {
					return err
				}
				req.SubmitRate = &r
			}
			if f.Changed("burst") {
				req.Burst = &burst
			}
			if !f.Changed("weight") && req.MaxQueued == nil && req.MaxRunning == nil && req.SubmitRate == nil && req.Burst == nil {
				return fmt.Errorf(`nothing to set: flag "weight" not set and no limit given (--max-queued, --max-running, --submit-rate, --burst)`)
			}
			return withClient(cmd, func(ctx context.Context, c *client.Client) error {
				st, err := c.SetTenantSettings(ctx, req)
				if err != nil {
					return err
				}
				w := cmd.OutOrStdout()
				if jsonOutput() {
					return printProto(w, &hodeiv1.SetTenantResponse{Tenant: st})
				}
				inEffect := st.GetShardWeight() == st.GetWeight() && fsm.LimitsEqual(st.GetLimits(), st.GetShardLimits())
				switch {
				case inEffect && fsm.LimitsEmpty(st.GetLimits()):
					fmt.Fprintf(w, "tenant %s: weight %d (in effect on shard %d)\n", st.GetTenant(), st.GetWeight(), st.GetShard())
				case inEffect:
					fmt.Fprintf(w, "tenant %s: weight %d, %s (in effect on shard %d)\n", st.GetTenant(), st.GetWeight(), limitsString(st.GetLimits()), st.GetShard())
				default:
					fmt.Fprintf(w, "tenant %s: weight %d, %s recorded; shard %d still applies weight %d, %s and follows within seconds\n",
						st.GetTenant(), st.GetWeight(), limitsString(st.GetLimits()), st.GetShard(), st.GetShardWeight(), limitsString(st.GetShardLimits()))
				}
				return nil
			})
		},
	}
	f := cmd.Flags()
	f.Uint32Var(&weight, "weight", 0, "fair-share weight, 1..1000 (default: keep)")
	f.Uint32Var(&maxQueued, "max-queued", 0, "most PENDING jobs of the tenant; a submit over it is refused (0 = unlimited)")
	f.Uint32Var(&maxRunning, "max-running", 0, "most RUNNING (leased) jobs of the tenant (0 = unlimited)")
	f.StringVar(&rate, "submit-rate", "", "new jobs per second, e.g. 50 or 50/s or 0.5/s (0 = unlimited)")
	f.Uint32Var(&burst, "burst", 0, "token bucket size in jobs, with --submit-rate (default: the rate rounded up)")
	return cmd
}

// parseRate reads "R" or "R/s".
func parseRate(s string) (float64, error) {
	v, err := strconv.ParseFloat(strings.TrimSuffix(strings.TrimSpace(s), "/s"), 64)
	if err != nil {
		return 0, fmt.Errorf("--submit-rate %q: want a number of jobs per second, like 50/s", s)
	}
	return v, nil
}

func limitsString(l *hodeiv1.TenantLimits) string {
	if fsm.LimitsEmpty(l) {
		return "no limits"
	}
	var parts []string
	if l.GetMaxQueued() > 0 {
		parts = append(parts, fmt.Sprintf("max-queued %d", l.GetMaxQueued()))
	}
	if l.GetMaxRunning() > 0 {
		parts = append(parts, fmt.Sprintf("max-running %d", l.GetMaxRunning()))
	}
	if l.GetSubmitRateMilli() > 0 {
		parts = append(parts, fmt.Sprintf("submit-rate %s/s burst %d", fsm.FormatRate(l.GetSubmitRateMilli()), l.GetBurst()))
	}
	return strings.Join(parts, ", ")
}

func limitOrDash(v uint32) string {
	if v == 0 {
		return "-"
	}
	return strconv.FormatUint(uint64(v), 10)
}

func newTenantListCmd() *cobra.Command {
	return &cobra.Command{
		Use:   "list",
		Short: "Tenant settings, what each tenant's shard applies, and usage",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			return withClient(cmd, func(ctx context.Context, c *client.Client) error {
				list, err := c.ListTenants(ctx)
				if err != nil {
					return err
				}
				w := cmd.OutOrStdout()
				if jsonOutput() {
					return printProto(w, &hodeiv1.ListTenantsResponse{Tenants: list})
				}
				if len(list) == 0 {
					fmt.Fprintln(w, "no tenant settings: every tenant has weight 1 and no limits")
					return nil
				}
				tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
				fmt.Fprintln(tw, "TENANT\tWEIGHT\tSHARD\tSHARD APPLIES\tQUEUED\tMAX-QUEUED\tRUNNING\tMAX-RUNNING\tRATE/S\tBURST\tTOKENS\tREFUSED (QUEUE/RATE)")
				for _, t := range list {
					applied := fmt.Sprint(t.GetShardWeight())
					if t.GetShardWeight() != t.GetWeight() || !fsm.LimitsEqual(t.GetLimits(), t.GetShardLimits()) {
						applied += " (catching up)"
					}
					l, u := t.GetLimits(), t.GetUsage()
					rate, tokens := "-", "-"
					if l.GetSubmitRateMilli() > 0 {
						rate = fsm.FormatRate(l.GetSubmitRateMilli())
						tokens = strconv.FormatFloat(u.GetSubmitTokens(), 'f', 1, 64)
					}
					fmt.Fprintf(tw, "%s\t%d\t%d\t%s\t%d\t%s\t%d\t%s\t%s\t%s\t%s\t%d/%d\n", t.GetTenant(), t.GetWeight(), t.GetShard(), applied,
						u.GetQueued(), limitOrDash(l.GetMaxQueued()), u.GetRunning(), limitOrDash(l.GetMaxRunning()), rate, limitOrDash(l.GetBurst()), tokens,
						u.GetRefusedQueued(), u.GetRefusedRate())
				}
				return tw.Flush()
			})
		},
	}
}

// parseConstraints parses --constraint values (fsm.ParseConstraint).
func parseConstraints(vals []string) ([]*hodeiv1.Constraint, error) {
	var out []*hodeiv1.Constraint
	for _, v := range vals {
		c, err := fsm.ParseConstraint(v)
		if err != nil {
			return nil, fmt.Errorf("--constraint: %w", err)
		}
		out = append(out, c)
	}
	return out, nil
}

func constraintsString(cs []*hodeiv1.Constraint) string {
	parts := make([]string, len(cs))
	for i, c := range cs {
		parts[i] = fsm.FormatConstraint(c)
	}
	return strings.Join(parts, "; ")
}
