package client

import (
	"context"
	"errors"
	"fmt"
	"io"
	mrand "math/rand/v2"
	"sync/atomic"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	hodeiv1 "github.com/hodei-io/hodei/proto/hodeiv1"
)

const (
	// workerMsgMax is the most completions, extensions or slots one
	// worker message may carry.
	workerMsgMax = 10000
	// workerBatchBytes bounds a completions message (well under gRPC's
	// default 4 MiB receive limit).
	workerBatchBytes = 1 << 20
)

// Why a stream ended, besides the node's errors.
var (
	errWorkerStopped        = errors.New("client: worker stopped")
	errWorkerDrained        = errors.New("client: the node drained the worker stream")
	errWorkerDrainTimeout   = errors.New("client: the node's drain outlasted the drain timeout; moving on with the running jobs")
	errWorkerNoWelcome      = errors.New("client: the worker stream did not start with a welcome")
	errWorkerWelcomeTimeout = errors.New("client: no welcome on the worker stream in time")
	errWorkerStreamEnded    = errors.New("client: the node ended the worker stream")
	errWorkerSuperseded     = fmt.Errorf("%w: the node leased the job again", ErrLeaseLost)
)

// connLoop keeps one worker stream up, moving to the next address after
// each failure with jittered backoff, until Run closes stopCh.
func (w *Worker) connLoop(kinds []string) {
	addrs := w.c.Addrs()
	// Start at the client's first address, the caller's preference (give
	// workers lists that start at different nodes to spread them).
	i := 0
	fails := 0
	for {
		select {
		case <-w.stopCh:
			return
		default:
		}
		start := time.Now()
		welcomed, err := w.session(addrs[i], kinds)
		if errors.Is(err, errWorkerStopped) {
			return
		}
		i = (i + 1) % len(addrs)
		if !welcomed && status.Code(err) == codes.InvalidArgument {
			// Maybe our credit is above the node's max_slots (a welcome
			// would have said): ask for less until a welcome tells.
			w.mu.Lock()
			w.maxSlots = max(min(w.maxSlots, w.helloSlots)/2, 1)
			w.mu.Unlock()
		}
		if welcomed && time.Since(start) > w.backoffMax {
			fails = 0 // a stream that was up for a while: not a failure streak
		}
		d := workerBackoff(w.backoffMin, w.backoffMax, fails)
		fails++
		switch {
		case errors.Is(err, errWorkerDrained):
			w.log.Info("worker stream drained by the node; reconnecting", "retry_in", d)
		case status.Code(err) == codes.AlreadyExists:
			// The node still holds our previous stream: it has not noticed
			// it is dead yet.
			w.log.Info("worker id already connected on the node; retrying", "err", err, "retry_in", d)
		default:
			w.log.Warn("worker stream ended", "err", err, "retry_in", d)
		}
		t := time.NewTimer(d)
		select {
		case <-w.stopCh:
			t.Stop()
			return
		case <-t.C:
		}
	}
}

// workerBackoff returns a duration uniformly in [d/2, d], d = min(lo·2^n, hi).
func workerBackoff(lo, hi time.Duration, n int) time.Duration {
	d := lo
	for i := 0; i < n && d < hi; i++ {
		d *= 2
	}
	d = min(d, hi)
	return d/2 + mrand.N(d/2+1)
}

// workerRecv is what the receiver of one stream hands back.
type workerRecv struct {
	done   chan struct{} // closed when the receiver stops
	err    error         // why it stopped (set before done is closed)
	closed atomic.Bool   // the worker closed its side: leases are no longer run
}

