// Package gossip is a thin wrapper over hashicorp/memberlist that gossips
// each Hodei node's identity: its unique, stable name, its gossip address
// and its Meta (gRPC address, version and whether its log store is failing).
//
// On top of memberlist it adds:
//   - versioned, size-checked metadata whose decoding never panics; nodes
//     whose metadata does not decode are refused (alive delegate);
//   - name uniqueness: a join that would bring in a second node with the
//     same name at a different address is refused on both sides and Join
//     returns an error wrapping ErrNameConflict (merge delegate); conflicts
//     detected later through gossip are logged at error level;
//   - a member table that keeps dead and left members (memberlist forgets
//     them) with the time of their last state change, so callers can remove
//     nodes that have been dead for long (DeadSince);
//   - Left vs Dead: memberlist v0.7.0 does not tell its event delegate
//     whether a node left or failed (hashicorp/memberlist#293), so Leave
//     first gossips a "leaving" flag in the node's metadata and only then
//     calls memberlist's Leave; a node that disappears after announcing it
//     is reported Left, otherwise Dead;
//   - non-blocking, coalescing subscriptions (see Subscribe).
package gossip

import (
	"errors"
	"fmt"
	"log"
	"log/slog"
	"net"
	"net/netip"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/hashicorp/memberlist"
)

// ErrNameConflict is wrapped by Join's error when another node already uses
// this node's name (or the join would merge two nodes of one name).
var ErrNameConflict = errors.New("gossip: node name conflict")

// ErrClosed is returned by operations on a closed Gossip.
var ErrClosed = errors.New("gossip: closed")

// State of a member as seen by the local node.
type State int

const (
	Alive State = iota
	// Suspect is part of the model but memberlist v0.7.0 does not expose
	// suspicion to its delegates, so members are never reported Suspect;
	// they go from Alive straight to Dead when the suspicion times out.
	Suspect
	Dead
	Left
)

func (s State) String() string {
	switch s {
	case Alive:
		return "alive"
	case Suspect:
		return "suspect"
	case Dead:
		return "dead"
	case Left:
		return "left"
	}
	return "State(" + strconv.Itoa(int(s)) + ")"
}

// Member is one node as seen by the local node.
type Member struct {
	Name       string
	GossipAddr string // host:port the member gossips on (its advertise address)
	Meta       Meta
	State      State
	Since      time.Time // when the member entered State (local clock)
}

// Config configures a Gossip. Zero timing fields keep the defaults of
// memberlist.DefaultLANConfig().
type Config struct {
	// Name is the node's unique, stable id (memberlist node name).
	Name string
	// BindAddr is "ip:port" to listen on for gossip, TCP and UDP on the same
	// port. The host must be an IP literal (an empty host means all
	// interfaces). Port 0 picks a port that is free for both TCP and UDP.
	BindAddr string
	// AdvertiseAddr is "ip:port" other members use to reach this node.
	// Empty means the bound address (with the actual port when BindAddr's
	// port is 0); a port of 0 means the bound port.
	AdvertiseAddr string
	Meta          Meta
	// Logger receives memberlist's log output and this package's own
	// messages. Nil means slog.Default().
	Logger *slog.Logger

	ProbeInterval    time.Duration
	ProbeTimeout     time.Duration
	GossipInterval   time.Duration
	SuspicionMult    int
	PushPullInterval time.Duration
	TCPTimeout       time.Duration
	// DeadNodeReclaimTime lets a dead node's name be taken by a new address
	// after this long (memberlist default 0: only after the dead node has
	// been reaped by memberlist, GossipToTheDeadTime = 30s on LAN).
	DeadNodeReclaimTime time.Duration

	// Keys encrypt and authenticate every gossip message (memberlist's
	// keyring, AES-GCM; keyring.go): the first key encrypts, every key is
	// tried to decrypt. Each is 16, 24 or 32 bytes. Empty: plaintext.
	Keys [][]byte
}

