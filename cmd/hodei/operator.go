package main

import (
	"context"
	"fmt"
	"strconv"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"
	"google.golang.org/grpc/status"

	"github.com/hodei-io/hodei/client"
	"github.com/hodei-io/hodei/proto/hodeiv1"
)

func init() { register(newOperatorCmd) }

func newOperatorCmd() *cobra.Command {
	cmd := &cobra.Command{Use: "operator", Short: "Cluster administration: status, membership, Raft, backups, tenant settings"}
	raftCmd := &cobra.Command{Use: "raft", Short: "Raft groups: peers and leadership"}
	raftCmd.AddCommand(newListPeersCmd(), newTransferLeaderCmd())
	cmd.AddCommand(newShardsCmd(), newMembersCmd(), newJoinCmd(), newRemoveCmd(), raftCmd, newSnapshotCmd(), newTenantCmd())
	return cmd
}

func newShardsCmd() *cobra.Command {
	return &cobra.Command{
		Use:     "shards",
		Aliases: []string{"status"},
		Short:   "Each shard's leader, voters, applied index and queue depth",
		Args:    cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			return withClient(cmd, func(ctx context.Context, c *client.Client) error {
				st, err := c.Status(ctx, "")
				if err != nil {
					return err
				}
				// Queue depth and indexes come from each shard's leader.
				// Each leader is asked once, briefly: an address the leader
				// advertises may not be reachable from here (a container
				// network's host names seen from the host), and then the row
				// is this node's replica's view, said so on stderr.
				out := &hodeiv1.StatusResponse{NodeId: st.GetNodeId(), Address: st.GetAddress(), Version: st.GetVersion()}
				leaders := map[string]*hodeiv1.StatusResponse{}
				for _, sh := range st.GetShards() {
					view := sh
					if addr := sh.GetLeaderAddress(); addr != "" && addr != st.GetAddress() {
						lst, asked := leaders[addr]
						if !asked {
							pctx, cancel := context.WithTimeout(ctx, 2*time.Second)
							var err error
							if lst, err = probe(pctx, addr); err != nil {
								fmt.Fprintf(cmd.ErrOrStderr(), "note: leader %s (%s) not reachable from here (%v); its shards' rows are node %s's replica's view\n",
									sh.GetLeaderId(), addr, status.Code(err), st.GetNodeId())
							}
							cancel()
							leaders[addr] = lst
						}
						for _, x := range lst.GetShards() {
							if x.GetShard() == sh.GetShard() {
								view = x
							}
						}
					}
					out.Shards = append(out.Shards, view)
				}
				w := cmd.OutOrStdout()
				if jsonOutput() {
					return printProto(w, out)
				}
				tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
				fmt.Fprintln(tw, "SHARD\tLEADER\tVOTERS\tTERM\tAPPLIED\tCOMMIT\tPENDING\tRUNNING\tJOBS")
				for _, sh := range out.Shards {
					voters := 0
					for _, s := range sh.GetServers() {
						if s.GetSuffrage() == "Voter" {
							voters++
						}
					}
					fmt.Fprintf(tw, "%d\t%s\t%d/%d\t%d\t%d\t%d\t%d\t%d\t%d\n", sh.GetShard(), sh.GetLeaderId(), voters, len(sh.GetServers()),
						sh.GetTerm(), sh.GetAppliedIndex(), sh.GetCommitIndex(), sh.GetPendingJobs(), sh.GetRunningJobs(), sh.GetJobs())
				}
				return tw.Flush()
			})
		},
	}
}

func newMembersCmd() *cobra.Command {
	return &cobra.Command{
		Use:   "members",
		Short: "Cluster members: meta group suffrage and gossip state",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			return withClient(cmd, func(ctx context.Context, c *client.Client) error {
				st, err := c.Status(ctx, "")
				if err != nil {
					return err
				}
				w := cmd.OutOrStdout()
				if jsonOutput() {
					return printProto(w, &hodeiv1.StatusResponse{NodeId: st.GetNodeId(), MetaLeaderId: st.GetMetaLeaderId(), MetaServers: st.GetMetaServers(), Members: st.GetMembers(), GossipAddress: st.GetGossipAddress()})
				}
				gossip := map[string]*hodeiv1.Member{}
				for _, m := range st.GetMembers() {
					gossip[m.GetId()] = m
				}
				tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
				fmt.Fprintln(tw, "NODE\tADDRESS\tSUFFRAGE\tMETA\tGOSSIP\tGOSSIP ADDRESS")
				seen := map[string]bool{}
				for _, srv := range st.GetMetaServers() {
					seen[srv.GetId()] = true
					role := "follower"
					if srv.GetLeader() {
						role = "leader"
					}
					state, gaddr := "unknown", ""
					if srv.GetId() == st.GetNodeId() {
						state, gaddr = "alive (self)", st.GetGossipAddress()
					}
					if m, ok := gossip[srv.GetId()]; ok {
						state, gaddr = m.GetState(), m.GetGossipAddress()
					}
					fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\n", srv.GetId(), srv.GetAddress(), srv.GetSuffrage(), role, state, gaddr)
				}
				for _, m := range st.GetMembers() {
					if !seen[m.GetId()] {
						fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\n", m.GetId(), m.GetGrpcAddress(), "-", "not a member", m.GetState(), m.GetGossipAddress())
					}
				}
				return tw.Flush()
			})
		},
	}
}

