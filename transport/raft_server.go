package transport

import (
	"context"
	"errors"
	"io"
	"sync"

	"github.com/hashicorp/raft"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/hodei-io/hodei/proto/internalpb"
)

// raftService is the server side of the RaftTransport service: it hands
// each request to its group's Consumer() (or the heartbeat fast path) and
// waits for raft's answer.
type raftService struct {
	internalpb.UnimplementedRaftTransportServer
	net *RaftNetwork
}

func errUnknownGroup(group uint32) error {
	return status.Errorf(codes.Unavailable, "unknown raft group %d", group)
}

func errGroupClosed(group uint32) error {
	return status.Errorf(codes.Unavailable, "raft group %d: transport closed", group)
}

// group returns the open transport of group, or an UNAVAILABLE status.
func (s *raftService) group(group uint32, h *internalpb.RaftRPCHeader) (*groupTransport, error) {
	g := s.net.lookup(group)
	if g == nil {
		s.net.log.Debug("raft rpc for unknown group", "group", group, "from", string(h.GetAddr()))
		return nil, errUnknownGroup(group)
	}
	if len(h.GetAddr()) > 0 && s.net.dropped(raft.ServerAddress(h.GetAddr())) {
		return nil, status.Errorf(codes.Unavailable, "raft group %d: %v", group, ErrDropped)
	}
	return g, nil
}

// dispatch delivers cmd to g and waits for the response, giving up when ctx
// ends or g closes.
func (g *groupTransport) dispatch(ctx context.Context, cmd any, reader io.Reader, heartbeat bool) (any, error) {
	respCh := make(chan raft.RPCResponse, 1)
	rpc := raft.RPC{Command: cmd, Reader: reader, RespChan: respCh}
	fast := false
	if heartbeat {
		if fn := g.heartbeatFn(); fn != nil && g.fastPathAllowed(cmd) {
			fn(rpc)
			fast = true
		}
	}
	if !fast {
		select {
		case g.consumeCh <- rpc:
		case <-g.ctx.Done():
			return nil, errGroupClosed(g.group)
		case <-ctx.Done():
			return nil, status.FromContextError(ctx.Err()).Err()
		}
	}
	select {
	case resp := <-respCh:
		if resp.Error != nil {
			return resp.Response, resp.Error
		}
		return resp.Response, nil
	case <-g.ctx.Done():
		return nil, errGroupClosed(g.group)
	case <-ctx.Done():
		return nil, status.FromContextError(ctx.Err()).Err()
	}
}

// fastPathAllowed applies the HeartbeatGuard's gate, if any, to a heartbeat.
func (g *groupTransport) fastPathAllowed(cmd any) bool {
	gate := g.hbGate.Load()
	if gate == nil {
		return true
	}
	req, ok := cmd.(*raft.AppendEntriesRequest)
	return ok && (*gate)(req)
}

// responseErr turns an error raft answered with into a status.
func responseErr(err error) error {
	if _, ok := status.FromError(err); ok {
		return err
	}
	return status.Error(codes.Unknown, err.Error())
}

func (s *raftService) AppendEntries(ctx context.Context, in *internalpb.RaftAppendEntriesRequest) (*internalpb.RaftAppendEntriesResponse, error) {
	g, err := s.group(in.GetGroup(), in.GetHeader())
	if err != nil {
		return nil, err
	}
	req := appendReqFromPB(in)
	resp, err := g.dispatch(ctx, req, nil, isHeartbeat(req))
	if err != nil {
		return nil, responseErr(err)
	}
	r, ok := resp.(*raft.AppendEntriesResponse)
	if !ok {
		return nil, status.Errorf(codes.Internal, "unexpected response %T", resp)
	}
	return appendRespToPB(r), nil
}

func (s *raftService) RequestVote(ctx context.Context, in *internalpb.RaftRequestVoteRequest) (*internalpb.RaftRequestVoteResponse, error) {
	g, err := s.group(in.GetGroup(), in.GetHeader())
	if err != nil {
		return nil, err
	}
	resp, err := g.dispatch(ctx, voteReqFromPB(in), nil, false)
	if err != nil {
		return nil, responseErr(err)
	}
	r, ok := resp.(*raft.RequestVoteResponse)
	if !ok {
		return nil, status.Errorf(codes.Internal, "unexpected response %T", resp)
	}
	return voteRespToPB(r), nil
}

func (s *raftService) RequestPreVote(ctx context.Context, in *internalpb.RaftRequestPreVoteRequest) (*internalpb.RaftRequestPreVoteResponse, error) {
	g, err := s.group(in.GetGroup(), in.GetHeader())
	if err != nil {
		return nil, err
	}
	resp, err := g.dispatch(ctx, preVoteReqFromPB(in), nil, false)
	if err != nil {
		return nil, responseErr(err)
	}
	r, ok := resp.(*raft.RequestPreVoteResponse)
	if !ok {
		return nil, status.Errorf(codes.Internal, "unexpected response %T", resp)
	}
	return preVoteRespToPB(r), nil
}

