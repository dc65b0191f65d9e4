package cluster

import (
	"bytes"
	"encoding/json"
	"log/slog"
	"strings"
	"testing"
	"time"
)

func TestRaftLogLevelsAndFolding(t *testing.T) {
	var buf bytes.Buffer
	now := time.Unix(1000, 0)
	r := newRaftLog(slog.New(slog.NewJSONHandler(&buf, &slog.HandlerOptions{Level: slog.LevelInfo})))
	r.now = func() time.Time { return now }
	shard1, shard2 := r.hclog("raft[shard 1]"), r.hclog("raft[shard 2]")

	shard1.Warn("rejecting pre-vote request since we have a leader", "from", "n2:7401")
	for i := 0; i < 5; i++ { // every group reports the same dead peer, every backoff
		shard1.Error("failed to heartbeat to", "peer", "n2:7401", "error", "connection refused")
		shard2.Error("failed to heartbeat to", "peer", "n2:7401", "error", "connection refused")
	}
	shard1.Error("failed to heartbeat to", "peer", "n3:7401", "error", "connection refused")
	shard1.Error("failed to append to logs", "error", "disk full")
	now = now.Add(raftLogWindow)
	shard2.Error("failed to heartbeat to", "peer", "n2:7401", "error", "connection refused")

	var lines []map[string]any
	for _, l := range strings.Split(strings.TrimSpace(buf.String()), "\n") {
		var m map[string]any
		if err := json.Unmarshal([]byte(l), &m); err != nil {
			t.Fatalf("line %q: %v", l, err)
		}
		lines = append(lines, m)
	}
	type want struct{ level, msg, peer, group string }
	wants := []want{
		{"WARN", "failed to heartbeat to", "n2:7401", "shard 1"},
		{"WARN", "failed to heartbeat to", "n3:7401", "shard 1"},
		{"ERROR", "failed to append to logs", "", "shard 1"},
		{"WARN", "failed to heartbeat to", "n2:7401", "shard 2"},
	}
	if len(lines) != len(wants) {
		t.Fatalf("got %d lines, want %d:\n%s", len(lines), len(wants), buf.String())
	}
	for i, w := range wants {
		l := lines[i]
		peer, _ := l["peer"].(string)
		if l["level"] != w.level || l["msg"] != w.msg || peer != w.peer || l["group"] != w.group || l["component"] != "raft" {
			t.Errorf("line %d = %v, want %+v", i, l, w)
		}
	}
	// A raft ERROR about a peer is a warning; the repeats inside the window are counted.
	if got := lines[3]["repeats_folded"]; got != float64(9) {
		t.Errorf("repeats_folded = %v, want 9", got)
	}
}
