package gossip

import (
	"bytes"
	"fmt"
	"net"
	"time"

	"github.com/hashicorp/memberlist"
)

// The memberlist delegates are views of *Gossip. memberlist calls the event,
// conflict and alive delegates with its node lock held, so they must never
// call back into memberlist and must not block: they only touch g.mu and
// push to subscribers (non-blocking).
//
// Once Close has started (g.down), the event and conflict delegates do
// nothing and the merge delegate refuses: memberlist still runs goroutines
// and timers after its Shutdown (see goroutines.go), and suspicion timers
// may fire (and report a node dead) long after Close returned.

type (
	delegate  Gossip
	events    Gossip
	conflicts Gossip
	alives    Gossip
	merges    Gossip
)

// --- memberlist.Delegate ---

func (d *delegate) NodeMeta(limit int) []byte {
	g := (*Gossip)(d)
	g.metaMu.Lock()
	w := g.meta
	g.metaMu.Unlock()
	b, err := encodeMeta(w)
	if err != nil || len(b) > limit {
		// Validated at Start and UpdateMeta; never panic memberlist.
		g.log.Error("node metadata does not fit; gossiping empty metadata", "err", err, "limit", limit)
		b, _ = encodeMeta(wireMeta{leaving: w.leaving})
	}
	return b
}

func (d *delegate) NotifyMsg([]byte)                           {}
func (d *delegate) GetBroadcasts(overhead, limit int) [][]byte { return nil }
func (d *delegate) LocalState(join bool) []byte                { return nil }
func (d *delegate) MergeRemoteState(buf []byte, join bool)     {}

// --- memberlist.EventDelegate ---

func (e *events) NotifyJoin(n *memberlist.Node)   { (*Gossip)(e).observe(n, false) }
func (e *events) NotifyUpdate(n *memberlist.Node) { (*Gossip)(e).observe(n, false) }
func (e *events) NotifyLeave(n *memberlist.Node)  { (*Gossip)(e).observe(n, true) }

// observe records a memberlist event in the member table and publishes the
// member if anything visible changed.
func (g *Gossip) observe(n *memberlist.Node, gone bool) {
	if g.down.Load() {
		return
	}
	now := time.Now()
	w, err := decodeMeta(n.Meta)
	if err != nil && !gone {
		// The alive delegate refuses such nodes, so this is unexpected.
		g.log.Warn("member with undecodable metadata", "member", n.Name, "addr", n.Address(), "err", err)
	}
	g.mu.Lock()
	defer g.mu.Unlock()
	if g.subs == nil { // closed (checked again under the lock)
		return
	}
	r, ok := g.members[n.Name]
	if !ok {
		r = &memberRec{Member: Member{Name: n.Name}}
		g.members[n.Name] = r
	}
	prev := r.Member
	r.GossipAddr = n.Address()
	if err == nil {
		r.Meta = w.Meta
		r.leaving = w.leaving
	}
	var state State
	switch {
	case !gone:
		state = Alive
	case r.leaving:
		state = Left
	default:
		state = Dead
	}
	if !ok || state != prev.State {
		r.State = state
		r.Since = now
	}
	if ok && r.Member == prev {
		return // e.g. only the internal leaving flag changed
	}
	switch {
	case !ok || prev.State != r.State:
		g.log.Info("member "+r.State.String(), "member", r.Name, "addr", r.GossipAddr, "grpc", r.Meta.GRPCAddr, "version", r.Meta.Version)
	default:
		g.log.Debug("member updated", "member", r.Name, "addr", r.GossipAddr, "grpc", r.Meta.GRPCAddr, "version", r.Meta.Version)
	}
	for s := range g.subs {
		s.push(r.Member)
	}
}

// --- memberlist.ConflictDelegate ---

// NotifyConflict is called when gossip (not a join, which the merge
// delegate guards) reports a known name at another address. memberlist
// keeps the existing entry and ignores the newcomer.
func (c *conflicts) NotifyConflict(existing, other *memberlist.Node) {
	g := (*Gossip)(c)
	if g.down.Load() {
		return
	}
	if existing.Name == g.name {
		g.nameStolen.Store(true)
		g.log.Error("NAME CONFLICT: another node claims this node's name; names must be unique, stop one of them",
			"name", g.name, "ours", existing.Address(), "theirs", other.Address())
		return
	}
	g.log.Error("NAME CONFLICT: two nodes use the same name; ignoring the newcomer",
		"name", existing.Name, "existing", existing.Address(), "refused", other.Address())
}

// --- memberlist.AliveDelegate ---

// NotifyAlive refuses nodes whose metadata this version cannot decode.
func (a *alives) NotifyAlive(n *memberlist.Node) error {
	if _, err := decodeMeta(n.Meta); err != nil {
		return fmt.Errorf("node %s at %s: %w", n.Name, n.Address(), err)
	}
	return nil
}

// --- memberlist.MergeDelegate ---

// NotifyMerge runs on both sides of a join before any state is merged. It
// refuses the merge when the remote side knows a live node under a name we
// know as a live node at another address (including our own name), so a
// second node with a taken name never enters the cluster.
func (m *merges) NotifyMerge(peers []*memberlist.Node) error {
	g := (*Gossip)(m)
	if g.down.Load() {
		return ErrClosed
	}
	g.mu.Lock()
	defer g.mu.Unlock()
	for _, p := range peers {
		if p.State != memberlist.StateAlive && p.State != memberlist.StateSuspect {
			continue
		}
		r, ok := g.members[p.Name]
		if !ok || r.State != Alive {
			continue
		}
		if sameAddr(r.GossipAddr, p) {
			continue
		}
		if p.Name == g.name {
			g.selfConflicts.Add(1)
		}
		err := fmt.Errorf("name conflict: node %q is already alive at %s, refusing node %q at %s",
			p.Name, r.GossipAddr, p.Name, p.Address())
		g.log.Error("NAME CONFLICT: refusing to merge with a cluster that has a second node of the same name",
			"name", p.Name, "known", r.GossipAddr, "refused", p.Address())
		return err
	}
	return nil
}

func sameAddr(addr string, n *memberlist.Node) bool {
	host, port, err := net.SplitHostPort(addr)
	if err != nil {
		return false
	}
	ip := net.ParseIP(host)
	return ip != nil && bytes.Equal(ip.To16(), n.Addr.To16()) && port == fmt.Sprint(n.Port)
}
