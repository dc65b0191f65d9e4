package cluster

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"time"

	"github.com/hashicorp/raft"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/hodei-io/hodei/fsm"
	"github.com/hodei-io/hodei/proto/hodeiv1"
	"github.com/hodei-io/hodei/proto/internalpb"
	"github.com/hodei-io/hodei/transport"
)

// Backups: hodei operator snapshot save / restore.
//
// Save: the node receiving the request writes the archive header, then for
// the meta group and each shard in turn asks that group's leader (itself,
// or one pinned SnapshotGroup call) for the group's state: the leader runs
// a Barrier (every entry committed before it is applied) and encodes its
// state machine exactly as a Raft snapshot would. Each group is a
// consistent point in time; groups are taken one after another (shards
// share no state, so nothing relates them).
//
// Restore: the receiving node verifies the archive (SHA-256, structure,
// each part exactly as the state machine's Restore would, shard count),
// then asks every shard leader whether its shard is fresh (no job ever),
// and only then restores each group on its leader with raft.Restore.

const (
	snapshotChunkSize = 1 << 20
	// groupRetry bounds how long one group's step waits through elections.
	groupRetry = 30 * time.Second
	// restoreTimeout bounds raft.Restore's queueing when ctx has no deadline.
	restoreTimeout = 2 * time.Minute
)

func failedPrecondition(format string, args ...any) error {
	return &fsm.CodeError{C: internalpb.Code_CODE_FAILED_PRECONDITION, Msg: fmt.Sprintf(format, args...)}
}

// SnapshotSave writes a backup archive of every group to w.
func (n *Node) SnapshotSave(ctx context.Context, w io.Writer) error {
	hdr := &hodeiv1.SnapshotArchiveHeader{
		ShardCount:  uint32(len(n.shards)),
		CreatedAtMs: time.Now().UnixMilli(),
		GroupCount:  uint32(len(n.shards)) + 1,
		CreatedBy:   n.cfg.NodeID,
	}
	aw, err := newArchiveWriter(w, hdr)
	if err != nil {
		return err
	}
	for _, g := range n.groups() {
		var info *hodeiv1.GroupSnapshotInfo
		var data []byte
		err := n.onLeader(ctx, g,
			func(ctx context.Context) (err error) {
				info, data, err = n.SnapshotGroup(ctx, g)
				return err
			},
			func(ctx context.Context, c hodeiv1.AdminServiceClient) (err error) {
				info, data, err = fetchGroupSnapshot(ctx, c, g)
				return err
			})
		if err != nil {
			return fmt.Errorf("%s: %w", GroupName(g), err)
		}
		if err := aw.section(info, data); err != nil {
			return err
		}
	}
	sum, size, err := aw.finish()
	if err == nil {
		n.cfg.Logger.Info("snapshot saved", "groups", hdr.GetGroupCount(), "bytes", size, "sha256", sum)
	}
	return err
}

// SnapshotGroup encodes one group this node leads, after a Barrier: the
// encoding holds every entry committed before the call.
func (n *Node) SnapshotGroup(ctx context.Context, g uint32) (*hodeiv1.GroupSnapshotInfo, []byte, error) {
	r, err := n.groupRaft(g)
	if err != nil {
		return nil, nil, err
	}
	if r.State() != raft.Leader {
		return nil, nil, raft.ErrNotLeader
	}
	term := r.CurrentTerm()
	if err := waitFuture(ctx, r.Barrier(n.cfg.ApplyTimeout)); err != nil {
		return nil, nil, err
	}
	info := &hodeiv1.GroupSnapshotInfo{Group: g, Term: term, LeaderId: n.cfg.NodeID}
	var data []byte
	if g == MetaGroup {
		st := n.meta.fsm.State()
		if data, err = fsm.EncodeMetaSnapshot(st); err != nil {
			return nil, nil, err
		}
		info.Index, info.Tenants = st.GetAppliedIndex(), uint32(len(st.GetTenants()))
	} else {
		var si fsm.SnapshotInfo
		data, si = n.shards[g].fsm.SnapshotData()
		info.Index, info.Jobs, info.NextSeq = si.AppliedIndex, uint64(si.Jobs), si.NextSeq
	}
	info.Size = uint64(len(data))
	return info, data, nil
}

