package client

import (
	"context"
	"errors"
	"io"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/hodei-io/hodei/proto/hodeiv1"
)

// ErrWatchResync is wrapped by the error a Watch returns when the server
// no longer holds the events after the watch's cursor (OUT_OF_RANGE): the
// caller must resync — list the jobs it cares about, then watch from now.
var ErrWatchResync = errors.New("client: watch cursor is no longer retained; resync (list, then watch from now)")

// WatchFilter selects the events of a watch; empty fields match all.
type WatchFilter struct {
	Tenant     string
	JobID      string
	Kind       string // "shell" matches command jobs
	IncludeJob bool   // attach the job as the serving node holds it when sending
	// BookmarkInterval: how often an idle stream gets a bookmark (0 = the
	// server's default, 2 s).
	BookmarkInterval time.Duration
}

// Watch is a WatchJobs stream that reconnects by itself: after a broken
// stream (a node stopped, a network error) it opens a new one, on the next
// node, from the cursor of the last message it returned, so that the
// caller sees every event once, in order per shard. Not safe for
// concurrent use.
type Watch struct {
	c      *Client
	ctx    context.Context
	filter WatchFilter
	cursor string // resume point after the last message returned
	stream hodeiv1.JobService_WatchJobsClient
	cancel context.CancelFunc
	err    error
}

// WatchJobs starts a watch that lasts until ctx ends or Close. from is a
// cursor from an earlier watch (WatchJobsResponse.cursor or Watch.Cursor)
// to resume after, or "" to start from now. The stream is opened by the
// first Next. The first message of every stream is a bookmark.
func (c *Client) WatchJobs(ctx context.Context, f WatchFilter, from string) *Watch {
	return &Watch{c: c, ctx: ctx, filter: f, cursor: from}
}

// Cursor returns the resume point after the last message Next returned
// ("" before the first message of a watch from now).
func (w *Watch) Cursor() string { return w.cursor }

// Next returns the next event or bookmark. It fails with an error wrapping
// ErrWatchResync when the cursor is too old for the node, with
// InvalidArgument for a bad filter or cursor, and with an error once the
// watch's ctx ends; broken streams are reopened (failing over between the
// configured nodes) within the client's retry budget, from Cursor.
func (w *Watch) Next() (*hodeiv1.WatchJobsResponse, error) {
	if w.err != nil {
		return nil, w.err
	}
	budget := time.Now().Add(w.c.cfg.Retry)
	for n := 0; ; n++ {
		if w.stream == nil {
			if err := w.open(); err != nil {
				if w.retry(err, &n, budget) {
					continue
				}
				return nil, w.fail(err)
			}
		}
		m, err := w.stream.Recv()
		if err == nil {
			w.cursor = m.GetCursor()
			return m, nil
		}
		w.close()
		if w.retry(err, &n, budget) {
			continue
		}
		return nil, w.fail(err)
	}
}

// retry reports whether err is worth another stream, failing over to the
// next node and waiting first.
func (w *Watch) retry(err error, n *int, budget time.Time) bool {
	if w.ctx.Err() != nil || time.Now().After(budget) {
		return false
	}
	if !IsRetryable(err) && !errors.Is(err, io.EOF) {
		return false
	}
	idx, _ := w.c.current()
	w.c.failover(idx)
	select {
	case <-w.ctx.Done():
		return false
	case <-time.After(backoff(*n)):
	}
	*n++
	return true
}

func (w *Watch) fail(err error) error {
	if status.Code(err) == codes.OutOfRange {
		err = &watchResyncError{err: err}
	}
	w.err = err
	return err
}

// watchResyncError is an OUT_OF_RANGE status that also matches
// ErrWatchResync.
type watchResyncError struct{ err error }

func (e *watchResyncError) Error() string   { return e.err.Error() }
func (e *watchResyncError) Unwrap() []error { return []error{ErrWatchResync, e.err} }

// GRPCStatus keeps status.Code working on the wrapped error.
func (e *watchResyncError) GRPCStatus() *status.Status {
	s, _ := status.FromError(e.err)
	return s
}

func (w *Watch) open() error {
	_, addr := w.c.current()
	cc, err := w.c.conn(addr)
	if err != nil {
		return err
	}
	sctx, cancel := context.WithCancel(w.ctx)
	req := &hodeiv1.WatchJobsRequest{Tenant: w.filter.Tenant, JobId: w.filter.JobID, Kind: w.filter.Kind,
		Cursor: w.cursor, IncludeJob: w.filter.IncludeJob, BookmarkIntervalMs: w.filter.BookmarkInterval.Milliseconds()}
	st, err := w.c.jobs(cc).WatchJobs(sctx, req)
	if err != nil {
		cancel()
		return err
	}
	w.stream, w.cancel = st, cancel
	return nil
}

func (w *Watch) close() {
	if w.cancel != nil {
		w.cancel()
	}
	w.stream, w.cancel = nil, nil
}

// Close ends the watch.
func (w *Watch) Close() {
	w.close()
	if w.err == nil {
		w.err = ErrClosed
	}
}
