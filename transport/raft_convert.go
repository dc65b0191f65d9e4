package transport

import (
	"time"

	"github.com/hashicorp/raft"

	"github.com/hodei-io/hodei/proto/internalpb"
)

// Conversions between hashicorp/raft's structs and their protobuf mirrors.
// Byte slices are shared, not copied: protobuf marshalling copies them once
// into the wire buffer and unmarshalling once out of it.

func headerToPB(h raft.RPCHeader) *internalpb.RaftRPCHeader {
	return &internalpb.RaftRPCHeader{ProtocolVersion: int64(h.ProtocolVersion), Id: h.ID, Addr: h.Addr}
}

func headerFromPB(h *internalpb.RaftRPCHeader) raft.RPCHeader {
	if h == nil {
		return raft.RPCHeader{}
	}
	return raft.RPCHeader{ProtocolVersion: raft.ProtocolVersion(h.GetProtocolVersion()), ID: h.GetId(), Addr: h.GetAddr()}
}

func timeToPB(t time.Time) int64 {
	if t.IsZero() {
		return 0
	}
	return t.UnixNano()
}

func timeFromPB(ns int64) time.Time {
	if ns == 0 {
		return time.Time{}
	}
	return time.Unix(0, ns)
}

func appendReqToPB(group uint32, r *raft.AppendEntriesRequest) *internalpb.RaftAppendEntriesRequest {
	out := &internalpb.RaftAppendEntriesRequest{
		Group:             group,
		Header:            headerToPB(r.RPCHeader),
		Term:              r.Term,
		Leader:            r.Leader,
		PrevLogEntry:      r.PrevLogEntry,
		PrevLogTerm:       r.PrevLogTerm,
		LeaderCommitIndex: r.LeaderCommitIndex,
	}
	if len(r.Entries) > 0 {
		// One allocation for all entries of the request.
		logs := make([]internalpb.RaftLog, len(r.Entries))
		out.Entries = make([]*internalpb.RaftLog, len(r.Entries))
		for i, e := range r.Entries {
			l := &logs[i]
			l.Index = e.Index
			l.Term = e.Term
			l.Type = uint32(e.Type)
			l.Data = e.Data
			l.Extensions = e.Extensions
			l.AppendedAtUnixNano = timeToPB(e.AppendedAt)
			out.Entries[i] = l
		}
	}
	return out
}

func appendReqFromPB(r *internalpb.RaftAppendEntriesRequest) *raft.AppendEntriesRequest {
	out := &raft.AppendEntriesRequest{
		RPCHeader:         headerFromPB(r.GetHeader()),
		Term:              r.GetTerm(),
		Leader:            r.GetLeader(),
		PrevLogEntry:      r.GetPrevLogEntry(),
		PrevLogTerm:       r.GetPrevLogTerm(),
		LeaderCommitIndex: r.GetLeaderCommitIndex(),
	}
	if n := len(r.GetEntries()); n > 0 {
		// Followers may keep the *raft.Log values (InmemStore, LogCache), so
		// they are fresh allocations, never reused.
		logs := make([]raft.Log, n)
		out.Entries = make([]*raft.Log, n)
		for i, e := range r.GetEntries() {
			logs[i] = raft.Log{
				Index:      e.GetIndex(),
				Term:       e.GetTerm(),
				Type:       raft.LogType(e.GetType()),
				Data:       e.GetData(),
				Extensions: e.GetExtensions(),
				AppendedAt: timeFromPB(e.GetAppendedAtUnixNano()),
			}
			out.Entries[i] = &logs[i]
		}
	}
	return out
}

// isHeartbeat reports whether r is a heartbeat: only term and leader set, as
// raft.NetworkTransport decides it.
func isHeartbeat(r *raft.AppendEntriesRequest) bool {
	leader := r.Addr
	if len(leader) == 0 {
		leader = r.Leader
	}
	return r.Term != 0 && len(leader) > 0 && r.PrevLogEntry == 0 && r.PrevLogTerm == 0 &&
		len(r.Entries) == 0 && r.LeaderCommitIndex == 0
}

func appendRespToPB(r *raft.AppendEntriesResponse) *internalpb.RaftAppendEntriesResponse {
	return &internalpb.RaftAppendEntriesResponse{
		Header:         headerToPB(r.RPCHeader),
		Term:           r.Term,
		LastLog:        r.LastLog,
		Success:        r.Success,
		NoRetryBackoff: r.NoRetryBackoff,
	}
}

func appendRespFromPB(r *internalpb.RaftAppendEntriesResponse, out *raft.AppendEntriesResponse) {
	*out = raft.AppendEntriesResponse{
		RPCHeader:      headerFromPB(r.GetHeader()),
		Term:           r.GetTerm(),
		LastLog:        r.GetLastLog(),
		Success:        r.GetSuccess(),
		NoRetryBackoff: r.GetNoRetryBackoff(),
	}
}