// fetchGroupSnapshot reads one group's part from its leader.
func fetchGroupSnapshot(ctx context.Context, c hodeiv1.AdminServiceClient, g uint32) (*hodeiv1.GroupSnapshotInfo, []byte, error) {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	st, err := c.SnapshotGroup(ctx, &hodeiv1.GroupSnapshotRequest{Group: g})
	if err != nil {
		return nil, nil, err
	}
	var info *hodeiv1.GroupSnapshotInfo
	var buf bytes.Buffer
	for {
		m, err := st.Recv()
		if err == io.EOF {
			break
		}
		if err != nil {
			return nil, nil, err
		}
		if m.GetInfo() != nil && info == nil {
			info = m.GetInfo()
			buf.Grow(int(min(info.GetSize(), 1<<30)))
		}
		buf.Write(m.GetData())
	}
	if info == nil || info.GetGroup() != g || uint64(buf.Len()) != info.GetSize() {
		return nil, nil, status.Errorf(codes.Unavailable, "%s: incomplete part from the leader (%d bytes)", GroupName(g), buf.Len())
	}
	return info, buf.Bytes(), nil
}

// SnapshotRestore installs an archive onto this cluster. Nothing changes
// unless the archive is intact, has this cluster's shard count, every part
// passes its state machine's checks, and (without force) every shard is
// fresh: it never held a job.
func (n *Node) SnapshotRestore(ctx context.Context, data []byte, force bool) (*hodeiv1.SnapshotRestoreResponse, error) {
	a, err := ParseArchive(data)
	if err != nil {
		return nil, invalidErr("%v", err)
	}
	if int(a.Header.GetShardCount()) != len(n.shards) {
		return nil, failedPrecondition("the archive has %d shards, this cluster has %d: restore needs a cluster bootstrapped with --shards %d",
			a.Header.GetShardCount(), len(n.shards), a.Header.GetShardCount())
	}
	// raft.Restore stops a node whose state machine rejects the snapshot:
	// check every part here first, with the same code.
	for _, sec := range a.Sections {
		if err := n.checkPart(sec); err != nil {
			return nil, invalidErr("%s: %v", GroupName(sec.Info.GetGroup()), err)
		}
	}
	resp := &hodeiv1.SnapshotRestoreResponse{Header: a.Header, Sha256: a.SHA256, Bytes: uint64(a.Size)}
	// Every leader must be reachable and (without force) every shard fresh
	// before any group changes.
	for _, sec := range a.Sections {
		req := &hodeiv1.RestoreGroupRequest{Info: sec.Info, Force: force, CheckOnly: true}
		if _, err := n.restoreGroupOnLeader(ctx, req); err != nil {
			return nil, err
		}
		resp.Groups = append(resp.Groups, sec.Info)
	}
	for _, sec := range a.Sections {
		req := &hodeiv1.RestoreGroupRequest{Info: sec.Info, Force: force, Data: sec.Data}
		res, err := n.restoreGroupOnLeader(ctx, req)
		if err != nil {
			return nil, fmt.Errorf("%s (%d of %d groups restored; the cluster is partly restored: retry with --force): %w",
				GroupName(sec.Info.GetGroup()), len(resp.RestoredIndex), len(a.Sections), err)
		}
		resp.RestoredIndex = append(resp.RestoredIndex, res.GetIndex())
		n.cfg.Logger.Info("snapshot restore: group restored", "group", GroupName(sec.Info.GetGroup()), "index", res.GetIndex(), "jobs", sec.Info.GetJobs())
	}
	return resp, nil
}

