package main

import (
	"context"
	"fmt"
	"io"

	"github.com/spf13/cobra"
	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/proto"

	"github.com/hodei-io/hodei/client"
	hodeiv1 "github.com/hodei-io/hodei/proto/hodeiv1"
)

// hodei job logs (issue 11 logs).
func newJobLogsCmd() *cobra.Command {
	var (
		follow  bool
		attempt int32
	)
	cmd := &cobra.Command{
		Use:   "logs ID",
		Short: "Show a job's log lines, live with --follow",
		Long: `Show the log lines a worker streamed for one attempt of a job (the latest
unless --attempt N). Lines are kept by the node the worker was connected to
(1 MiB per job, 1 hour after the job ends); any node finds them. When no node
holds them any more, the output tail kept with the job's result is shown, and
a note on stderr says so. With --follow, lines are shown as they arrive, on
to the next attempt on a retry, until the job ends.

Text output writes each line's data, stdout lines to stdout and stderr lines to
stderr. --output json writes one JSON object per line (a LogLine), and for a
result tail one object {"fromResultTail": true, "resultTail": ...}.`,
		Example: `  hodei job logs 3-17
  hodei job logs 3-17 --follow
  hodei job logs 3-17 --attempt 1 --output json`,
		Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			if attempt < 0 {
				return fmt.Errorf("--attempt must be >= 0, got %d", attempt)
			}
			out := &logPrinter{stdout: cmd.OutOrStdout(), stderr: cmd.ErrOrStderr(), json: jsonOutput()}
			return withClient(cmd, func(ctx context.Context, c *client.Client) error {
				if follow {
					return c.FollowJobLogs(ctx, &hodeiv1.FollowJobLogsRequest{JobId: args[0], Attempt: attempt}, func(m *hodeiv1.FollowJobLogsResponse) error {
						if err := out.attempt(m.GetAttempt()); err != nil {
							return err
						}
						if err := out.lines(m.GetLines()); err != nil {
							return err
						}
						if m.GetFromResultTail() {
							return out.tail(m.GetAttempt(), m.GetResultTail())
						}
						return nil
					})
				}
				req := &hodeiv1.GetJobLogsRequest{JobId: args[0], Attempt: attempt}
				for {
					resp, err := c.JobLogs(ctx, req)
					if err != nil {
						return err
					}
					out.notes(resp)
					if err := out.lines(resp.GetLines()); err != nil {
						return err
					}
					if resp.GetFromResultTail() {
						return out.tail(resp.GetAttempt(), resp.GetResultTail())
					}
					if !resp.GetMore() || len(resp.GetLines()) == 0 {
						return nil
					}
					req.Attempt, req.AfterSeq = resp.GetAttempt(), resp.GetLines()[len(resp.GetLines())-1].GetSeq()
				}
			})
		},
	}
	cmd.Flags().BoolVarP(&follow, "follow", "f", false, "stream lines as they arrive until the job ends")
	cmd.Flags().Int32Var(&attempt, "attempt", 0, "attempt number (0 = the latest)")
	return cmd
}

type logPrinter struct {
	stdout, stderr io.Writer
	json           bool
	shown          int32 // attempt whose header was printed
}

func (p *logPrinter) jsonLine(m proto.Message) error {
	b, err := protojson.Marshal(m)
	if err != nil {
		return err
	}
	_, err = fmt.Fprintf(p.stdout, "%s\n", b)
	return err
}

// attempt notes a move to another attempt (text only; JSON lines carry it).
func (p *logPrinter) attempt(n int32) error {
	if n == 0 || n == p.shown {
		return nil
	}
	if p.shown != 0 && !p.json {
		fmt.Fprintf(p.stderr, "-- attempt %d --\n", n)
	}
	p.shown = n
	return nil
}

func (p *logPrinter) notes(resp *hodeiv1.GetJobLogsResponse) {
	if p.json {
		return
	}
	if resp.GetTruncated() {
		fmt.Fprintln(p.stderr, "-- earlier lines were evicted from the node's log store --")
	}
	if n := resp.GetUnreachableNodes(); len(n) > 0 {
		fmt.Fprintf(p.stderr, "-- nodes that did not answer (their lines are missing): %v --\n", n)
	}
}

func (p *logPrinter) lines(ls []*hodeiv1.LogLine) error {
	for _, l := range ls {
		if p.json {
			if err := p.jsonLine(l); err != nil {
				return err
			}
			continue
		}
		w := p.stdout
		if l.GetStream() == hodeiv1.LogStream_LOG_STREAM_STDERR {
			w = p.stderr
		}
		if _, err := fmt.Fprintf(w, "%s\n", l.GetData()); err != nil {
			return err
		}
	}
	return nil
}

func (p *logPrinter) tail(attempt int32, tail []byte) error {
	if p.json {
		return p.jsonLine(&hodeiv1.GetJobLogsResponse{Attempt: attempt, FromResultTail: true, ResultTail: tail})
	}
	fmt.Fprintf(p.stderr, "-- no node holds live lines of attempt %d; the output tail of its result (replicated, last 64 KiB): --\n", attempt)
	_, err := p.stdout.Write(tail)
	if err == nil && len(tail) > 0 && tail[len(tail)-1] != '\n' {
		_, err = fmt.Fprintln(p.stdout)
	}
	return err
}
