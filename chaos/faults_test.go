package chaos

import (
	"math/rand/v2"
	"testing"
)

// Partitions are planned over the current members only: after a membership
// fault the members are not slots 1..n.
func TestPartitionPlansUseMembersOnly(t *testing.T) {
	c := &Cluster{}
	for i := 1; i <= 4; i++ {
		c.Nodes = append(c.Nodes, &Node{Index: i, Member: i != 2, Proc: &Proc{}})
	}
	members := c.Members()
	if len(members) != 3 {
		t.Fatalf("members = %d", len(members))
	}
	for seed := uint64(0); seed < 20; seed++ {
		f := &Faults{c: c, rng: rand.New(rand.NewPCG(seed, 1))}
		for _, kind := range []string{FaultPartitionLeader, FaultPartitionMajority, FaultPartitionRing} {
			p := f.partition(kind, members[0], members)
			if len(p.cut) == 0 {
				t.Fatalf("%s: nothing cut", kind)
			}
			for _, pair := range p.cut {
				if pair[0] == 2 || pair[1] == 2 || pair[0] == pair[1] {
					t.Fatalf("%s (seed %d): cut %v involves a non-member or a self link: %v", kind, seed, pair, p.cut)
				}
			}
		}
	}
	if s := c.Spare(); s == nil || s.Index != 2 {
		t.Fatalf("spare = %+v", s)
	}
}