// checkPart verifies a part as the group's state machine would restore it.
func (n *Node) checkPart(sec ArchiveSection) error {
	g := sec.Info.GetGroup()
	if g == MetaGroup {
		st, err := fsm.DecodeMetaSnapshot(sec.Data)
		if err != nil {
			return err
		}
		if c := st.GetShardCount(); c != 0 && int(c) != len(n.shards) {
			return fmt.Errorf("meta state says %d shards, the archive header %d", c, len(n.shards))
		}
		return nil
	}
	s, err := n.shard(g)
	if err != nil {
		return err
	}
	_, err = s.fsm.CheckSnapshot(sec.Data)
	return err
}

func (n *Node) restoreGroupOnLeader(ctx context.Context, req *hodeiv1.RestoreGroupRequest) (*hodeiv1.RestoreGroupResponse, error) {
	g := req.GetInfo().GetGroup()
	var resp *hodeiv1.RestoreGroupResponse
	err := n.onLeader(ctx, g,
		func(ctx context.Context) (err error) {
			resp, err = n.RestoreGroup(ctx, g, req)
			return err
		},
		func(ctx context.Context, c hodeiv1.AdminServiceClient) (err error) {
			resp, err = sendRestoreGroup(ctx, c, req)
			return err
		})
	return resp, err
}

func sendRestoreGroup(ctx context.Context, c hodeiv1.AdminServiceClient, req *hodeiv1.RestoreGroupRequest) (*hodeiv1.RestoreGroupResponse, error) {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	st, err := c.RestoreGroup(ctx)
	if err != nil {
		return nil, err
	}
	data := req.GetData()
	first := true
	for first || len(data) > 0 {
		k := min(len(data), snapshotChunkSize)
		m := &hodeiv1.RestoreGroupRequest{Data: data[:k]}
		if first {
			m.Info, m.Force, m.CheckOnly = req.GetInfo(), req.GetForce(), req.GetCheckOnly()
			first = false
		}
		if err := st.Send(m); err != nil {
			if err == io.EOF {
				break // the server ended the call: CloseAndRecv has its status
			}
			return nil, err
		}
		data = data[k:]
	}
	return st.CloseAndRecv()
}