// Validate checks the configuration without binding anything.
func (c *Config) Validate() error {
	if c.Name == "" {
		return errors.New("gossip: Name is required")
	}
	if strings.ContainsAny(c.Name, " \t\r\n") {
		return fmt.Errorf("gossip: Name %q contains whitespace", c.Name)
	}
	if _, _, err := splitIPPort("BindAddr", c.BindAddr, true); err != nil {
		return err
	}
	if c.AdvertiseAddr != "" {
		ip, _, err := splitIPPort("AdvertiseAddr", c.AdvertiseAddr, false)
		if err != nil {
			return err
		}
		if ip.IsUnspecified() {
			return fmt.Errorf("gossip: AdvertiseAddr %q: unspecified IP cannot be advertised", c.AdvertiseAddr)
		}
	}
	if _, err := EncodeMeta(c.Meta); err != nil {
		return err
	}
	for _, d := range []struct {
		n string
		v time.Duration
	}{
		{"ProbeInterval", c.ProbeInterval}, {"ProbeTimeout", c.ProbeTimeout},
		{"GossipInterval", c.GossipInterval}, {"PushPullInterval", c.PushPullInterval},
		{"TCPTimeout", c.TCPTimeout}, {"DeadNodeReclaimTime", c.DeadNodeReclaimTime},
	} {
		if d.v < 0 {
			return fmt.Errorf("gossip: %s must not be negative", d.n)
		}
	}
	if c.SuspicionMult < 0 {
		return errors.New("gossip: SuspicionMult must not be negative")
	}
	return validateKeys(c.Keys)
}

// splitIPPort parses "ip:port". With emptyHostOK an empty host means the
// unspecified IPv4 address.
func splitIPPort(field, addr string, emptyHostOK bool) (netip.Addr, int, error) {
	host, portStr, err := net.SplitHostPort(addr)
	if err != nil {
		return netip.Addr{}, 0, fmt.Errorf("gossip: %s %q: %v", field, addr, err)
	}
	port, err := strconv.ParseUint(portStr, 10, 16)
	if err != nil {
		return netip.Addr{}, 0, fmt.Errorf("gossip: %s %q: bad port", field, addr)
	}
	if host == "" {
		if !emptyHostOK {
			return netip.Addr{}, 0, fmt.Errorf("gossip: %s %q: host is required", field, addr)
		}
		return netip.IPv4Unspecified(), int(port), nil
	}
	ip, err := netip.ParseAddr(host)
	if err != nil {
		// memberlist's transport silently binds all interfaces for a
		// non-IP host, so refuse host names instead of surprising anyone.
		return netip.Addr{}, 0, fmt.Errorf("gossip: %s %q: host must be an IP address", field, addr)
	}
	return ip.Unmap(), int(port), nil
}

type memberRec struct {
	Member
	leaving bool // last metadata carried the leaving flag
}

// Gossip is a running memberlist instance. All methods are safe for
// concurrent use.
type Gossip struct {
	cfg  Config
	log  *slog.Logger
	ml   *memberlist.Memberlist
	name string
	// localAddr is the advertised gossip address, read once at start:
	// memberlist's LocalNode() is its live record, which it rewrites
	// without a lock its readers could take (on Leave, UpdateNode).
	localAddr string

	metaMu sync.Mutex
	meta   wireMeta

	mu      sync.Mutex
	members map[string]*memberRec
	subs    map[*subscriber]struct{}

	selfConflicts atomic.Int64 // merges refused because someone else holds our name

	opMu   sync.Mutex // serialises Leave/Close/UpdateMeta
	left   bool
	closed bool
	// down is set when Close starts shutting memberlist down. From then
	// on the delegates and memberlist's log output are ignored, so nothing
	// memberlist still runs (see goroutines.go) touches the member table,
	// the subscribers or the caller's logger once Close has returned.
	down atomic.Bool
	// label tags every goroutine memberlist runs for this Gossip.
	label string
	// shutdownWait bounds how long Close waits for those goroutines.
	shutdownWait time.Duration
	// keyring is memberlist's keyring (nil: gossip is not encrypted).
	keyring *memberlist.Keyring
	// nameStolen is set when gossip shows another node using our name;
	// Close then must not Leave, since the leave message would mark the
	// other node (same name) as left.
	nameStolen atomic.Bool
}