// session runs one stream to addr: hello, welcome, then the receiver on a
// goroutine and the sender here. welcomed says whether the node accepted
// the hello.
func (w *Worker) session(addr string, kinds []string) (welcomed bool, err error) {
	cc, err := w.c.conn(addr)
	if err != nil {
		return false, err
	}
	ctx, cancel := context.WithCancel(w.streamCtx)
	defer cancel()
	st, err := hodeiv1.NewWorkerServiceClient(cc).Connect(ctx)
	if err != nil {
		return false, err
	}
	hello := &hodeiv1.WorkerMessage{Msg: &hodeiv1.WorkerMessage_Hello{Hello: w.hello(kinds)}}
	if err := st.Send(hello); err != nil {
		// Send reports only that the stream is gone; Recv says why.
		if _, rerr := st.Recv(); rerr != nil && rerr != io.EOF {
			err = rerr
		}
		return false, err
	}
	timer := time.AfterFunc(w.c.cfg.CallTimeout, cancel)
	m, err := st.Recv()
	if !timer.Stop() {
		return false, fmt.Errorf("%w (%s)", errWorkerWelcomeTimeout, addr)
	}
	if err == io.EOF {
		err = errWorkerStreamEnded
	}
	if err != nil {
		return false, err
	}
	wel := m.GetWelcome()
	if wel == nil {
		return false, errWorkerNoWelcome
	}
	ttl, maxSlots := w.welcome(wel)
	w.streams.Add(1)
	w.log.Info("worker stream up", "addr", addr, "node", wel.GetNodeId(), "lease_ttl", ttl, "max_slots", maxSlots)

	rs := &workerRecv{done: make(chan struct{})}
	go w.recvLoop(st, rs)
	err = w.sendLoop(st, rs, cancel, ttl)
	cancel()
	<-rs.done
	return true, err
}

// hello starts a stream's state: credit for the free slots, and every
// completion without an answer queued again.
func (w *Worker) hello(kinds []string) *hodeiv1.WorkerHello {
	w.mu.Lock()
	defer w.mu.Unlock()
	slots := 0
	if !w.draining {
		// A hello above the node's max_slots is refused: keep to the
		// latest one known.
		slots = max(min(w.cfg.Concurrency-w.running, w.maxSlots), 0)
	}
	w.credit, w.helloSlots, w.srvDrain = slots, slots, false
	clear(w.pending)
	w.pending = w.pending[:0]
	clear(w.retry)
	w.retry = w.retry[:0]
	for _, j := range w.held {
		if j.gone == notGone && j.state != stRunning {
			j.state = stPending
			w.pending = append(w.pending, j)
		}
	}
	return &hodeiv1.WorkerHello{
		WorkerId: w.cfg.ID,
		Labels:   w.labels,
		Kinds:    kinds,
		Slots:    int32(slots),
		TtlMs:    w.cfg.LeaseTTL.Milliseconds(),
	}
}

// welcome records what the node grants.
func (w *Worker) welcome(wel *hodeiv1.ServerWelcome) (time.Duration, int) {
	w.mu.Lock()
	defer w.mu.Unlock()
	w.ttl = w.cfg.LeaseTTL
	if ms := wel.GetTtlMs(); ms > 0 {
		w.ttl = time.Duration(ms) * time.Millisecond
	}
	w.maxSlots = MaxWorkerConcurrency
	if ms := int(wel.GetMaxSlots()); ms > 0 {
		// The node keeps no more credit than this; WorkerSlots beyond it
		// would end the stream.
		w.maxSlots = ms
		w.credit = min(w.credit, ms)
	}
	return w.ttl, w.maxSlots
}

