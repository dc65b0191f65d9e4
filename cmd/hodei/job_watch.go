package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"time"

	"github.com/spf13/cobra"
	"google.golang.org/protobuf/encoding/protojson"

	"github.com/hodei-io/hodei/client"
	hodeiv1 "github.com/hodei-io/hodei/proto/hodeiv1"
)

func newJobWatchCmd() *cobra.Command {
	var (
		f         client.WatchFilter
		from      string
		fromNow   bool
		bookmarks bool
	)
	cmd := &cobra.Command{
		Use:   "watch",
		Short: "Stream job state changes (resumable with --from CURSOR)",
		Long: `Stream every job state change as the connected node applies it, in log
order per shard, until interrupted. Any node serves a watch from its own
replicas. Each line ends with the cursor after it; on exit the last cursor is
printed to stderr. --from CURSOR resumes after a cursor with no gap and no
repeat (also on another node); the default is --from-now. A cursor older than
what the node retains fails with OutOfRange: resync (list the jobs, then
watch from now). With --output json every message (events and, every few
seconds while idle, bookmarks) is one JSON line.`,
		Example: `  hodei job watch
  hodei job watch --tenant acme --kind email.send
  hodei job watch --job 3-42 --output json
  hodei job watch --from AQgEAAAAAAAAAAAAAAAA`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			if from != "" && fromNow {
				return errors.New("--from and --from-now are exclusive")
			}
			return withClient(cmd, func(ctx context.Context, c *client.Client) error {
				w := c.WatchJobs(ctx, f, from)
				defer w.Close()
				out := cmd.OutOrStdout()
				for {
					m, err := w.Next()
					if err != nil {
						if cur := w.Cursor(); cur != "" {
							fmt.Fprintf(cmd.ErrOrStderr(), "cursor: %s\n", cur)
						}
						if ctx.Err() != nil {
							return nil // interrupted
						}
						return err
					}
					if err := printWatchMessage(out, m, bookmarks); err != nil {
						return err
					}
				}
			})
		},
	}
	cmd.Flags().StringVar(&f.Tenant, "tenant", "", "only this tenant's jobs")
	cmd.Flags().StringVar(&f.JobID, "job", "", "only this job")
	cmd.Flags().StringVar(&f.Kind, "kind", "", `only jobs of this kind ("shell" for command jobs)`)
	cmd.Flags().StringVar(&from, "from", "", "resume after this cursor")
	cmd.Flags().BoolVar(&fromNow, "from-now", false, "start from now (the default)")
	cmd.Flags().BoolVar(&f.IncludeJob, "include-job", false, "attach the job (as the node holds it when sending) to each event")
	cmd.Flags().BoolVar(&bookmarks, "bookmarks", false, "text output: also print bookmarks")
	return cmd
}

// printWatchMessage writes one message: a JSON line, or a text line for an
// event (and for a bookmark with bookmarks).
func printWatchMessage(w io.Writer, m *hodeiv1.WatchJobsResponse, bookmarks bool) error {
	if jsonOutput() {
		b, err := protojson.MarshalOptions{}.Marshal(m)
		if err != nil {
			return err
		}
		_, err = fmt.Fprintf(w, "%s\n", b)
		return err
	}
	e := m.GetEvent()
	if e == nil {
		if !bookmarks {
			return nil
		}
		_, err := fmt.Fprintf(w, "bookmark cursor=%s\n", m.GetCursor())
		return err
	}
	kind := e.GetKind()
	if kind == "" {
		kind = "shell"
	}
	from, to := stateName(e.GetFrom()), stateName(e.GetTo())
	if e.GetFrom() == hodeiv1.JobState_JOB_STATE_UNSPECIFIED {
		from = "-"
	}
	if e.GetTo() == hodeiv1.JobState_JOB_STATE_UNSPECIFIED {
		to = "REMOVED"
	}
	_, err := fmt.Fprintf(w, "%s %s tenant=%s kind=%s %s->%s shard=%d index=%d.%d cursor=%s\n",
		time.UnixMilli(e.GetTimeMs()).UTC().Format("2006-01-02T15:04:05.000Z"), e.GetJobId(), e.GetTenant(), kind,
		from, to, e.GetShard(), e.GetIndex(), e.GetPosition(), m.GetCursor())
	return err
}
