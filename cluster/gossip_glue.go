package cluster

import "time"

// gossipView is what the node needs from gossip membership.
type gossipView interface {
	Alive(id string) bool
	DeadSince(id string) (time.Time, bool)
}

func (n *Node) gossipAlive(id string) bool { return n.gossip.Alive(id) }

func (n *Node) gossipDeadSince(id string) (time.Time, bool) { return n.gossip.DeadSince(id) }