// sendLoop is the only sender on a stream. Each round takes everything
// queued (completions, freed slots, extensions when due) under the lock,
// sends it without the lock, and waits for more.
func (w *Worker) sendLoop(st hodeiv1.WorkerService_ConnectClient, rs *workerRecv, cancel context.CancelFunc, ttl time.Duration) error {
	hb := time.NewTicker(max(ttl/3, time.Millisecond))
	defer hb.Stop()
	var retryT, drainT, logT *time.Timer
	var retryC, drainC, logC <-chan time.Time
	defer func() {
		if retryT != nil {
			retryT.Stop()
		}
		if logT != nil {
			logT.Stop()
		}
		if drainT != nil {
			drainT.Stop()
		}
	}()
	stopC := (<-chan struct{})(w.stopCh)
	stopping := false
	extend := true // at once on a new stream: a reconnect may have taken a while
	var compls []*hodeiv1.Completion
	var refs []*hodeiv1.LeaseRef
	for {
		if w.testHookTake != nil {
			w.testHookTake()
		}
		now := time.Now()
		w.mu.Lock()
		for _, j := range w.pending {
			if j.gone == notGone && j.state == stPending {
				j.state = stSent
				compls = append(compls, j.compl)
			}
		}
		clear(w.pending)
		w.pending = w.pending[:0]
		slots := 0
		if !w.draining && !w.srvDrain && !stopping {
			if want := min(w.cfg.Concurrency-w.running, w.maxSlots) - w.credit; want > 0 {
				slots = want
				w.credit += want
			}
		}
		if extend {
			for id, j := range w.held {
				if j.gone == notGone && !j.noExt {
					j.extSent = now
					refs = append(refs, &hodeiv1.LeaseRef{JobId: id, Token: j.token})
				}
			}
			extend = false
		}
		if len(w.retry) > 0 && retryC == nil {
			retryT = time.NewTimer(workerRetryPause)
			retryC = retryT.C
		}
		if w.srvDrain && drainC == nil {
			drainT = time.NewTimer(w.cfg.DrainTimeout - time.Since(w.srvDrainAt))
			drainC = drainT.C
		}
		closeNow := stopping || (w.srvDrain && len(w.held) == 0)
		w.mu.Unlock()

		// Log lines first: a job's last lines go ahead of its completion.
		// One atomic load when no job writes logs.
		var logs []*hodeiv1.LogLine
		if logC == nil {
			var again time.Duration
			if logs, again = w.logq.take(now); again > 0 {
				logT = time.NewTimer(again)
				logC = logT.C
			}
		}
		if err := sendLogs(st, logs); err != nil {
			return w.streamBroken(rs, cancel, err)
		}
		err := sendAll(st, compls, slots, refs)
		clear(compls)
		compls = compls[:0]
		clear(refs)
		refs = refs[:0]
		if err != nil {
			return w.streamBroken(rs, cancel, err)
		}
		if closeNow {
			return w.closeStream(st, rs, cancel, stopping)
		}

		select {
		case <-rs.done:
			if rs.err == io.EOF {
				return errWorkerStreamEnded
			}
			return rs.err
		case <-w.wake:
		case <-hb.C:
			extend = true
		case <-logC:
			logC = nil // the rate allows more log lines
		case <-retryC:
			retryC = nil
			w.mu.Lock()
			for _, j := range w.retry {
				if j.gone == notGone && j.state == stRetry {
					j.state = stPending
					w.pending = append(w.pending, j)
				}
			}
			clear(w.retry)
			w.retry = w.retry[:0]
			w.mu.Unlock()
		case <-stopC:
			stopping, stopC = true, nil
		case <-drainC:
			return errWorkerDrainTimeout
		}
	}
}

// sendAll sends one round: completions (in messages of at most
// workerMsgMax and about workerBatchBytes), then credit, then extensions.
func sendAll(st hodeiv1.WorkerService_ConnectClient, compls []*hodeiv1.Completion, slots int, refs []*hodeiv1.LeaseRef) error {
	for len(compls) > 0 {
		n, size := 0, 0
		for n < len(compls) && n < workerMsgMax && (n == 0 || size < workerBatchBytes) {
			r := compls[n].GetResult()
			size += len(r.GetOutput()) + len(r.GetError()) + len(compls[n].GetJobId()) + 64
			n++
		}
		m := &hodeiv1.WorkerMessage{Msg: &hodeiv1.WorkerMessage_Completions{Completions: &hodeiv1.WorkerCompletions{Completions: compls[:n]}}}
		if err := st.Send(m); err != nil {
			return err
		}
		compls = compls[n:]
	}
	for slots > 0 {
		n := min(slots, workerMsgMax)
		if err := st.Send(&hodeiv1.WorkerMessage{Msg: &hodeiv1.WorkerMessage_Slots{Slots: &hodeiv1.WorkerSlots{Slots: int32(n)}}}); err != nil {
			return err
		}
		slots -= n
	}
	for len(refs) > 0 {
		n := min(len(refs), workerMsgMax)
		if err := st.Send(&hodeiv1.WorkerMessage{Msg: &hodeiv1.WorkerMessage_Extend{Extend: &hodeiv1.WorkerExtend{Leases: refs[:n]}}}); err != nil {
			return err
		}
		refs = refs[n:]
	}
	return nil
}

