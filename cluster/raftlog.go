package cluster

import (
	"context"
	"encoding/json"
	"log/slog"
	"sort"
	"strings"
	"sync"
	"time"

	"github.com/hashicorp/go-hclog"
)

// raftLog turns hashicorp/raft's log lines (hclog, JSON) into slog records
// a human can read: the routine chatter of elections and catch-up goes to
// debug, and a peer that cannot be reached (which every group of a node
// reports, every backoff) is logged once per peer and message per
// raftLogWindow at warn, with the number of repeats folded in. Everything
// else keeps raft's level. Our own code logs what matters at info: a shard
// led, a membership change, a leadership move.
type raftLog struct {
	l   *slog.Logger
	now func() time.Time

	mu      sync.Mutex
	seen    map[string]*raftLogSeen // message + peer -> last time logged
	quieted bool
}

type raftLogSeen struct {
	at      time.Time
	repeats int
}

const raftLogWindow = 30 * time.Second

// raftRoutine are raft messages (prefixes) that describe normal operation
// around elections, restarts and follower catch-up.
var raftRoutine = []string{
	"rejecting pre-vote request since we have a leader",
	"rejecting vote request since we have a leader",
	"rejecting vote request since node is not a voter",
	"failed to get previous log",
	"heartbeat timeout reached",
	"Election timeout reached",
	"pre-vote campaign failed",
	"nothing new to snapshot",
	"failed to take snapshot", // when there is nothing new; a real failure shows in snapshot metrics
	"previous log term mis-match",
	"peer has newer term, stopping replication",  // another node won an election
	"appendEntries rejected, sending older logs", // a follower catching up (every new group does)
}

// raftPeerTrouble are raft messages about one peer being unreachable.
var raftPeerTrouble = []string{
	"failed to heartbeat to",
	"failed to appendEntries to",
	"failed to make requestVote RPC",
	"failed to pipeline appendEntries",
	"failed to start pipeline replication to",
	"failed to contact",
	"failed to send snapshot to",
}

func newRaftLog(l *slog.Logger) *raftLog {
	return &raftLog{l: l, now: time.Now, seen: map[string]*raftLogSeen{}}
}

// hclog returns the logger to give raft for one group.
func (r *raftLog) hclog(name string) hclog.Logger {
	return hclog.New(&hclog.LoggerOptions{Name: name, Level: hclog.Warn, JSONFormat: true, Output: r})
}

// Write takes one JSON log line from hclog.
func (r *raftLog) Write(p []byte) (int, error) {
	var rec map[string]any
	if err := json.Unmarshal(p, &rec); err != nil {
		r.l.Warn(strings.TrimSpace(string(p)), "component", "raft")
		return len(p), nil
	}
	msg, _ := rec["@message"].(string)
	module, _ := rec["@module"].(string)
	level := slog.LevelWarn
	switch rec["@level"] {
	case "error":
		level = slog.LevelError
	case "info":
		level = slog.LevelInfo
	case "debug", "trace":
		level = slog.LevelDebug
	}
	attrs := []slog.Attr{slog.String("component", "raft"), slog.String("group", strings.TrimSuffix(strings.TrimPrefix(module, "raft["), "]"))}
	keys := make([]string, 0, len(rec))
	for k := range rec {
		if !strings.HasPrefix(k, "@") {
			keys = append(keys, k)
		}
	}
	sort.Strings(keys)
	for _, k := range keys {
		v := rec[k]
		if f, ok := v.(float64); ok && f == float64(int64(f)) {
			v = int64(f) // JSON numbers: keep integers (durations are nanoseconds) readable
		}
		attrs = append(attrs, slog.Any(strings.ReplaceAll(k, " ", "_"), v))
	}
	switch {
	case hasPrefix(msg, raftRoutine):
		level = slog.LevelDebug
	case hasPrefix(msg, raftPeerTrouble):
		peer := raftPeer(rec)
		level = slog.LevelWarn // a peer's trouble, not this node's
		if n, ok := r.fold(msg + "\x00" + peer); !ok {
			level = slog.LevelDebug
		} else if n > 0 {
			attrs = append(attrs, slog.Int("repeats_folded", n), slog.String("window", raftLogWindow.String()))
		}
	}
	r.l.LogAttrs(context.Background(), level, msg, attrs...)
	return len(p), nil
}

// fold says whether a peer-trouble line with this key is logged at its
// level now (ok) and how many were folded into it since the last one.
func (r *raftLog) fold(key string) (folded int, ok bool) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.quieted {
		return 0, false
	}
	now := r.now()
	s := r.seen[key]
	if s != nil && now.Sub(s.at) < raftLogWindow {
		s.repeats++
		return 0, false
	}
	if s == nil {
		if len(r.seen) > 1024 { // bounded: forget everything rather than grow
			r.seen = map[string]*raftLogSeen{}
		}
		s = &raftLogSeen{}
		r.seen[key] = s
	}
	folded, s.repeats, s.at = s.repeats, 0, now
	return folded, true
}

// raftPeer is the peer a raft line is about: its "peer" (an address, or a
// server record with an Address), "target" or "server-id" field.
func raftPeer(rec map[string]any) string {
	for _, k := range []string{"peer", "target", "server-id"} {
		switch p := rec[k].(type) {
		case string:
			return p
		case map[string]any:
			if a, ok := p["Address"].(string); ok {
				return a
			}
		}
	}
	return ""
}

// quiet makes every peer-trouble line debug from now on: the node (or the
// whole local cluster, for `hodei dev`) is shutting down and its peers
// going away is expected.
func (r *raftLog) quiet() {
	r.mu.Lock()
	r.quieted = true
	r.mu.Unlock()
}

func hasPrefix(msg string, prefixes []string) bool {
	for _, p := range prefixes {
		if strings.HasPrefix(msg, p) {
			return true
		}
	}
	return false
}
