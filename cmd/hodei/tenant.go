package main

import (
	"context"
	"fmt"
	"text/tabwriter"

	"github.com/spf13/cobra"

	"github.com/hodei-io/hodei/client"
	"github.com/hodei-io/hodei/proto/hodeiv1"
)

func newTenantCmd() *cobra.Command {
	cmd := &cobra.Command{
		Use:   "tenant",
		Short: "Tenant settings: fair-share weights",
		Long: `Tenant settings live in the meta group. A tenant's weight is its share of
its shard's leases while tenants compete: with weights 3 and 1, and both
tenants backlogged on the same shard, workers get 3 jobs of the first per
job of the second. Every tenant has weight 1 unless set.`,
	}
	cmd.AddCommand(newTenantSetCmd(), newTenantListCmd())
	return cmd
}

func newTenantSetCmd() *cobra.Command {
	var weight uint32
	cmd := &cobra.Command{
		Use:   "set NAME --weight N",
		Short: "Set a tenant's fair-share weight (1..1000; 1 is the default)",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			return withClient(cmd, func(ctx context.Context, c *client.Client) error {
				st, err := c.SetTenant(ctx, args[0], weight)
				if err != nil {
					return err
				}
				w := cmd.OutOrStdout()
				if jsonOutput() {
					return printProto(w, &hodeiv1.SetTenantResponse{Tenant: st})
				}
				if st.GetShardWeight() == st.GetWeight() {
					fmt.Fprintf(w, "tenant %s: weight %d (in effect on shard %d)\n", st.GetTenant(), st.GetWeight(), st.GetShard())
				} else {
					fmt.Fprintf(w, "tenant %s: weight %d recorded; shard %d still applies %d and follows within seconds\n",
						st.GetTenant(), st.GetWeight(), st.GetShard(), st.GetShardWeight())
				}
				return nil
			})
		},
	}
	cmd.Flags().Uint32Var(&weight, "weight", 0, "fair-share weight, 1..1000 (required)")
	_ = cmd.MarkFlagRequired("weight")
	return cmd
}

func newTenantListCmd() *cobra.Command {
	return &cobra.Command{
		Use:   "list",
		Short: "Tenant settings, and the weight each tenant's shard applies",
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
					fmt.Fprintln(w, "no tenant settings: every tenant has weight 1")
					return nil
				}
				tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
				fmt.Fprintln(tw, "TENANT\tWEIGHT\tSHARD\tSHARD APPLIES")
				for _, t := range list {
					applied := fmt.Sprint(t.GetShardWeight())
					if t.GetShardWeight() != t.GetWeight() {
						applied += " (catching up)"
					}
					fmt.Fprintf(tw, "%s\t%d\t%d\t%s\n", t.GetTenant(), t.GetWeight(), t.GetShard(), applied)
				}
				return tw.Flush()
			})
		},
	}
}
