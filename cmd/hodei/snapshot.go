package main

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"

	"github.com/hodei-io/hodei/client"
	"github.com/hodei-io/hodei/cluster"
	"github.com/hodei-io/hodei/proto/hodeiv1"
)

func newSnapshotCmd() *cobra.Command {
	cmd := &cobra.Command{
		Use:   "snapshot",
		Short: "Backup: save the state of every group to a file; restore it onto a fresh cluster",
	}
	cmd.AddCommand(newSnapshotSaveCmd(), newSnapshotRestoreCmd())
	return cmd
}

func newSnapshotSaveCmd() *cobra.Command {
	return &cobra.Command{
		Use:   "save FILE",
		Short: "Save a consistent snapshot of the meta group and every shard, with a SHA-256, to FILE",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			file := args[0]
			return withClient(cmd, func(ctx context.Context, c *client.Client) error {
				data, err := receiveArchive(ctx, c)
				if err != nil {
					return err
				}
				// Check what arrived before it replaces anything on disk.
				a, err := cluster.ParseArchive(data)
				if err != nil {
					return fmt.Errorf("the archive received is unusable: %w", err)
				}
				if err := writeFileAtomic(file, data); err != nil {
					return err
				}
				w := cmd.OutOrStdout()
				sum := &hodeiv1.SnapshotRestoreResponse{Header: a.Header, Sha256: a.SHA256, Bytes: uint64(a.Size)}
				for _, s := range a.Sections {
					sum.Groups = append(sum.Groups, s.Info)
				}
				if jsonOutput() {
					return printProto(w, sum)
				}
				fmt.Fprintf(w, "saved %s\n", file)
				return printArchiveSummary(w, sum)
			})
		},
	}
}

func receiveArchive(ctx context.Context, c *client.Client) ([]byte, error) {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	st, err := c.Admin().SnapshotSave(ctx, &hodeiv1.SnapshotSaveRequest{})
	if err != nil {
		return nil, err
	}
	var buf bytes.Buffer
	for {
		m, err := st.Recv()
		if err == io.EOF {
			return buf.Bytes(), nil
		}
		if err != nil {
			return nil, err
		}
		buf.Write(m.GetData())
	}
}

// writeFileAtomic writes data to a temporary file next to path, syncs it
// and renames it over path: path is either the old file or the whole new one.
func writeFileAtomic(path string, data []byte) error {
	dir, base := filepath.Split(path)
	if dir == "" {
		dir = "."
	}
	f, err := os.CreateTemp(dir, "."+base+".tmp-*")
	if err != nil {
		return err
	}
	tmp := f.Name()
	defer os.Remove(tmp) // a no-op after the rename
	if _, err := f.Write(data); err != nil {
		f.Close()
		return err
	}
	if err := f.Sync(); err != nil {
		f.Close()
		return err
	}
	if err := f.Close(); err != nil {
		return err
	}
	if err := os.Rename(tmp, path); err != nil {
		return err
	}
	if d, err := os.Open(dir); err == nil {
		d.Sync()
		d.Close()
	}
	return nil
}

func newSnapshotRestoreCmd() *cobra.Command {
	var force bool
	cmd := &cobra.Command{
		Use:   "restore FILE",
		Short: "Restore a saved snapshot onto this (fresh) cluster: every shard's jobs and the tenant settings",
		Long: "Restore a saved snapshot onto the cluster at --addr. The cluster must have the archive's shard count " +
			"and must never have held a job, unless --force (which replaces every shard's state). The archive's " +
			"checksum and every part are verified before anything changes. The cluster keeps its own members.",
		Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			data, err := os.ReadFile(args[0])
			if err != nil {
				return err
			}
			return withClient(cmd, func(ctx context.Context, c *client.Client) error {
				ctx, cancel := context.WithCancel(ctx)
				defer cancel()
				st, err := c.Admin().SnapshotRestore(ctx)
				if err != nil {
					return err
				}
				for rest, first := data, true; first || len(rest) > 0; first = false {
					k := min(len(rest), 1<<20)
					if err := st.Send(&hodeiv1.SnapshotRestoreRequest{Data: rest[:k], Force: force && first}); err != nil {
						break // the server ended the call: CloseAndRecv has its status
					}
					rest = rest[k:]
				}
				resp, err := st.CloseAndRecv()
				if err != nil {
					return err
				}
				w := cmd.OutOrStdout()
				if jsonOutput() {
					return printProto(w, resp)
				}
				fmt.Fprintf(w, "restored %s\n", args[0])
				return printArchiveSummary(w, resp)
			})
		},
	}
	cmd.Flags().BoolVar(&force, "force", false, "restore even if the cluster holds (or held) jobs: their state is replaced")
	return cmd
}

func printArchiveSummary(w io.Writer, s *hodeiv1.SnapshotRestoreResponse) error {
	h := s.GetHeader()
	fmt.Fprintf(w, "  created  %s by %s\n", time.UnixMilli(h.GetCreatedAtMs()).UTC().Format(time.RFC3339), h.GetCreatedBy())
	fmt.Fprintf(w, "  groups   %d (meta + %d shards)\n", len(s.GetGroups()), h.GetShardCount())
	fmt.Fprintf(w, "  bytes    %d\n", s.GetBytes())
	fmt.Fprintf(w, "  sha256   %s\n", s.GetSha256())
	restored := s.GetRestoredIndex()
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	head := "GROUP\tINDEX\tTERM\tJOBS\tBYTES\tLEADER"
	if len(restored) > 0 {
		head += "\tRESTORED AT"
	}
	fmt.Fprintln(tw, head)
	jobs := uint64(0)
	for i, g := range s.GetGroups() {
		name, count := cluster.GroupName(g.GetGroup()), fmt.Sprint(g.GetJobs())
		if g.GetGroup() == cluster.MetaGroup {
			count = fmt.Sprintf("- (%d tenant settings)", g.GetTenants())
		}
		jobs += g.GetJobs()
		line := fmt.Sprintf("%s\t%d\t%d\t%s\t%d\t%s", name, g.GetIndex(), g.GetTerm(), count, g.GetSize(), g.GetLeaderId())
		if i < len(restored) {
			line += fmt.Sprintf("\t%d", restored[i])
		}
		fmt.Fprintln(tw, line)
	}
	if err := tw.Flush(); err != nil {
		return err
	}
	_, err := fmt.Fprintf(w, "%d jobs in %d shards\n", jobs, h.GetShardCount())
	return err
}
