package main

import (
	"context"
	"fmt"
	"time"

	"github.com/hodei-io/hodei/client"
	"github.com/hodei-io/hodei/cluster"
)

// benchClients are the load generator's connections: one client.Client per
// target node (its own address first, the others for failover), and how a
// submitter picks one (--route):
//
//	first   every submitter uses the first node, which forwards what it does
//	        not lead (one extra gRPC hop per request it forwards)
//	spread  submitter g uses node g mod N (clients spread evenly, as behind a
//	        load balancer: with N nodes, about (N-1)/N of the requests are
//	        forwarded, whatever the shard count)
//	leader  --dev only: each request goes to the node that leads its tenant's
//	        shard (a shard-aware client: no forwarding)
//	client  the Go client's own leader routing (its default): like leader,
//	        from the shard map it learns from Status
type benchClients struct {
	route   string
	clients []*client.Client
	index   map[string]int // node address -> clients index
	nodes   []*cluster.Node
}

func newBenchClients(targets []string, route string, nodes []*cluster.Node) (*benchClients, error) {
	routing := client.RouteAny
	switch route {
	case "client":
		routing = client.RouteLeader
	case "first", "spread":
	case "leader":
		if len(nodes) == 0 {
			return nil, fmt.Errorf("--route leader needs --dev")
		}
	default:
		return nil, fmt.Errorf("--route must be client, first, spread or leader")
	}
	b := &benchClients{route: route, index: map[string]int{}, nodes: nodes}
	for i := range targets {
		addrs := append(append([]string(nil), targets[i:]...), targets[:i]...)
		c, err := client.New(client.Config{Addrs: addrs, Routing: routing, TLSFiles: clientTLSFiles, Token: benchToken})
		if err != nil {
			b.Close()
			return nil, err
		}
		b.clients = append(b.clients, c)
		b.index[targets[i]] = i
	}
	return b, nil
}

// main is the client for calls that are not submits (status).
func (b *benchClients) main() *client.Client { return b.clients[0] }

// pick returns the client submitter g uses for a job of tenant.
func (b *benchClients) pick(g int, tenant string) *client.Client {
	switch b.route {
	case "spread":
		return b.clients[g%len(b.clients)]
	case "leader":
		n := b.nodes[0]
		sh := cluster.ShardOf(tenant, n.ShardCount())
		if local, addr := n.LeaderOf(sh); local {
			return b.clients[0]
		} else if i, ok := b.index[addr]; ok {
			return b.clients[i]
		}
	}
	return b.clients[0]
}

func (b *benchClients) Close() {
	for _, c := range b.clients {
		c.Close()
	}
}

// waitBalanced waits (at most limit) until every shard has one leader and
// the nodes' leader counts differ by at most one, unchanged for settle: the
// meta leader moves one shard a second after start-up, and a measurement
// taken during those transfers mostly measures them.
func waitBalanced(ctx context.Context, nodes []*cluster.Node, settle, limit time.Duration) (string, error) {
	deadline := time.Now().Add(limit)
	var last string
	var since time.Time
	for {
		counts := make([]int, len(nodes))
		shards := map[uint32]int{}
		for i, n := range nodes {
			for _, s := range n.DebugStats().Shards {
				if s.Leader {
					counts[i]++
					shards[s.Shard]++
				}
			}
		}
		ok := len(nodes) > 0 && len(shards) == nodes[0].ShardCount()
		lo, hi := 1<<30, 0
		for _, c := range counts {
			lo, hi = min(lo, c), max(hi, c)
		}
		for _, c := range shards {
			ok = ok && c == 1
		}
		ok = ok && hi-lo <= 1
		cur := fmt.Sprint(counts)
		if !ok || cur != last {
			last, since = cur, time.Now()
		} else if time.Since(since) >= settle {
			return cur, nil
		}
		if time.Now().After(deadline) {
			return cur, fmt.Errorf("shard leadership not balanced within %v (leaders per node %s)", limit, cur)
		}
		select {
		case <-ctx.Done():
			return cur, ctx.Err()
		case <-time.After(50 * time.Millisecond):
		}
	}
}
