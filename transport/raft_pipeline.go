package transport

import (
	"context"
	"errors"
	"sync"
	"time"

	"github.com/hashicorp/raft"

	"github.com/hodei-io/hodei/proto/internalpb"
)

// pipeline is a raft.AppendPipeline over one AppendEntriesPipeline bidi
// stream. raft's replication goroutine calls AppendEntries (one caller at a
// time); a receiver goroutine matches the in-order responses with the
// futures in flight and hands them to Consumer(). At most pipelineWindow
// requests are in flight: AppendEntries blocks beyond that. Once the stream
// fails, every pending and later future fails, and raft falls back to
// unpipelined replication after Close.
type pipeline struct {
	g      *groupTransport
	target raft.ServerAddress
	stream internalpb.RaftTransport_AppendEntriesPipelineClient
	cancel context.CancelFunc

	inflight chan *appendFuture
	doneCh   chan raft.AppendFuture

	closeOnce  sync.Once
	shutdownCh chan struct{}
	wg         sync.WaitGroup

	errMu sync.Mutex
	err   error // first stream error
}

func newPipeline(g *groupTransport, target raft.ServerAddress, stream internalpb.RaftTransport_AppendEntriesPipelineClient, cancel context.CancelFunc) *pipeline {
	p := &pipeline{
		g:          g,
		target:     target,
		stream:     stream,
		cancel:     cancel,
		inflight:   make(chan *appendFuture, pipelineWindow),
		doneCh:     make(chan raft.AppendFuture, pipelineWindow),
		shutdownCh: make(chan struct{}),
	}
	p.wg.Add(1)
	go p.receive()
	return p
}

func (p *pipeline) setErr(err error) {
	p.errMu.Lock()
	if p.err == nil {
		p.err = err
	}
	p.errMu.Unlock()
}

func (p *pipeline) getErr() error {
	p.errMu.Lock()
	defer p.errMu.Unlock()
	return p.err
}

// AppendEntries implements raft.AppendPipeline.
func (p *pipeline) AppendEntries(args *raft.AppendEntriesRequest, resp *raft.AppendEntriesResponse) (raft.AppendFuture, error) {
	select {
	case <-p.shutdownCh:
		return nil, raft.ErrPipelineShutdown
	default:
	}
	if err := p.getErr(); err != nil {
		return nil, err
	}
	if p.g.net.dropped(p.target) {
		p.setErr(ErrDropped)
		p.cancel()
		return nil, ErrDropped
	}
	f := &appendFuture{start: time.Now(), args: args, resp: resp, done: make(chan struct{})}
	// Reserve a window slot first (back-pressure), then send: the receiver
	// reads futures in the order they were sent.
	select {
	case p.inflight <- f:
	case <-p.shutdownCh:
		return nil, raft.ErrPipelineShutdown
	}
	if err := p.stream.Send(appendReqToPB(p.g.group, args)); err != nil {
		err = p.g.rpcErr("AppendEntriesPipeline", p.target, err)
		p.setErr(err)
		p.cancel() // the receiver fails f and the rest
		return nil, err
	}
	return f, nil
}

// receive answers the futures in flight in order, until Close.
func (p *pipeline) receive() {
	defer p.wg.Done()
	timeout := p.g.net.cfg.Timeout
	// A response slower than timeout fails the stream.
	timer := time.AfterFunc(time.Hour, func() {
		p.setErr(errors.New("pipelined AppendEntries timed out"))
		p.cancel()
	})
	timer.Stop()
	defer timer.Stop()
	for {
		var f *appendFuture
		select {
		case f = <-p.inflight:
		case <-p.shutdownCh:
			return
		}
		if err := p.getErr(); err != nil {
			f.respond(err)
		} else {
			timer.Reset(timeout)
			out, err := p.stream.Recv()
			timer.Stop()
			switch {
			case err != nil:
				err = p.g.rpcErr("AppendEntriesPipeline", p.target, err)
				p.g.net.log.Debug("raft pipeline failed", "group", p.g.group, "target", string(p.target), "err", err)
				p.setErr(err)
				p.cancel()
				f.respond(p.getErr())
			case out.GetError() != "":
				appendRespFromPB(out, f.resp)
				f.respond(errors.New(out.GetError()))
			default:
				appendRespFromPB(out, f.resp)
				f.respond(nil)
			}
		}
		select {
		case p.doneCh <- f:
		case <-p.shutdownCh:
			return
		}
	}
}

// Consumer implements raft.AppendPipeline.
func (p *pipeline) Consumer() <-chan raft.AppendFuture { return p.doneCh }

// Close implements raft.AppendPipeline: it cancels the stream and waits for
// the receiver. Idempotent.
func (p *pipeline) Close() error {
	p.closeOnce.Do(func() {
		close(p.shutdownCh)
		p.cancel()
		p.wg.Wait()
		p.g.removePipeline(p)
		for {
			select {
			case f := <-p.inflight:
				f.respond(raft.ErrPipelineShutdown)
			default:
				return
			}
		}
	})
	return nil
}

// appendFuture implements raft.AppendFuture.
type appendFuture struct {
	start time.Time
	args  *raft.AppendEntriesRequest
	resp  *raft.AppendEntriesResponse
	err   error
	done  chan struct{}
}

func (f *appendFuture) respond(err error) {
	f.err = err
	close(f.done)
}

// Error implements raft.Future: it blocks until the response arrived.
func (f *appendFuture) Error() error {
	<-f.done
	return f.err
}

func (f *appendFuture) Start() time.Time                      { return f.start }
func (f *appendFuture) Request() *raft.AppendEntriesRequest   { return f.args }
func (f *appendFuture) Response() *raft.AppendEntriesResponse { return f.resp }
