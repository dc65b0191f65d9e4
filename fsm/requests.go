package fsm

import (
	"github.com/hodei-io/hodei/proto/internalpb"
)

// requestTable remembers the result of recent commands by client request
// id. Entries are kept in insertion order, which is also at_ms order since
// replicated time is monotone; eviction takes from the front.
type requestTable struct {
	byID  map[string]*internalpb.RequestRecord
	order []*internalpb.RequestRecord // insertion order; order[head:] are live
	head  int
}

func newRequestTable() requestTable {
	return requestTable{byID: make(map[string]*internalpb.RequestRecord)}
}

func (t *requestTable) len() int { return len(t.order) - t.head }

func (t *requestTable) get(id string) (*internalpb.CommandResult, bool) {
	r, ok := t.byID[id]
	if !ok {
		return nil, false
	}
	return r.GetResult(), true
}

func (t *requestTable) put(id string, at int64, res *internalpb.CommandResult, cfg Config) {
	rec := &internalpb.RequestRecord{RequestId: id, AtMs: at, Result: res}
	t.byID[id] = rec
	t.order = append(t.order, rec)
	for t.len() > cfg.MaxRequests {
		t.popFront()
	}
}

func (t *requestTable) popFront() {
	rec := t.order[t.head]
	t.order[t.head] = nil
	t.head++
	delete(t.byID, rec.GetRequestId())
	// Compact the backing array once the dead prefix dominates.
	if t.head > 1024 && t.head*2 > len(t.order) {
		n := copy(t.order, t.order[t.head:])
		clear(t.order[n:])
		t.order = t.order[:n]
		t.head = 0
	}
}

// evict drops records older than the retention window relative to now.
func (t *requestTable) evict(now int64, cfg Config) {
	cutoff := now - cfg.RequestRetentionMs
	for t.len() > 0 && t.order[t.head].GetAtMs() < cutoff {
		t.popFront()
	}
}

// records returns the live records in order (not cloned).
func (t *requestTable) records() []*internalpb.RequestRecord { return t.order[t.head:] }