func voteReqToPB(group uint32, r *raft.RequestVoteRequest) *internalpb.RaftRequestVoteRequest {
	return &internalpb.RaftRequestVoteRequest{
		Group:              group,
		Header:             headerToPB(r.RPCHeader),
		Term:               r.Term,
		Candidate:          r.Candidate,
		LastLogIndex:       r.LastLogIndex,
		LastLogTerm:        r.LastLogTerm,
		LeadershipTransfer: r.LeadershipTransfer,
	}
}

func voteReqFromPB(r *internalpb.RaftRequestVoteRequest) *raft.RequestVoteRequest {
	return &raft.RequestVoteRequest{
		RPCHeader:          headerFromPB(r.GetHeader()),
		Term:               r.GetTerm(),
		Candidate:          r.GetCandidate(),
		LastLogIndex:       r.GetLastLogIndex(),
		LastLogTerm:        r.GetLastLogTerm(),
		LeadershipTransfer: r.GetLeadershipTransfer(),
	}
}

func voteRespToPB(r *raft.RequestVoteResponse) *internalpb.RaftRequestVoteResponse {
	return &internalpb.RaftRequestVoteResponse{
		Header:  headerToPB(r.RPCHeader),
		Term:    r.Term,
		Peers:   r.Peers,
		Granted: r.Granted,
	}
}

func voteRespFromPB(r *internalpb.RaftRequestVoteResponse, out *raft.RequestVoteResponse) {
	*out = raft.RequestVoteResponse{
		RPCHeader: headerFromPB(r.GetHeader()),
		Term:      r.GetTerm(),
		Peers:     r.GetPeers(),
		Granted:   r.GetGranted(),
	}
}

func preVoteReqToPB(group uint32, r *raft.RequestPreVoteRequest) *internalpb.RaftRequestPreVoteRequest {
	return &internalpb.RaftRequestPreVoteRequest{
		Group:        group,
		Header:       headerToPB(r.RPCHeader),
		Term:         r.Term,
		LastLogIndex: r.LastLogIndex,
		LastLogTerm:  r.LastLogTerm,
	}
}

func preVoteReqFromPB(r *internalpb.RaftRequestPreVoteRequest) *raft.RequestPreVoteRequest {
	return &raft.RequestPreVoteRequest{
		RPCHeader:    headerFromPB(r.GetHeader()),
		Term:         r.GetTerm(),
		LastLogIndex: r.GetLastLogIndex(),
		LastLogTerm:  r.GetLastLogTerm(),
	}
}

func preVoteRespToPB(r *raft.RequestPreVoteResponse) *internalpb.RaftRequestPreVoteResponse {
	return &internalpb.RaftRequestPreVoteResponse{
		Header:  headerToPB(r.RPCHeader),
		Term:    r.Term,
		Granted: r.Granted,
	}
}

func preVoteRespFromPB(r *internalpb.RaftRequestPreVoteResponse, out *raft.RequestPreVoteResponse) {
	*out = raft.RequestPreVoteResponse{
		RPCHeader: headerFromPB(r.GetHeader()),
		Term:      r.GetTerm(),
		Granted:   r.GetGranted(),
	}
}

func snapReqToPB(group uint32, r *raft.InstallSnapshotRequest) *internalpb.RaftInstallSnapshotRequest {
	return &internalpb.RaftInstallSnapshotRequest{
		Group:              group,
		Header:             headerToPB(r.RPCHeader),
		SnapshotVersion:    int64(r.SnapshotVersion),
		Term:               r.Term,
		Leader:             r.Leader,
		LastLogIndex:       r.LastLogIndex,
		LastLogTerm:        r.LastLogTerm,
		Peers:              r.Peers,
		Configuration:      r.Configuration,
		ConfigurationIndex: r.ConfigurationIndex,
		Size:               r.Size,
	}
}

func snapReqFromPB(r *internalpb.RaftInstallSnapshotRequest) *raft.InstallSnapshotRequest {
	return &raft.InstallSnapshotRequest{
		RPCHeader:          headerFromPB(r.GetHeader()),
		SnapshotVersion:    raft.SnapshotVersion(r.GetSnapshotVersion()),
		Term:               r.GetTerm(),
		Leader:             r.GetLeader(),
		LastLogIndex:       r.GetLastLogIndex(),
		LastLogTerm:        r.GetLastLogTerm(),
		Peers:              r.GetPeers(),
		Configuration:      r.GetConfiguration(),
		ConfigurationIndex: r.GetConfigurationIndex(),
		Size:               r.GetSize(),
	}
}
