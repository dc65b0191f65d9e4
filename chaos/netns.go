package chaos

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"
)

// Network gives every server node its own Linux network namespace so that
// links between nodes can be cut (partitions). Layout:
//
//	root ns (harness, clients, workers) --veth-- hub ns [bridge] --veth-- node ns n1..nN
//
// The bridge lives in a namespace of its own so that the host's firewall
// (for example Docker's FORWARD DROP policy with br_netfilter) never sees the
// traffic. Addresses come from a private /24 that exists only inside these
// namespaces and one veth end in the root namespace. A link between two nodes
// is cut with blackhole routes in both namespaces (no iptables); the harness
// keeps reaching every node, like a client outside the partition.
type Network struct {
	prefix  string // namespace name prefix: hodeichaos-<pid>
	ifp     string // interface name prefix: hc<hex pid>
	subnet  string // "10.213.X"
	n       int
	mu      sync.Mutex
	cut     map[[2]int]bool
	created []string // namespaces to delete
	rootIf  string
}

const nsPrefix = "hodeichaos-"

func ipCmd(ctx context.Context, args ...string) error {
	ctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	out, err := exec.CommandContext(ctx, "ip", args...).CombinedOutput()
	if err != nil {
		return fmt.Errorf("ip %s: %v: %s", strings.Join(args, " "), err, strings.TrimSpace(string(out)))
	}
	return nil
}

// NetnsSupported reports whether this host can create namespaces and veths.
func NetnsSupported() error {
	if os.Geteuid() != 0 {
		return errors.New("network namespaces need root")
	}
	if _, err := exec.LookPath("ip"); err != nil {
		return errors.New("the ip command (iproute2) is not installed")
	}
	name := fmt.Sprintf("%sprobe-%d", nsPrefix, os.Getpid())
	if err := ipCmd(context.Background(), "netns", "add", name); err != nil {
		return err
	}
	return ipCmd(context.Background(), "netns", "del", name)
}

// CleanupStale removes namespaces and links left behind by harness runs
// whose process is gone (a run killed with SIGKILL cannot clean up).
func CleanupStale() {
	ents, err := os.ReadDir("/var/run/netns")
	if err != nil {
		return
	}
	for _, e := range ents {
		name := e.Name()
		if !strings.HasPrefix(name, nsPrefix) {
			continue
		}
		rest := strings.TrimPrefix(name, nsPrefix)
		pidStr, _, _ := strings.Cut(rest, "-")
		pid, err := strconv.Atoi(pidStr)
		if err != nil || pid == os.Getpid() {
			continue
		}
		if syscall.Kill(pid, 0) == nil {
			continue // still running
		}
		_ = ipCmd(context.Background(), "netns", "del", name)
		_ = ipCmd(context.Background(), "link", "del", fmt.Sprintf("hc%xr", pid))
	}
}

// NewNetwork creates the hub and n node namespaces.
func NewNetwork(ctx context.Context, n int) (_ *Network, err error) {
	pid := os.Getpid()
	nw := &Network{
		prefix: fmt.Sprintf("%s%d", nsPrefix, pid),
		ifp:    fmt.Sprintf("hc%x", pid),
		subnet: fmt.Sprintf("10.213.%d", pid%250+1),
		n:      n,
		cut:    map[[2]int]bool{},
	}
	defer func() {
		if err != nil {
			nw.Close()
		}
	}()
	hub := nw.prefix + "-hub"
	steps := [][]string{
		{"netns", "add", hub},
		{"-n", hub, "link", "set", "lo", "up"},
		{"-n", hub, "link", "add", "br0", "type", "bridge"},
		{"-n", hub, "link", "set", "br0", "up"},
	}
	for _, s := range steps {
		if err := ipCmd(ctx, s...); err != nil {
			return nil, err
		}
		if s[0] == "netns" {
			nw.created = append(nw.created, hub)
		}
	}
	// root side: harness, clients and workers reach every node through it
	nw.rootIf = nw.ifp + "r"
	for _, s := range [][]string{
		{"link", "add", nw.rootIf, "type", "veth", "peer", "name", nw.ifp + "rb"},
		{"link", "set", nw.ifp + "rb", "netns", hub},
		{"-n", hub, "link", "set", nw.ifp + "rb", "master", "br0", "up"},
		{"addr", "add", nw.subnet + ".1/24", "dev", nw.rootIf},
		{"link", "set", nw.rootIf, "up"},
	} {
		if err := ipCmd(ctx, s...); err != nil {
			return nil, err
		}
	}
	for i := 1; i <= n; i++ {
		ns := nw.NS(i)
		in, out := fmt.Sprintf("%sn%d", nw.ifp, i), fmt.Sprintf("%sn%db", nw.ifp, i)
		if err := ipCmd(ctx, "netns", "add", ns); err != nil {
			return nil, err
		}
		nw.created = append(nw.created, ns)
		for _, s := range [][]string{
			{"-n", ns, "link", "set", "lo", "up"},
			{"link", "add", in, "type", "veth", "peer", "name", out},
			{"link", "set", out, "netns", hub},
			{"-n", hub, "link", "set", out, "master", "br0", "up"},
			{"link", "set", in, "netns", ns},
			{"-n", ns, "addr", "add", nw.IP(i) + "/24", "dev", in},
			{"-n", ns, "link", "set", in, "up"},
		} {
			if err := ipCmd(ctx, s...); err != nil {
				return nil, err
			}
		}
	}
	return nw, nil
}

// NS is the namespace of node i (1-based).
func (nw *Network) NS(i int) string { return fmt.Sprintf("%s-n%d", nw.prefix, i) }

// IP is the address of node i (1-based).
func (nw *Network) IP(i int) string { return fmt.Sprintf("%s.%d", nw.subnet, 10+i) }

// Cut blocks traffic between nodes i and j in both directions.
func (nw *Network) Cut(ctx context.Context, i, j int) error {
	nw.mu.Lock()
	defer nw.mu.Unlock()
	if i > j {
		i, j = j, i
	}
	if nw.cut[[2]int{i, j}] {
		return nil
	}
	if err := ipCmd(ctx, "-n", nw.NS(i), "route", "add", "blackhole", nw.IP(j)+"/32"); err != nil {
		return err
	}
	nw.cut[[2]int{i, j}] = true
	return ipCmd(ctx, "-n", nw.NS(j), "route", "add", "blackhole", nw.IP(i)+"/32")
}

// HealAll restores every cut link.
func (nw *Network) HealAll(ctx context.Context) error {
	nw.mu.Lock()
	defer nw.mu.Unlock()
	var errs []error
	for p := range nw.cut {
		for _, d := range [][2]int{{p[0], p[1]}, {p[1], p[0]}} {
			err := ipCmd(ctx, "-n", nw.NS(d[0]), "route", "del", "blackhole", nw.IP(d[1])+"/32")
			if err != nil && !strings.Contains(err.Error(), "No such process") {
				errs = append(errs, err)
			}
		}
		delete(nw.cut, p)
	}
	return errors.Join(errs...)
}

// Close deletes every namespace and link it created. Safe to call twice.
func (nw *Network) Close() {
	ctx := context.Background()
	for i := len(nw.created) - 1; i >= 0; i-- {
		_ = ipCmd(ctx, "netns", "del", nw.created[i])
	}
	nw.created = nil
	if nw.rootIf != "" {
		_ = ipCmd(ctx, "link", "del", nw.rootIf) // usually gone with its peer already
		nw.rootIf = ""
	}
}