func (s *raftService) TimeoutNow(ctx context.Context, in *internalpb.RaftTimeoutNowRequest) (*internalpb.RaftTimeoutNowResponse, error) {
	g, err := s.group(in.GetGroup(), in.GetHeader())
	if err != nil {
		return nil, err
	}
	resp, err := g.dispatch(ctx, &raft.TimeoutNowRequest{RPCHeader: headerFromPB(in.GetHeader())}, nil, false)
	if err != nil {
		return nil, responseErr(err)
	}
	r, ok := resp.(*raft.TimeoutNowResponse)
	if !ok {
		return nil, status.Errorf(codes.Internal, "unexpected response %T", resp)
	}
	return &internalpb.RaftTimeoutNowResponse{Header: headerToPB(r.RPCHeader)}, nil
}

// AppendEntriesPipeline answers each request of the stream in order. All
// requests of a stream must be of the group of the first one.
func (s *raftService) AppendEntriesPipeline(stream internalpb.RaftTransport_AppendEntriesPipelineServer) error {
	ctx := stream.Context()
	var g *groupTransport
	for {
		in, err := stream.Recv()
		if err == io.EOF {
			return nil
		}
		if err != nil {
			return err
		}
		if g == nil {
			if g, err = s.group(in.GetGroup(), in.GetHeader()); err != nil {
				return err
			}
		} else if in.GetGroup() != g.group {
			return status.Errorf(codes.InvalidArgument, "pipeline of raft group %d got a request of group %d", g.group, in.GetGroup())
		}
		if len(in.GetHeader().GetAddr()) > 0 && s.net.dropped(raft.ServerAddress(in.GetHeader().GetAddr())) {
			return status.Errorf(codes.Unavailable, "raft group %d: %v", g.group, ErrDropped)
		}
		resp, err := g.dispatch(ctx, appendReqFromPB(in), nil, false)
		var out *internalpb.RaftAppendEntriesResponse
		if r, ok := resp.(*raft.AppendEntriesResponse); ok && r != nil {
			out = appendRespToPB(r)
		} else {
			out = &internalpb.RaftAppendEntriesResponse{}
		}
		if err != nil {
			if _, isStatus := status.FromError(err); isStatus && resp == nil {
				// Closed group or cancelled stream: fail the stream.
				return err
			}
			out.Error = err.Error()
		}
		if err := stream.Send(out); err != nil {
			return err
		}
	}
}

// InstallSnapshot hands raft a reader over the rest of the stream.
func (s *raftService) InstallSnapshot(stream internalpb.RaftTransport_InstallSnapshotServer) error {
	first, err := stream.Recv()
	if err != nil {
		return err
	}
	if first.GetRequest() == nil {
		return status.Error(codes.InvalidArgument, "first snapshot chunk carries no request")
	}
	g, err := s.group(first.GetRequest().GetGroup(), first.GetRequest().GetHeader())
	if err != nil {
		return err
	}
	req := snapReqFromPB(first.GetRequest())
	r := &chunkReader{stream: stream, buf: first.GetData()}
	resp, err := g.dispatch(stream.Context(), req, io.LimitReader(r, req.Size), false)
	r.finish()
	if err != nil {
		return responseErr(err)
	}
	out, ok := resp.(*raft.InstallSnapshotResponse)
	if !ok {
		return status.Errorf(codes.Internal, "unexpected response %T", resp)
	}
	return stream.SendAndClose(&internalpb.RaftInstallSnapshotResponse{
		Header:  headerToPB(out.RPCHeader),
		Term:    out.Term,
		Success: out.Success,
	})
}

// chunkReader reads the data of InstallSnapshot chunks. Raft reads it from
// its own goroutine while the handler waits; finish stops reads before the
// handler returns, since a stream must not be used after that.
type chunkReader struct {
	mu     sync.Mutex
	stream internalpb.RaftTransport_InstallSnapshotServer
	buf    []byte
	done   bool
	err    error
}

var errSnapshotAborted = errors.New("snapshot stream ended")

func (r *chunkReader) Read(p []byte) (int, error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	for len(r.buf) == 0 {
		if r.done {
			return 0, errSnapshotAborted
		}
		if r.err != nil {
			return 0, r.err
		}
		msg, err := r.stream.Recv()
		if err != nil {
			r.err = err // io.EOF at the end of the stream
			return 0, err
		}
		r.buf = msg.GetData()
	}
	n := copy(p, r.buf)
	r.buf = r.buf[n:]
	return n, nil
}

func (r *chunkReader) finish() {
	r.mu.Lock()
	r.done = true
	r.mu.Unlock()
}
