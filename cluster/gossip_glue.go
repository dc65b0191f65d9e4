package cluster

import (
	"context"
	"errors"
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

// gossipAddrs picks the gossip bind and advertise addresses (both
// "ip:port"; advertise "" means the bound address, or an interface address
// memberlist picks when the bind IP is unspecified).
//
//   - bind: cfg.GossipAddr, else the gRPC listener's IP with a free port
//     (peers learn the port from the node's Status, so any port works).
//   - advertise: cfg.GossipAdvertise, else, when the bind IP is unspecified
//     (0.0.0.0, as in containers), the host of the advertised gRPC address
//     (the name other nodes already use to reach this one, "n1" in compose,
//     the pod's DNS name on Kubernetes) resolved to an IP, with the bound
//     port. A host name that does not resolve is an error at start: gossip
//     silently advertising the wrong address would leave dead-node
//     detection off without anyone noticing.
func gossipAddrs(ctx context.Context, cfg Config, listenAddr, advertisedGRPC string, resolve resolveFunc) (bind, advertise string, err error) {
	bind = cfg.GossipAddr
	if bind == "" {
		host, _, err := net.SplitHostPort(listenAddr)
		if err != nil {
			return "", "", fmt.Errorf("gossip: listener address %q: %v", listenAddr, err)
		}
		bind = net.JoinHostPort(host, "0")
	}
	bh, _, err := net.SplitHostPort(bind)
	if err != nil {
		return "", "", fmt.Errorf("--gossip %q: want ip:port: %v", bind, err)
	}
	if cfg.GossipAdvertise != "" {
		adv, err := resolveHostPort(ctx, cfg.GossipAdvertise, resolve)
		if err != nil {
			return "", "", fmt.Errorf("--gossip-advertise %q: %w", cfg.GossipAdvertise, err)
		}
		return bind, adv, nil
	}
	if bh != "" {
		if ip, err := netip.ParseAddr(bh); err != nil || !ip.IsUnspecified() {
			return bind, "", nil // a specific bind address is its own advertise address
		}
	}
	host, _, err := net.SplitHostPort(advertisedGRPC)
	if err != nil {
		return bind, "", nil
	}
	if ip, err := netip.ParseAddr(host); err == nil && ip.IsUnspecified() {
		return bind, "", nil // nothing better known: memberlist picks an interface address
	}
	adv, err := resolveHostPort(ctx, net.JoinHostPort(host, "0"), resolve)
	if err != nil {
		return "", "", fmt.Errorf("gossip advertise address from the gRPC address %q: %w (give --gossip-advertise ip:port)", advertisedGRPC, err)
	}
	return bind, adv, nil
}

// resolveFunc resolves a host name to its IP addresses.
type resolveFunc func(ctx context.Context, host string) ([]netip.Addr, error)

func defaultResolve(ctx context.Context, host string) ([]netip.Addr, error) {
	return net.DefaultResolver.LookupNetIP(ctx, "ip", host)
}

// resolveHostPort turns "host:port" into "ip:port": an IP literal is kept;
// a name is resolved (its first IPv4 address, else its first address),
// retrying until ctx ends, since a container's or a pod's own DNS record
// may appear a moment after it starts.
func resolveHostPort(ctx context.Context, hostport string, resolve resolveFunc) (string, error) {
	host, port, err := net.SplitHostPort(hostport)
	if err != nil {
		return "", err
	}
	if host == "" {
		return "", errors.New("host is required")
	}
	if ip, err := netip.ParseAddr(host); err == nil {
		if ip.IsUnspecified() {
			return "", errors.New("an unspecified IP cannot be advertised")
		}
		return hostport, nil
	}
	for {
		ips, err := resolve(ctx, host)
		if err == nil && len(ips) > 0 {
			pick := ips[0]
			for _, ip := range ips {
				if ip.Unmap().Is4() {
					pick = ip.Unmap()
					break
				}
			}
			return net.JoinHostPort(pick.String(), port), nil
		}
		if err == nil {
			err = errors.New("no addresses")
		}
		select {
		case <-ctx.Done():
			return "", fmt.Errorf("resolve %s: %w", host, err)
		case <-time.After(500 * time.Millisecond):
		}
	}
}

// deadNodeReclaim: a dead member's name may be taken by a new address
// after this long. A node restarted without --gossip binds a new port, and
// memberlist's default (0) refuses its name at the new address (NAME
// CONFLICT) until the old entry is reaped 30 s later — meanwhile the
// balancer counts the restarted node dead and moves no leadership to it.
const deadNodeReclaim = time.Second

// gossipResolveTimeout bounds the wait for the advertised host name to
// resolve at start.
const gossipResolveTimeout = 30 * time.Second

// startGossip starts memberlist for this node. It runs before the Raft
// groups open, so that the meta leader's loops (which read n.gossip) never
// see it change; startGossipJoins starts joining once the groups exist.
func (n *Node) startGossip(keys [][]byte) error {
	ctx, cancel := context.WithTimeout(context.Background(), gossipResolveTimeout)
	defer cancel()
	bind, adv, err := gossipAddrs(ctx, n.cfg, n.lis.Addr().String(), n.addr, defaultResolve)
	if err != nil {
		return err
	}
	g, err := gossip.Start(gossip.Config{Name: n.cfg.NodeID, BindAddr: bind, AdvertiseAddr: adv, Meta: gossip.Meta{GRPCAddr: n.addr, Version: "dev"},
		DeadNodeReclaimTime: deadNodeReclaim, Logger: n.cfg.Logger, Keys: keys})
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