// Start binds the gossip ports and starts memberlist. The node knows only
// itself until Join.
func Start(cfg Config) (*Gossip, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	logger := cfg.Logger
	if logger == nil {
		logger = slog.Default()
	}
	logger = logger.With("component", "gossip") // the caller's logger names the node
	g := &Gossip{
		cfg:     cfg,
		log:     logger,
		name:    cfg.Name,
		meta:    wireMeta{Meta: cfg.Meta},
		members: make(map[string]*memberRec),
		subs:    make(map[*subscriber]struct{}),
		label:   fmt.Sprintf("%s#%d", cfg.Name, instanceSeq.Add(1)),
	}
	var (
		ml  *memberlist.Memberlist
		err error
	)
	// On a labelled goroutine, so that every goroutine memberlist and its
	// transport start can be waited for by Close.
	g.labelled(func() { ml, err = g.create() })
	if err != nil {
		// A memberlist that failed to start has shut itself down.
		g.down.Store(true)
		g.waitGoroutines(g.shutdownWait)
		return nil, err
	}
	g.ml = ml
	g.localAddr = ml.LocalNode().Address()
	return g, nil
}

// create binds the transport and creates the memberlist.
func (g *Gossip) create() (*memberlist.Memberlist, error) {
	cfg := g.cfg
	stdLog := newStdLogger(g.log, &g.down)
	bindIP, bindPort, _ := splitIPPort("BindAddr", cfg.BindAddr, true)

	// Bind ourselves rather than letting memberlist do it, so that an
	// explicit advertise port survives a bind port of 0 (memberlist would
	// overwrite it) and so that a failed Create never leaks the sockets.
	nt, err := newTransport(bindIP.String(), bindPort, stdLog)
	if err != nil {
		return nil, err
	}
	bindPort = nt.GetAutoBindPort()

	mc := memberlist.DefaultLANConfig()
	mc.Name = cfg.Name
	mc.BindAddr = bindIP.String()
	mc.BindPort = bindPort
	mc.AdvertisePort = bindPort
	if !bindIP.IsUnspecified() {
		mc.AdvertiseAddr = bindIP.String()
	} // else memberlist picks a private interface address
	if cfg.AdvertiseAddr != "" {
		ip, port, _ := splitIPPort("AdvertiseAddr", cfg.AdvertiseAddr, false)
		mc.AdvertiseAddr = ip.String()
		if port != 0 {
			mc.AdvertisePort = port
		}
	}
	mc.Transport = nt
	if err := g.setKeyring(mc); err != nil {
		_ = nt.Shutdown()
		return nil, err
	}
	mc.Logger = stdLog
	mc.LogOutput = nil
	mc.Delegate = (*delegate)(g)
	mc.Events = (*events)(g)
	mc.Conflict = (*conflicts)(g)
	mc.Alive = (*alives)(g)
	mc.Merge = (*merges)(g)
	if cfg.ProbeInterval > 0 {
		mc.ProbeInterval = cfg.ProbeInterval
	}
	if cfg.ProbeTimeout > 0 {
		mc.ProbeTimeout = cfg.ProbeTimeout
	}
	if cfg.GossipInterval > 0 {
		mc.GossipInterval = cfg.GossipInterval
	}
	if cfg.SuspicionMult > 0 {
		mc.SuspicionMult = cfg.SuspicionMult
	}
	if cfg.PushPullInterval > 0 {
		mc.PushPullInterval = cfg.PushPullInterval
	}
	if cfg.TCPTimeout > 0 {
		mc.TCPTimeout = cfg.TCPTimeout
	}
	if cfg.DeadNodeReclaimTime > 0 {
		mc.DeadNodeReclaimTime = cfg.DeadNodeReclaimTime
	}

	g.shutdownWait = shutdownWait(mc)

	ml, err := memberlist.Create(mc)
	if err != nil {
		_ = nt.Shutdown() // idempotent; Create may already have shut it down
		return nil, fmt.Errorf("gossip: start memberlist: %w", err)
	}
	g.log.Info("gossip started", "bind", net.JoinHostPort(bindIP.String(), strconv.Itoa(bindPort)), "advertise", ml.LocalNode().Address())
	return ml, nil
}

// shutdownWait is how long Close waits for memberlist's goroutines: the
// longest probe (ProbeInterval scaled by the awareness multiplier, which
// grows while probes fail, e.g. when peers go away), plus slack for a
// loaded machine. Push/pull and stream handlers are bounded by TCPTimeout
// but end at once when the peer is up or gone; only a peer that hangs
// mid-exchange can outlast this.
func shutdownWait(mc *memberlist.Config) time.Duration {
	return mc.ProbeInterval*time.Duration(max(mc.AwarenessMaxMultiplier, 1)) + mc.ProbeTimeout + time.Second
}

