package fsm

import (
	"errors"
	"fmt"
	"hash/crc32"
	"io"
	"sort"
	"sync"

	"github.com/hashicorp/raft"
	"google.golang.org/protobuf/proto"

	"github.com/hodei-io/hodei/proto/internalpb"
)

// MetaVersion is the newest version of meta commands and snapshots this
// code understands. A command carries the lowest version that has its kind
// (MetaVersionFor) and a snapshot the lowest version that has its fields,
// so that a cluster in a rolling upgrade keeps working with older nodes
// until a newer feature is used:
//
//	1: shard count, members, tenant settings
//	2 (MetaVersionTokens): tokens (issue 12) and the cluster id
const MetaVersion = MetaVersionTokens

// metaStateVersion is the snapshot version of st: the lowest that has its
// fields (never lower than the version the state already has: a state that
// held tokens stays at 2).
func metaStateVersion(st *internalpb.MetaState) uint32 {
	if st.GetClusterId() != "" || len(st.GetTokens()) > 0 {
		return max(st.GetVersion(), MetaVersionTokens)
	}
	return max(st.GetVersion(), 1)
}

var metaMagic = []byte("HODEIMET")

// MetaFSM is the replicated state of the meta group: the shard count, the
// member list and per-tenant settings. Like FSM it is deterministic.
type MetaFSM struct {
	mu    sync.RWMutex
	state *internalpb.MetaState
	// OnChange, if set, is called after every apply (outside the lock).
	onChange func()
	tokenGen uint64 // bumped on token changes and restores (meta_tokens.go)
}

// NewMeta returns an empty meta state machine.
func NewMeta(onChange func()) *MetaFSM {
	return &MetaFSM{state: &internalpb.MetaState{Version: 1}, onChange: onChange}
}

// State returns a copy of the meta state.
func (m *MetaFSM) State() *internalpb.MetaState {
	m.mu.RLock()
	defer m.mu.RUnlock()
	return proto.Clone(m.state).(*internalpb.MetaState)
}

// ClusterID is the cluster's identity ("" before the meta leader records one).
func (m *MetaFSM) ClusterID() string {
	m.mu.RLock()
	defer m.mu.RUnlock()
	return m.state.GetClusterId()
}

// ShardCount is the cluster's shard count (0 before it is set).
func (m *MetaFSM) ShardCount() uint32 {
	m.mu.RLock()
	defer m.mu.RUnlock()
	return m.state.GetShardCount()
}

// TenantWeight is a tenant's fair-share weight (1 when unset).
func (m *MetaFSM) TenantWeight(tenant string) uint32 {
	m.mu.RLock()
	defer m.mu.RUnlock()
	for _, t := range m.state.GetTenants() {
		if t.GetTenant() == tenant && t.GetWeight() > 0 {
			return t.GetWeight()
		}
	}
	return 1
}

// Tenants returns a copy of the tenant settings, sorted by tenant.
func (m *MetaFSM) Tenants() []*internalpb.TenantSettings {
	m.mu.RLock()
	defer m.mu.RUnlock()
	out := make([]*internalpb.TenantSettings, len(m.state.GetTenants()))
	for i, t := range m.state.GetTenants() {
		out[i] = proto.Clone(t).(*internalpb.TenantSettings)
	}
	return out
}

// Apply implements raft.FSM. It returns a *CodeError for a rejected
// command, nil otherwise. Malformed entries stop the node loudly.
func (m *MetaFSM) Apply(l *raft.Log) interface{} {
	if l.Type != raft.LogCommand {
		return nil
	}
	var cmd internalpb.MetaCommand
	if err := proto.Unmarshal(l.Data, &cmd); err != nil {
		panic(fmt.Sprintf("fsm: meta entry %d is malformed: %v", l.Index, err))
	}
	if cmd.GetVersion() == 0 || cmd.GetVersion() > MetaVersion {
		panic(fmt.Sprintf("fsm: meta entry %d has version %d, this node understands %d: upgrade it", l.Index, cmd.GetVersion(), MetaVersion))
	}
	res := m.apply(l.Index, &cmd)
	if m.onChange != nil {
		m.onChange()
	}
	return res
}