// streamBroken returns why a stream whose Send failed ended: the
// receiver's error (Send only says io.EOF).
func (w *Worker) streamBroken(rs *workerRecv, cancel context.CancelFunc, sendErr error) error {
	t := time.NewTimer(workerCloseWait)
	defer t.Stop()
	select {
	case <-rs.done:
	case <-t.C:
		cancel()
		<-rs.done
	}
	if rs.err != nil && rs.err != io.EOF {
		return rs.err
	}
	return sendErr
}

// closeStream closes the worker's side and waits (a little) for the node
// to end the stream.
func (w *Worker) closeStream(st hodeiv1.WorkerService_ConnectClient, rs *workerRecv, cancel context.CancelFunc, stopping bool) error {
	rs.closed.Store(true)
	_ = st.CloseSend()
	t := time.NewTimer(workerCloseWait)
	defer t.Stop()
	select {
	case <-rs.done:
	case <-t.C:
		cancel()
		<-rs.done
	}
	if stopping {
		return errWorkerStopped
	}
	return errWorkerDrained
}

// recvLoop dispatches what the node sends until the stream ends.
func (w *Worker) recvLoop(st hodeiv1.WorkerService_ConnectClient, rs *workerRecv) {
	defer close(rs.done)
	var buf []*Job
	for {
		m, err := st.Recv()
		if err != nil {
			rs.err = err
			return
		}
		switch msg := m.GetMsg().(type) {
		case *hodeiv1.ServerMessage_Leases:
			buf = w.onLeases(msg.Leases.GetLeases(), buf, rs.closed.Load())
		case *hodeiv1.ServerMessage_Completions:
			w.onCompletions(msg.Completions.GetResults())
		case *hodeiv1.ServerMessage_Extended:
			w.onExtended(msg.Extended.GetResults())
		case *hodeiv1.ServerMessage_Cancel:
			w.onCancel(msg.Cancel.GetLeases(), msg.Cancel.GetReason())
		case *hodeiv1.ServerMessage_Drain:
			w.onDrain(msg.Drain.GetReason())
		}
	}
}

// onLeases takes pushed leases: each goes to the pool, or, when it cannot
// run here, is failed (retryable) at once so that another worker gets it.
func (w *Worker) onLeases(leases []*hodeiv1.Lease, buf []*Job, closed bool) []*Job {
	now := time.Now()
	queued := false
	w.mu.Lock()
	for _, l := range leases {
		w.leased.Add(1)
		w.credit = max(w.credit-1, 0)
		jb := l.GetJob()
		id := jb.GetId()
		if closed {
			// We closed our side: it cannot be reported on this stream
			// (its lease expires).
			w.lost.Add(1)
			continue
		}
		ttl := w.ttl
		if ms := l.GetTtlMs(); ms > 0 {
			ttl = time.Duration(ms) * time.Millisecond
		}
		j := &Job{job: jb, token: l.GetToken(), expires: now.Add(ttl), lq: w.logq}
		if old := w.held[id]; old != nil {
			if old.token == j.token {
				continue // a repeat of a lease we hold
			}
			w.supersedeLocked(old)
		}
		h := w.handlers[jobKind(jb)]
		why := ""
		switch {
		case h == nil:
			why = fmt.Sprintf("client: worker %s has no handler for kind %q", w.cfg.ID, jobKind(jb))
		case w.running >= w.cfg.Concurrency:
			why = fmt.Sprintf("client: worker %s over capacity (the node sent more leases than its credit)", w.cfg.ID)
		}
		if why != "" {
			j.compl, j.state = rejectedCompletion(jb, j.token, w.cfg.ID, why), stPending
			w.held[id] = j
			w.pending = append(w.pending, j)
			w.rejectedN.Add(1)
			queued = true
			continue
		}
		j.h = h
		j.ctx, j.cancel = context.WithCancelCause(w.jobCtx)
		if w.expired {
			j.cancel(ErrDrainTimeout)
		}
		w.held[id] = j
		w.running++
		buf = append(buf, j)
	}
	w.mu.Unlock()
	// Never blocks: the channel holds Concurrency jobs and at most
	// Concurrency are running or queued.
	for _, j := range buf {
		w.jobs <- j
	}
	if queued {
		w.signal()
	}
	clear(buf)
	return buf[:0]
}