// probe asks one node for its status directly.
func probe(ctx context.Context, addr string) (*hodeiv1.StatusResponse, error) {
	tok, err := clientToken()
	if err != nil {
		return nil, err
	}
	c, err := client.New(client.Config{Addrs: []string{addr}, Retry: time.Millisecond, TLSFiles: clientTLSFiles, Token: tok})
	if err != nil {
		return nil, err
	}
	defer c.Close()
	return c.Status(ctx, addr)
}

func newListPeersCmd() *cobra.Command {
	var shard int
	cmd := &cobra.Command{
		Use:   "list-peers",
		Short: "Raft configuration of a shard",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			return withClient(cmd, func(ctx context.Context, c *client.Client) error {
				st, err := c.Status(ctx, "")
				if err != nil {
					return err
				}
				if shard < 0 || shard >= len(st.GetShards()) {
					return fmt.Errorf("unknown shard %d (cluster has %d)", shard, len(st.GetShards()))
				}
				sh := st.GetShards()[shard]
				w := cmd.OutOrStdout()
				if jsonOutput() {
					return printProto(w, sh)
				}
				tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
				fmt.Fprintln(tw, "NODE\tADDRESS\tSTATE\tVOTER")
				for _, s := range sh.GetServers() {
					state := "follower"
					if s.GetLeader() {
						state = "leader"
					}
					fmt.Fprintf(tw, "%s\t%s\t%s\t%s\n", s.GetId(), s.GetAddress(), state, strconv.FormatBool(s.GetSuffrage() == "Voter"))
				}
				return tw.Flush()
			})
		},
	}
	cmd.Flags().IntVar(&shard, "shard", 0, "shard number")
	return cmd
}

func newTransferLeaderCmd() *cobra.Command {
	var shard int
	var to string
	cmd := &cobra.Command{
		Use:   "transfer-leader",
		Short: "Move a shard's leadership to another node (--to, or any)",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if shard < 0 {
				return fmt.Errorf("--shard must be >= 0")
			}
			return withClient(cmd, func(ctx context.Context, c *client.Client) error {
				if _, err := c.Admin().TransferLeader(ctx, &hodeiv1.TransferLeaderRequest{Shard: uint32(shard), ToNodeId: to}); err != nil {
					return err
				}
				fmt.Fprintf(cmd.OutOrStdout(), "leadership of shard %d transferred\n", shard)
				return nil
			})
		},
	}
	cmd.Flags().IntVar(&shard, "shard", 0, "shard number")
	cmd.Flags().StringVar(&to, "to", "", "target node id (default: any up-to-date voter)")
	return cmd
}

func newJoinCmd() *cobra.Command {
	var nonVoter bool
	cmd := &cobra.Command{
		Use:   "join ADDR",
		Short: "Add the running node at ADDR (started without --bootstrap) to the cluster at --addr",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			return withClient(cmd, func(ctx context.Context, c *client.Client) error {
				st, err := probe(ctx, args[0])
				if err != nil {
					return fmt.Errorf("cannot reach the new node at %s: %w", args[0], err)
				}
				ctx, cancel := context.WithTimeout(ctx, 2*time.Minute)
				defer cancel()
				if _, err := c.Admin().Join(ctx, &hodeiv1.JoinRequest{NodeId: st.GetNodeId(), Address: st.GetAddress(), Voter: !nonVoter}); err != nil {
					return err
				}
				fmt.Fprintf(cmd.OutOrStdout(), "node %s (%s) joined\n", st.GetNodeId(), st.GetAddress())
				return nil
			})
		},
	}
	cmd.Flags().BoolVar(&nonVoter, "non-voter", false, "add as a non-voter only")
	return cmd
}

func newRemoveCmd() *cobra.Command {
	return &cobra.Command{
		Use:   "remove NODE",
		Short: "Remove a node from every Raft group",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			return withClient(cmd, func(ctx context.Context, c *client.Client) error {
				if _, err := c.Admin().Remove(ctx, &hodeiv1.RemoveRequest{NodeId: args[0]}); err != nil {
					return err
				}
				fmt.Fprintf(cmd.OutOrStdout(), "node %s removed\n", args[0])
				return nil
			})
		},
	}
}