func (m *MetaFSM) apply(index uint64, cmd *internalpb.MetaCommand) error {
	m.mu.Lock()
	defer m.mu.Unlock()
	s := m.state
	s.AppliedIndex = index
	if handled, err := m.applyToken(cmd); handled { // auth (issue 12)
		return err
	}
	switch k := cmd.GetKind().(type) {
	case *internalpb.MetaCommand_InitShards:
		if k.InitShards == 0 {
			return &CodeError{C: internalpb.Code_CODE_INVALID_ARGUMENT, Msg: "shard count must be > 0"}
		}
		if s.ShardCount != 0 && s.ShardCount != k.InitShards {
			return &CodeError{C: internalpb.Code_CODE_FAILED_PRECONDITION, Msg: fmt.Sprintf("cluster has %d shards, not %d", s.ShardCount, k.InitShards)}
		}
		s.ShardCount = k.InitShards
	case *internalpb.MetaCommand_InitClusterId:
		if cmd.GetVersion() < MetaVersionTokens {
			return &CodeError{C: internalpb.Code_CODE_INVALID_ARGUMENT, Msg: fmt.Sprintf("init_cluster_id needs meta version %d", MetaVersionTokens)}
		}
		if err := ValidateClusterID(k.InitClusterId); err != nil {
			return &CodeError{C: internalpb.Code_CODE_INVALID_ARGUMENT, Msg: err.Error()}
		}
		if s.ClusterId == "" {
			s.ClusterId = k.InitClusterId
		}
	case *internalpb.MetaCommand_PutMember:
		mem := proto.Clone(k.PutMember).(*internalpb.Member)
		if mem.GetId() == "" || mem.GetGrpcAddr() == "" {
			return &CodeError{C: internalpb.Code_CODE_INVALID_ARGUMENT, Msg: "member needs an id and a gRPC address"}
		}
		replaced := false
		for i, old := range s.Members {
			if old.GetId() == mem.GetId() {
				mem.AddedAtMs = old.GetAddedAtMs()
				s.Members[i] = mem
				replaced = true
			}
		}
		if !replaced {
			mem.AddedAtMs = cmd.GetNowMs()
			s.Members = append(s.Members, mem)
			sort.Slice(s.Members, func(i, j int) bool { return s.Members[i].GetId() < s.Members[j].GetId() })
		}
	case *internalpb.MetaCommand_RemoveMember:
		out := s.Members[:0]
		for _, mem := range s.Members {
			if mem.GetId() != k.RemoveMember {
				out = append(out, mem)
			}
		}
		s.Members = out
	case *internalpb.MetaCommand_PutTenant:
		if err := ValidateTenantWeight(k.PutTenant.GetTenant(), k.PutTenant.GetWeight()); err != nil {
			return &CodeError{C: internalpb.Code_CODE_INVALID_ARGUMENT, Msg: err.Error()}
		}
		if err := ValidateTenantLimits(k.PutTenant.GetLimits()); err != nil {
			return &CodeError{C: internalpb.Code_CODE_INVALID_ARGUMENT, Msg: err.Error()}
		}
		t := proto.Clone(k.PutTenant).(*internalpb.TenantSettings)
		replaced := false
		for i, old := range s.Tenants {
			if old.GetTenant() == t.GetTenant() {
				s.Tenants[i] = t
				replaced = true
			}
		}
		if !replaced {
			s.Tenants = append(s.Tenants, t)
			sort.Slice(s.Tenants, func(i, j int) bool { return s.Tenants[i].GetTenant() < s.Tenants[j].GetTenant() })
		}
	default:
		panic(fmt.Sprintf("fsm: meta entry %d has an unknown command", index))
	}
	return nil
}

// ValidateClusterID checks a cluster id: 1 to 64 characters of [0-9a-z-].
func ValidateClusterID(id string) error {
	if id == "" || len(id) > 64 {
		return fmt.Errorf("cluster id must have 1 to 64 characters, got %d", len(id))
	}
	for _, r := range id {
		if !(r >= '0' && r <= '9' || r >= 'a' && r <= 'z' || r == '-') {
			return fmt.Errorf("cluster id %q: only 0-9, a-z and '-' are allowed", id)
		}
	}
	return nil
}

// Snapshot implements raft.FSM.
func (m *MetaFSM) Snapshot() (raft.FSMSnapshot, error) {
	m.mu.RLock()
	defer m.mu.RUnlock()
	buf, err := EncodeMetaSnapshot(m.state)
	if err != nil {
		return nil, err
	}
	return metaSnapshot(buf), nil
}

// EncodeMetaSnapshot is the meta snapshot encoding of st: "HODEIMET", the
// deterministic protobuf encoding, and a CRC-32C of both (big-endian).
func EncodeMetaSnapshot(st *internalpb.MetaState) ([]byte, error) {
	if v := metaStateVersion(st); st.GetVersion() != v {
		st = proto.Clone(st).(*internalpb.MetaState)
		st.Version = v
	}
	b, err := proto.MarshalOptions{Deterministic: true}.Marshal(st)
	if err != nil {
		return nil, err
	}
	buf := append(append([]byte{}, metaMagic...), b...)
	sum := crc32.Checksum(buf, castagnoli)
	return append(buf, byte(sum>>24), byte(sum>>16), byte(sum>>8), byte(sum)), nil
}

// DecodeMetaSnapshot verifies and decodes a meta snapshot encoding.
func DecodeMetaSnapshot(b []byte) (*internalpb.MetaState, error) {
	if len(b) < len(metaMagic)+4 || string(b[:len(metaMagic)]) != string(metaMagic) {
		return nil, errors.New("fsm: meta snapshot: bad magic")
	}
	body, tail := b[:len(b)-4], b[len(b)-4:]
	sum := uint32(tail[0])<<24 | uint32(tail[1])<<16 | uint32(tail[2])<<8 | uint32(tail[3])
	if crc32.Checksum(body, castagnoli) != sum {
		return nil, errors.New("fsm: meta snapshot: checksum mismatch")
	}
	var st internalpb.MetaState
	if err := proto.Unmarshal(body[len(metaMagic):], &st); err != nil {
		return nil, fmt.Errorf("fsm: meta snapshot: %w", err)
	}
	if st.GetVersion() > MetaVersion {
		return nil, fmt.Errorf("fsm: meta snapshot version %d is newer than %d", st.GetVersion(), MetaVersion)
	}
	return &st, nil
}

// Restore implements raft.FSM: it replaces the state after verifying it.
func (m *MetaFSM) Restore(rc io.ReadCloser) error {
	defer rc.Close()
	b, err := io.ReadAll(rc)
	if err != nil {
		return err
	}
	st, err := DecodeMetaSnapshot(b)
	if err != nil {
		return err
	}
	m.mu.Lock()
	m.state = st
	m.tokenGen++
	m.mu.Unlock()
	if m.onChange != nil {
		m.onChange()
	}
	return nil
}

type metaSnapshot []byte

func (s metaSnapshot) Persist(sink raft.SnapshotSink) error {
	if _, err := sink.Write(s); err != nil {
		sink.Cancel()
		return err
	}
	return sink.Close()
}

func (metaSnapshot) Release() {}
