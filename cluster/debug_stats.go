package cluster

import "github.com/hodei-io/hodei/cluster/logdb"

// DebugStats is a snapshot of a node's storage and batching counters, for
// benchmarks and diagnosis (hodei bench --stats).
type DebugStats struct {
	// LogStore is the shared log store's counters (zero with PerGroupLogStore).
	LogStore logdb.Stats
	Waves    WaveStats // zero with waves off
	Shards   []ShardDebugStats
}

// ShardDebugStats is one shard's batcher counters on this node (proposals
// only happen on the leader) and whether this node leads it now.
type ShardDebugStats struct {
	Shard  uint32
	Leader bool
	Batch  BatchStats
}

// DebugStats returns the node's counters since start.
func (n *Node) DebugStats() DebugStats {
	var st DebugStats
	if n.logdb != nil {
		st.LogStore = n.logdb.Stats()
	}
	st.Waves = n.waves.stats()
	for _, s := range n.shards {
		st.Shards = append(st.Shards, ShardDebugStats{Shard: s.id, Leader: s.isLeader(), Batch: s.batch.stats()})
	}
	return st
}
