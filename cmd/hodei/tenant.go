package main

import (
	"github.com/spf13/cobra"
)

func newTenantCmd() *cobra.Command {
	cmd := &cobra.Command{
		Use:   "tenant",
		Short: "Tenant settings: fair-share weights and quotas",
		Long: `Tenant settings live in the meta group. A tenant's weight is its share of
its shard's leases while tenants compete: with weights 3 and 1, and both
tenants backlogged on the same shard, workers get 3 jobs of the first per
job of the second. Every tenant has weight 1 unless set.

Quotas (all unlimited unless set; 0 clears one): --max-queued caps the
tenant's PENDING jobs (a submit over it is refused with ResourceExhausted),
--submit-rate R/s with --burst B is a token bucket on new jobs (refused
likewise), and --max-running caps its leased (RUNNING) jobs, so other
tenants keep running.`,
	}
	cmd.AddCommand(newTenantSetCmd(), newTenantListCmd())
	return cmd
}
