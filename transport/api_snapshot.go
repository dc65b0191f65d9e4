package transport

import (
	"bytes"
	"io"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/hodei-io/hodei/proto/hodeiv1"
)

// snapshotChunk is the size of the pieces backup data is streamed in.
const snapshotChunk = 1 << 20

// chunkWriter turns writes into stream messages of at most snapshotChunk bytes.
type chunkWriter struct {
	buf  []byte
	send func([]byte) error
}

func (w *chunkWriter) Write(p []byte) (int, error) {
	n := len(p)
	for len(p) > 0 {
		k := min(len(p), snapshotChunk-len(w.buf))
		w.buf = append(w.buf, p[:k]...)
		p = p[k:]
		if len(w.buf) == snapshotChunk {
			if err := w.flush(); err != nil {
				return 0, err
			}
		}
	}
	return n, nil
}

func (w *chunkWriter) flush() error {
	if len(w.buf) == 0 {
		return nil
	}
	err := w.send(w.buf)
	w.buf = make([]byte, 0, snapshotChunk)
	return err
}

// SnapshotSave streams a backup archive assembled by this node from every
// group's leader.
func (s *adminService) SnapshotSave(_ *hodeiv1.SnapshotSaveRequest, stream grpc.ServerStreamingServer[hodeiv1.SnapshotChunk]) error {
	w := &chunkWriter{send: func(p []byte) error { return stream.Send(&hodeiv1.SnapshotChunk{Data: p}) }}
	if err := s.a.b.SnapshotSave(stream.Context(), w); err != nil {
		return ToStatus(err)
	}
	return ToStatus(w.flush())
}

// SnapshotRestore receives a whole archive (it is verified before anything
// changes, so it is held in memory), then restores it.
func (s *adminService) SnapshotRestore(stream grpc.ClientStreamingServer[hodeiv1.SnapshotRestoreRequest, hodeiv1.SnapshotRestoreResponse]) error {
	var buf bytes.Buffer
	force, first := false, true
	for {
		m, err := stream.Recv()
		if err == io.EOF {
			break
		}
		if err != nil {
			return err
		}
		if first {
			force, first = m.GetForce(), false
		}
		buf.Write(m.GetData())
	}
	resp, err := s.a.b.SnapshotRestore(stream.Context(), buf.Bytes(), force)
	if err != nil {
		return ToStatus(err)
	}
	return stream.SendAndClose(resp)
}

// pinnedGroup returns the group of a node-to-node call, which must be pinned.
func pinnedGroup(stream grpc.ServerStream) (uint32, error) {
	g, ok := pinnedShard(stream.Context())
	if !ok || !isForwarded(stream.Context()) {
		return 0, status.Error(codes.FailedPrecondition, "node-to-node call: it must be pinned to a group (use SnapshotSave / SnapshotRestore)")
	}
	return g, nil
}

// SnapshotGroup (node to node) streams one group's part, encoded on its leader.
func (s *adminService) SnapshotGroup(req *hodeiv1.GroupSnapshotRequest, stream grpc.ServerStreamingServer[hodeiv1.GroupSnapshotChunk]) error {
	g, err := pinnedGroup(stream)
	if err != nil {
		return err
	}
	if g != req.GetGroup() {
		return invalid("pinned to group %d, request is for group %d", g, req.GetGroup())
	}
	info, data, err := s.a.b.SnapshotGroup(stream.Context(), g)
	if err != nil {
		return ToStatus(err)
	}
	first := true
	for first || len(data) > 0 {
		k := min(len(data), snapshotChunk)
		m := &hodeiv1.GroupSnapshotChunk{Data: data[:k]}
		if first {
			m.Info, first = info, false
		}
		if err := stream.Send(m); err != nil {
			return err
		}
		data = data[k:]
	}
	return nil
}

// RestoreGroup (node to node) restores one group on its leader; the part is
// streamed, with the options in the first message.
func (s *adminService) RestoreGroup(stream grpc.ClientStreamingServer[hodeiv1.RestoreGroupRequest, hodeiv1.RestoreGroupResponse]) error {
	g, err := pinnedGroup(stream)
	if err != nil {
		return err
	}
	var req *hodeiv1.RestoreGroupRequest
	var buf bytes.Buffer
	for {
		m, err := stream.Recv()
		if err == io.EOF {
			break
		}
		if err != nil {
			return err
		}
		if req == nil {
			req = &hodeiv1.RestoreGroupRequest{Info: m.GetInfo(), Force: m.GetForce(), CheckOnly: m.GetCheckOnly()}
			if size := m.GetInfo().GetSize(); !m.GetCheckOnly() && size < 1<<31 {
				buf.Grow(int(size))
			}
		}
		buf.Write(m.GetData())
	}
	if req == nil || req.GetInfo().GetGroup() != g {
		return invalid("restore of group %d: missing or mismatched group info", g)
	}
	if !req.GetCheckOnly() && uint64(buf.Len()) != req.GetInfo().GetSize() {
		return invalid("restore of group %d: %d bytes announced, %d received", g, req.GetInfo().GetSize(), buf.Len())
	}
	req.Data = buf.Bytes()
	resp, err := s.a.b.RestoreGroup(stream.Context(), g, req)
	if err != nil {
		return ToStatus(err)
	}
	return stream.SendAndClose(resp)
}