// newTransport binds TCP and UDP on the same port. With port 0 the kernel
// picks a free TCP port which may be taken for UDP, so retry like
// memberlist does.
func newTransport(ip string, port int, l *log.Logger) (*memberlist.NetTransport, error) {
	ntc := &memberlist.NetTransportConfig{BindAddrs: []string{ip}, BindPort: port, Logger: l}
	attempts := 1
	if port == 0 {
		attempts = 10
	}
	var err error
	for range attempts {
		var nt *memberlist.NetTransport
		if nt, err = memberlist.NewNetTransport(ntc); err == nil {
			return nt, nil
		}
		if !strings.Contains(err.Error(), "address already in use") {
			break
		}
	}
	return nil, fmt.Errorf("gossip: bind %s: %w", net.JoinHostPort(ip, strconv.Itoa(port)), err)
}

// LocalAddr is the gossip address other members use to reach this node.
func (g *Gossip) LocalAddr() string {
	return g.localAddr
}

// Join contacts the given gossip addresses ("ip:port", or "host:port" which
// memberlist resolves) and merges their view of the cluster. It returns how
// many addresses were contacted successfully. If a contacted cluster already
// has a node named like this one at another address, the merge is refused on
// both sides and the error wraps ErrNameConflict; the caller should not
// retry with the same name.
func (g *Gossip) Join(addrs []string) (int, error) {
	g.opMu.Lock()
	closed := g.closed || g.left
	g.opMu.Unlock()
	if closed {
		return 0, ErrClosed
	}
	if len(addrs) == 0 {
		return 0, errors.New("gossip: no addresses to join")
	}
	before := g.selfConflicts.Load()
	n, err := g.ml.Join(addrs)
	if g.selfConflicts.Load() != before {
		if err == nil {
			err = errors.New("refused by some members")
		}
		return n, fmt.Errorf("%w: name %q is already used by another node: %v", ErrNameConflict, g.name, err)
	}
	if err != nil {
		return n, fmt.Errorf("gossip: join %v: %w", addrs, err)
	}
	return n, nil
}

// Members returns every member seen since Start, including dead and left
// ones (until Forget), sorted by name. The local node is included.
func (g *Gossip) Members() []Member {
	g.mu.Lock()
	out := make([]Member, 0, len(g.members))
	for _, r := range g.members {
		out = append(out, r.Member)
	}
	g.mu.Unlock()
	slices.SortFunc(out, func(a, b Member) int { return strings.Compare(a.Name, b.Name) })
	return out
}

// Member returns one member by name.
func (g *Gossip) Member(name string) (Member, bool) {
	g.mu.Lock()
	defer g.mu.Unlock()
	r, ok := g.members[name]
	if !ok {
		return Member{}, false
	}
	return r.Member, true
}

// DeadSince reports since when the named member has been gone, i.e. Dead or
// Left (local clock). ok is false when the member is alive or unknown.
func (g *Gossip) DeadSince(name string) (time.Time, bool) {
	g.mu.Lock()
	defer g.mu.Unlock()
	r, ok := g.members[name]
	if !ok || (r.State != Dead && r.State != Left) {
		return time.Time{}, false
	}
	return r.Since, true
}

// Forget drops a Dead or Left member from the table (e.g. after it has been
// removed from the cluster). It reports whether the member was dropped. If
// memberlist still gossips about it, it may reappear.
func (g *Gossip) Forget(name string) bool {
	g.mu.Lock()
	defer g.mu.Unlock()
	r, ok := g.members[name]
	if !ok || (r.State != Dead && r.State != Left) {
		return false
	}
	delete(g.members, name)
	return true
}

// Subscribe returns a channel of member changes (join, metadata update,
// dead, left) and a cancel function that closes the channel. The channel
// first delivers the current state of every known member, then changes.
//
// Delivery never blocks memberlist. A subscriber that does not keep up
// loses intermediate states, never the latest one: undelivered events are
// coalesced per member name, so the subscriber eventually receives each
// changed member's newest state, in order per member. The channel is closed
// by cancel or Close. Cancel is idempotent and waits for the delivering
// goroutine to stop.
func (g *Gossip) Subscribe() (<-chan Member, func()) {
	g.mu.Lock()
	defer g.mu.Unlock()
	initial := make([]Member, 0, len(g.members))
	for _, r := range g.members {
		initial = append(initial, r.Member)
	}
	slices.SortFunc(initial, func(a, b Member) int { return strings.Compare(a.Name, b.Name) })
	s := newSubscriber(initial)
	if g.subs == nil { // closed
		s.stop()
		return s.out, func() {}
	}
	g.subs[s] = struct{}{}
	return s.out, func() {
		g.mu.Lock()
		delete(g.subs, s)
		g.mu.Unlock()
		s.stop()
	}
}