// RestoreGroup restores one group this node leads from req.Data (the whole
// part), or with CheckOnly only checks that it may. Without Force a shard
// must be fresh: no job now and none ever (next job seq 1), unless it
// already holds exactly this part (a retried restore). The meta group keeps
// this cluster's members and shard count and takes the archive's tenant
// settings.
func (n *Node) RestoreGroup(ctx context.Context, g uint32, req *hodeiv1.RestoreGroupRequest) (*hodeiv1.RestoreGroupResponse, error) {
	r, err := n.groupRaft(g)
	if err != nil {
		return nil, err
	}
	if r.State() != raft.Leader {
		return nil, raft.ErrNotLeader
	}
	// The state machine holds every committed entry, and no configuration
	// change is pending (raft.Restore refuses during one).
	if err := waitFuture(ctx, r.Barrier(n.cfg.ApplyTimeout)); err != nil {
		return nil, err
	}
	var payload []byte
	var index uint64
	if g == MetaGroup {
		if req.GetCheckOnly() {
			return &hodeiv1.RestoreGroupResponse{}, nil
		}
		st, err := fsm.DecodeMetaSnapshot(req.GetData())
		if err != nil {
			return nil, invalidErr("meta: %v", err)
		}
		if c := st.GetShardCount(); c != 0 && int(c) != len(n.shards) {
			return nil, failedPrecondition("the archive's meta group has %d shards, this cluster has %d", c, len(n.shards))
		}
		cur := n.meta.fsm.State()
		// The target keeps its own tokens (issue 12), like its members: a
		// restore neither locks its operators out nor brings back tokens
		// revoked here; the version is the one that represents them.
		restored := &internalpb.MetaState{
			Version:      max(1, cur.GetVersion()),
			ShardCount:   uint32(len(n.shards)),
			Members:      cur.GetMembers(),
			Tenants:      st.GetTenants(),
			ClusterId:    cur.GetClusterId(), // a restore keeps this cluster's identity
			AppliedIndex: cur.GetAppliedIndex(),
			Tokens:       cur.GetTokens(),
		}
		if payload, err = fsm.EncodeMetaSnapshot(restored); err != nil {
			return nil, err
		}
		index = cur.GetAppliedIndex()
	} else {
		s := n.shards[g]
		if !req.GetForce() {
			if jobs, next := s.fsm.Stats().Jobs, s.fsm.NextSeq(); jobs > 0 || next > 1 {
				if cur, _ := s.fsm.SnapshotData(); req.GetCheckOnly() || !bytes.Equal(cur, req.GetData()) {
					return nil, failedPrecondition("shard %d is not fresh (%d jobs, next job seq %d): restore onto a new cluster, or use --force to replace its state", g, jobs, next)
				}
				return &hodeiv1.RestoreGroupResponse{Index: r.AppliedIndex()}, nil // already restored
			}
		}
		if req.GetCheckOnly() {
			return &hodeiv1.RestoreGroupResponse{}, nil
		}
		si, err := s.fsm.CheckSnapshot(req.GetData())
		if err != nil {
			return nil, invalidErr("shard %d: %v", g, err)
		}
		payload = req.GetData()
		// raft.Restore puts the snapshot at max(index, last log index)+1.
		// The state machine keeps the applied index recorded in the part
		// (the old cluster's) and panics on any entry at or below it, so
		// index must be at least that.
		index = max(req.GetInfo().GetIndex(), si.AppliedIndex)
	}
	meta := &raft.SnapshotMeta{Version: raft.SnapshotVersionMax, Index: index, Term: r.CurrentTerm(), Size: int64(len(payload))}
	timeout := restoreTimeout
	if d, ok := ctx.Deadline(); ok {
		timeout = time.Until(d)
	}
	done := make(chan error, 1)
	go func() { done <- r.Restore(meta, bytes.NewReader(payload), timeout) }()
	select {
	case err := <-done:
		if err != nil {
			return nil, fmt.Errorf("raft restore of %s: %w", GroupName(g), err)
		}
	case <-ctx.Done():
		return nil, ctx.Err()
	}
	if g != MetaGroup {
		// The part's tenant weights are the old cluster's shard's; the
		// meta group (restored first) is the source of truth.
		n.shards[g].wakeTenantSync()
	}
	return &hodeiv1.RestoreGroupResponse{Index: r.AppliedIndex()}, nil
}

// onLeader runs local when this node leads group g, else remote against
// the leader (the context pinned to g), retrying through elections and
// leadership changes for up to groupRetry.
func (n *Node) onLeader(ctx context.Context, g uint32, local func(context.Context) error, remote func(context.Context, hodeiv1.AdminServiceClient) error) error {
	deadline := time.Now().Add(groupRetry)
	for {
		err := n.tryOnLeader(ctx, g, local, remote)
		if err == nil || !retryableGroupErr(err) || ctx.Err() != nil || time.Now().After(deadline) {
			return err
		}
		select {
		case <-ctx.Done():
			return err
		case <-time.After(50 * time.Millisecond):
		}
	}
}

// retryableGroupErr: the group's leader moved or is being elected.
func retryableGroupErr(err error) bool {
	switch {
	case errors.Is(err, raft.ErrNotLeader), errors.Is(err, raft.ErrLeadershipLost),
		errors.Is(err, raft.ErrLeadershipTransferInProgress), errors.Is(err, transport.ErrNoLeader):
		return true
	}
	if st, ok := status.FromError(err); ok {
		return st.Code() == codes.Unavailable
	}
	return false
}
