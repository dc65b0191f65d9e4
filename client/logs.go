package client

import (
	"context"
	"errors"
	"io"
	"time"

	"google.golang.org/grpc"

	hodeiv1 "github.com/hodei-io/hodei/proto/hodeiv1"
)

// JobLogs returns the live log lines of one attempt of a job (req.Attempt
// 0: the latest) from whichever nodes hold them; any node answers. When no
// node holds them (never written, expired, or the node holding them is
// gone), FromResultTail is set and ResultTail is the output tail kept with
// the attempt's replicated result.
func (c *Client) JobLogs(ctx context.Context, req *hodeiv1.GetJobLogsRequest) (*hodeiv1.GetJobLogsResponse, error) {
	var resp *hodeiv1.GetJobLogsResponse
	err := c.invoke(ctx, c.cfg.CallTimeout, "", func(ctx context.Context, cc *grpc.ClientConn) error {
		r, err := c.jobs(cc).GetJobLogs(ctx, req)
		resp = r
		return err
	})
	if err != nil {
		return nil, err
	}
	return resp, nil
}

// FollowJobLogs streams a job's log lines live and calls fn with every
// message, until the job ends (the last message has JobFinished set; then
// it returns nil), ctx ends, or fn returns an error (returned as is). A
// stream cut by a node going away is resumed on the next node after the
// last line seen, within the client's retry budget.
func (c *Client) FollowJobLogs(ctx context.Context, req *hodeiv1.FollowJobLogsRequest, fn func(*hodeiv1.FollowJobLogsResponse) error) error {
	cur := &hodeiv1.FollowJobLogsRequest{JobId: req.GetJobId(), Attempt: req.GetAttempt(), AfterSeq: req.GetAfterSeq()}
	var fnErr error
	for n := 0; ; n++ {
		idx, target := c.current()
		cc, err := c.conn(target)
		if err != nil {
			return err
		}
		err = func() error {
			sctx, cancel := context.WithCancel(ctx)
			defer cancel()
			st, err := c.jobs(cc).FollowJobLogs(sctx, cur)
			if err != nil {
				return err
			}
			for {
				m, err := st.Recv()
				if err == io.EOF {
					return nil
				}
				if err != nil {
					return err
				}
				if ls := m.GetLines(); len(ls) > 0 {
					// Resume after the last line seen, on this attempt.
					cur.Attempt, cur.AfterSeq = m.GetAttempt(), ls[len(ls)-1].GetSeq()
				}
				if fnErr = fn(m); fnErr != nil {
					return fnErr
				}
				if m.GetJobFinished() {
					return nil
				}
				if len(m.GetLines()) == 0 && m.GetAttempt() != cur.GetAttempt() {
					cur.Attempt, cur.AfterSeq = m.GetAttempt(), 0
				}
			}
		}()
		if err == nil || (fnErr != nil && errors.Is(err, fnErr)) || ctx.Err() != nil || !IsRetryable(err) {
			return err
		}
		if n >= 8 {
			return err
		}
		c.failover(idx)
		t := time.NewTimer(backoff(n))
		select {
		case <-ctx.Done():
			t.Stop()
			return err
		case <-t.C:
		}
	}
}