// LocalMeta returns this node's current metadata.
func (g *Gossip) LocalMeta() Meta {
	g.metaMu.Lock()
	defer g.metaMu.Unlock()
	return g.meta.Meta
}

// UpdateMeta changes this node's metadata and gossips it, waiting up to
// timeout for the broadcast to go out.
func (g *Gossip) UpdateMeta(m Meta, timeout time.Duration) error {
	if _, err := EncodeMeta(m); err != nil {
		return err
	}
	g.opMu.Lock()
	defer g.opMu.Unlock()
	if g.closed || g.left {
		return ErrClosed
	}
	g.metaMu.Lock()
	g.meta.Meta = m
	g.metaMu.Unlock()
	return g.ml.UpdateNode(positive(timeout))
}

func positive(d time.Duration) time.Duration {
	if d <= 0 {
		return time.Second // memberlist waits forever on 0
	}
	return d
}

// Leave announces that this node is leaving, so the others see it Left
// rather than Dead, and stops taking part in gossip. The Gossip must still
// be closed. Leave waits up to timeout (split between the two broadcasts).
func (g *Gossip) Leave(timeout time.Duration) error {
	g.opMu.Lock()
	defer g.opMu.Unlock()
	return g.leaveLocked(timeout)
}

func (g *Gossip) leaveLocked(timeout time.Duration) error {
	if g.closed {
		return ErrClosed
	}
	if g.left {
		return nil
	}
	g.left = true
	timeout = positive(timeout)
	deadline := time.Now().Add(timeout)
	// First gossip the leaving flag (memberlist's NotifyLeave cannot tell
	// left from dead), then the leave itself.
	g.metaMu.Lock()
	g.meta.leaving = true
	g.metaMu.Unlock()
	var errs []error
	if err := g.ml.UpdateNode(timeout / 2); err != nil {
		errs = append(errs, fmt.Errorf("announce leaving: %w", err))
	}
	if err := g.ml.Leave(positive(time.Until(deadline))); err != nil {
		errs = append(errs, fmt.Errorf("leave: %w", err))
	}
	if err := errors.Join(errs...); err != nil {
		g.log.Warn("leave incomplete; others may see this node dead instead of left", "err", err)
		return fmt.Errorf("gossip: %w", err)
	}
	g.log.Info("left the cluster")
	return nil
}

// closeLeaveTimeout bounds the graceful leave done by Close.
const closeLeaveTimeout = 2 * time.Second

// Close leaves the cluster (if Leave was not called, with a short timeout),
// shuts memberlist down, closes all subscription channels and waits (up to
// a few probe intervals) for every goroutine memberlist ran for this
// Gossip to end: memberlist's own Shutdown does not wait for them. Once
// Close has returned, no delegate callback touches this Gossip's state and
// nothing is logged any more. Idempotent.
func (g *Gossip) Close() error { return g.close(true) }

// close with leave=false shuts down without announcing: the others detect
// the node as failed (Dead). Used for tests that simulate crashes.
func (g *Gossip) close(leave bool) error {
	g.opMu.Lock()
	defer g.opMu.Unlock()
	if g.closed {
		return nil
	}
	var err error
	if leave && !g.left && !g.nameStolen.Load() {
		err = g.leaveLocked(closeLeaveTimeout)
	}
	g.closed = true
	g.down.Store(true)
	if serr := g.ml.Shutdown(); serr != nil && err == nil {
		err = serr
	}
	g.mu.Lock()
	subs := g.subs
	g.subs = nil
	g.mu.Unlock()
	for s := range subs {
		s.stop()
	}
	start := time.Now()
	if n := g.waitGoroutines(g.shutdownWait); n > 0 {
		g.log.Warn("memberlist goroutines still running after shutdown; giving up waiting", "goroutines", n, "waited", time.Since(start).Round(time.Millisecond))
	}
	return err
}

// Shutdown stops gossip without announcing a leave (as a crash would look).
// Like Close it waits for memberlist's goroutines.
func (g *Gossip) Shutdown() error { return g.close(false) }
