package cluster

import (
	"context"
	"fmt"
	"net"
	"net/netip"
	"time"

	"github.com/hodei-io/hodei/cluster/gossip"
)

// gossipView is what the node needs from gossip membership.
type gossipView interface {
	Alive(id string) bool
	DeadSince(id string) (time.Time, bool)
	// LogStoreFailing: the member gossips that its log store is failing
	// writes (storehealth.go).
	LogStoreFailing(id string) bool
	// LogStoreErrors: ... and a write of it failed in the last seconds.
	LogStoreErrors(id string) bool
}

func (n *Node) gossipAlive(id string) bool { return n.gossip.Alive(id) }

func (n *Node) gossipDeadSince(id string) (time.Time, bool) { return n.gossip.DeadSince(id) }

// memberGossip adapts cluster/gossip to gossipView.
type memberGossip struct{ g *gossip.Gossip }

// Alive: a member gossip has never heard of counts as alive (not yet joined).
func (m memberGossip) Alive(id string) bool {
	mem, ok := m.g.Member(id)
	return !ok || mem.State == gossip.Alive
}

func (m memberGossip) DeadSince(id string) (time.Time, bool) { return m.g.DeadSince(id) }

func (m memberGossip) LogStoreFailing(id string) bool {
	mem, ok := m.g.Member(id)
	return ok && mem.State == gossip.Alive && mem.Meta.LogStoreFailing
}

func (m memberGossip) LogStoreErrors(id string) bool {
	mem, ok := m.g.Member(id)
	return ok && mem.State == gossip.Alive && mem.Meta.LogStoreErrors
}

// gossipBindAddr picks the gossip address: cfg.GossipAddr, or, when empty,
// the gRPC listener's IP with a free port. Empty result disables gossip.
func gossipBindAddr(cfg Config, grpcAddr string) string {
	if cfg.GossipAddr != "" {
		return cfg.GossipAddr
	}
	host, _, err := net.SplitHostPort(grpcAddr)
	if err != nil {
		return ""
	}
	ip, err := netip.ParseAddr(host)
	if err != nil || ip.IsUnspecified() {
		return ""
	}
	return net.JoinHostPort(host, "0")
}

// deadNodeReclaim: a dead member's name may be taken by a new address
// after this long. A node restarted without --gossip binds a new port, and
// memberlist's default (0) refuses its name at the new address (NAME
// CONFLICT) until the old entry is reaped 30 s later — meanwhile the
// balancer counts the restarted node dead and moves no leadership to it.
const deadNodeReclaim = time.Second

// startGossip starts memberlist for this node. It runs before the Raft
// groups open, so that the meta leader's loops (which read n.gossip) never
// see it change; startGossipJoins starts joining once the groups exist.
func (n *Node) startGossip() error {
	bind := gossipBindAddr(n.cfg, n.addr)
	if bind == "" {
		n.cfg.Logger.Warn("gossip disabled: give --gossip ip:port (the gRPC address is not an IP literal)")
		return nil
	}
	g, err := gossip.Start(gossip.Config{Name: n.cfg.NodeID, BindAddr: bind, Meta: gossip.Meta{GRPCAddr: n.addr, Version: "dev"},
		DeadNodeReclaimTime: deadNodeReclaim, Logger: n.cfg.Logger.With("component", "gossip")})
	if err != nil {
		return fmt.Errorf("start gossip on %s: %w", bind, err)
	}
	n.gossipImpl = g
	n.gossip = memberGossip{g}
	return nil
}

// startGossipJoins starts the loop that joins the gossip of every member
// of the meta group (their gossip addresses come from their Status).
func (n *Node) startGossipJoins() {
	if n.gossipImpl == nil {
		return
	}
	ctx, cancel := context.WithCancel(context.Background())
	loopDone := make(chan struct{})
	// Close, Kill and New's failure path call gossipCancel before they shut
	// gossip down: waiting for the loop here means no Join is in flight
	// when memberlist shuts down (a Join racing Shutdown could still push
	// this node's alive state to a peer), and the failure path, which
	// never waits for n.wg, does not tear down what the loop uses under it.
	n.gossipCancel = func() {
		cancel()
		<-loopDone
	}
	n.wg.Add(1)
	go func() {
		defer n.wg.Done()
		defer close(loopDone)
		t := time.NewTicker(2 * time.Second)
		defer t.Stop()
		for {
			n.joinGossip(ctx)
			select {
			case <-ctx.Done():
				return
			case <-t.C:
			}
		}
	}()
}

// joinGossip joins the members of the meta configuration gossip does not know yet.
func (n *Node) joinGossip(ctx context.Context) {
	cf := n.meta.raft.GetConfiguration()
	if cf.Error() != nil {
		return
	}
	var addrs []string
	for _, srv := range cf.Configuration().Servers {
		if string(srv.ID) == n.cfg.NodeID {
			continue
		}
		if _, ok := n.gossipImpl.Member(string(srv.ID)); ok {
			continue
		}
		st, err := n.probe(ctx, string(srv.Address))
		if err == nil && st.GetGossipAddress() != "" {
			addrs = append(addrs, st.GetGossipAddress())
		}
	}
	if len(addrs) > 0 {
		if _, err := n.gossipImpl.Join(addrs); err != nil {
			n.cfg.Logger.Debug("gossip join", "err", err)
		}
	}
}

// stopGossip stops the join loop, then leaves the gossip cluster and shuts
// memberlist down (Close waits for memberlist's goroutines).
func (n *Node) stopGossip() {
	if n.gossipCancel != nil {
		n.gossipCancel()
	}
	if n.gossipImpl != nil {
		n.gossipImpl.Close() // logs an incomplete leave itself
	}
}