// supersedeLocked gives up a lease the node has replaced by a new one for
// the same job (so the old one is surely gone).
func (w *Worker) supersedeLocked(old *Job) {
	if old.gone != notGone {
		return
	}
	old.gone = goneLost
	if old.state == stRunning {
		old.cancel(errWorkerSuperseded) // counted when its handler returns
		return
	}
	w.lost.Add(1)
}

// retryableCompletionCode reports whether a refused completion is worth sending again.
func retryableCompletionCode(code string) bool {
	switch code {
	case "UNAVAILABLE", "DEADLINE_EXCEEDED", "RESOURCE_EXHAUSTED", "ABORTED":
		return true
	}
	return false
}

// onCompletions settles answered completions.
func (w *Worker) onCompletions(results []*hodeiv1.CompletionResult) {
	var refused int
	var first *hodeiv1.CompletionResult
	w.mu.Lock()
	for _, r := range results {
		id := r.GetJobId()
		j := w.held[id]
		if j == nil || j.token != r.GetToken() || j.state != stSent {
			continue
		}
		switch {
		case r.GetOk():
			delete(w.held, id)
			if j.compl.GetSuccess() {
				w.succeeded.Add(1)
			} else {
				w.failed.Add(1)
			}
		case retryableCompletionCode(r.GetCode()):
			j.state = stRetry
			w.retry = append(w.retry, j)
		default:
			delete(w.held, id)
			w.lost.Add(1)
			if refused++; first == nil {
				first = r
			}
		}
	}
	w.mu.Unlock()
	w.signal()
	if refused > 0 {
		w.log.Warn("completions refused; dropped", "count", refused, "job", first.GetJobId(), "code", first.GetCode(), "reason", first.GetReason())
	}
}

// onExtended applies extension results: a refused one ends a running job.
func (w *Worker) onExtended(results []*hodeiv1.ExtendResult) {
	var lost int
	var first *hodeiv1.ExtendResult
	w.mu.Lock()
	for _, r := range results {
		j := w.held[r.GetJobId()]
		if j == nil || j.gone != notGone || j.extSent.IsZero() {
			continue
		}
		if r.GetOk() {
			// Counted from when the extension was sent: never later than
			// the node's own expiry.
			if e := j.extSent.Add(w.ttl); e.After(j.expires) {
				j.expires = e
			}
			continue
		}
		if j.state != stRunning {
			// Finished: the answer to its completion decides (the lease
			// may have ended by that very completion).
			j.noExt = true
			continue
		}
		j.gone = goneLost
		j.cancel(fmt.Errorf("%w: %s", ErrLeaseLost, r.GetReason()))
		if lost++; first == nil {
			first = r
		}
	}
	w.mu.Unlock()
	if lost > 0 {
		w.log.Warn("leases lost: cancelling jobs", "count", lost, "job", first.GetJobId(), "reason", first.GetReason())
	}
}

// onCancel stops the jobs the node cancelled; nothing is reported for them.
func (w *Worker) onCancel(refs []*hodeiv1.LeaseRef, reason string) {
	cause := ErrJobCancelled
	if reason != "" {
		cause = fmt.Errorf("%w: %s", ErrJobCancelled, reason)
	}
	w.mu.Lock()
	for _, ref := range refs {
		j := w.held[ref.GetJobId()]
		if j == nil || j.token != ref.GetToken() || j.gone != notGone {
			continue
		}
		switch j.state {
		case stRunning:
			j.gone = goneCancelled
			j.cancel(cause) // counted when its handler returns
		case stPending, stRetry:
			j.gone = goneCancelled
			w.dropLocked(j)
			w.cancelled.Add(1)
		case stSent:
			// Sent before the notice: its answer decides.
		}
	}
	w.mu.Unlock()
	w.signal()
}

// onDrain: the node takes no more work from this stream; the sender gives
// no more credit and closes its side once every held job is reported.
func (w *Worker) onDrain(reason string) {
	w.mu.Lock()
	first := !w.srvDrain
	if first {
		w.srvDrain, w.srvDrainAt = true, time.Now()
	}
	n := len(w.held)
	w.mu.Unlock()
	if first {
		w.log.Info("node drains the worker stream", "reason", reason, "held", n)
	}
	w.signal()
}
