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
// last line seen, within the client's retry budget. Following attempt 0
// moves on to retries, also across a resume.
func (c *Client) FollowJobLogs(ctx context.Context, req *hodeiv1.FollowJobLogsRequest, fn func(*hodeiv1.FollowJobLogsResponse) error) error {
	cur := &hodeiv1.FollowJobLogsRequest{JobId: req.GetJobId(), Attempt: req.GetAttempt(), AfterSeq: req.GetAfterSeq()}
	var (
		fnErr   error
		seenAtt int32                         // attempt of the last line seen
		seenSeq uint64                        // its seq
		pinned  bool                          // following attempt 0, resumed pinned to seenAtt
		next    *hodeiv1.FollowJobLogsRequest // a pinned attempt ended: go on with this
	)
	for n := 0; ; {
		idx, target := c.current()
		cc, err := c.conn(target)
		if err != nil {
			return err
		}
		next = nil
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
					seenAtt, seenSeq = m.GetAttempt(), ls[len(ls)-1].GetSeq()
				}
				if m.GetJobFinished() && pinned {
					// The server ends a pinned follow with its attempt: go
					// on with the latest unless the job ended with this one.
					job, err := c.Get(ctx, req.GetJobId())
					if err != nil {
						return err
					}
					if job.GetAttempts() > cur.GetAttempt() || !terminalState(job.GetState()) {
						if len(m.GetLines()) > 0 {
							m.JobFinished = false
							if fnErr = fn(m); fnErr != nil {
								return fnErr
							}
						}
						next = &hodeiv1.FollowJobLogsRequest{JobId: req.GetJobId()}
						if job.GetAttempts() == cur.GetAttempt() {
							// The retry has not started: the latest attempt
							// is still the one seen.
							next.AfterSeq = seenSeq
						}
						return nil
					}
				}
				if fnErr = fn(m); fnErr != nil {
					return fnErr
				}
				if m.GetJobFinished() {
					return nil
				}
			}
		}()
		if next != nil {
			cur, pinned = next, false
			continue
		}
		if err == nil || (fnErr != nil && errors.Is(err, fnErr)) || ctx.Err() != nil || !IsRetryable(err) {
			return err
		}
		if n++; n > 8 {
			return err
		}
		c.failover(idx)
		t := time.NewTimer(backoff(n - 1))
		select {
		case <-ctx.Done():
			t.Stop()
			return err
		case <-t.C:
		}
		// Resume after the last line seen.
		cur = &hodeiv1.FollowJobLogsRequest{JobId: req.GetJobId(), Attempt: req.GetAttempt(), AfterSeq: req.GetAfterSeq()}
		if seenAtt > 0 {
			cur.Attempt, cur.AfterSeq = seenAtt, seenSeq
			if req.GetAttempt() == 0 {
				// Attempt 0 with after_seq applies it to the latest attempt:
				// right while that is still the one seen; else pin to it.
				if job, err := c.Get(ctx, req.GetJobId()); err == nil && job.GetAttempts() == seenAtt {
					cur.Attempt = 0
				} else {
					pinned = true
				}
			}
		}
	}
}

func terminalState(s hodeiv1.JobState) bool {
	switch s {
	case hodeiv1.JobState_JOB_STATE_PENDING, hodeiv1.JobState_JOB_STATE_RUNNING, hodeiv1.JobState_JOB_STATE_UNSPECIFIED:
		return false
	}
	return true
}
