package cluster

import (
	"context"
	"errors"
	"fmt"
	"log/slog"

	"github.com/prometheus/client_golang/prometheus"
	"google.golang.org/grpc"

	"github.com/hodei-io/hodei/transport"
	"github.com/hodei-io/hodei/transport/tlsutil"
)

// TLSEnabled reports whether the config turns mutual TLS on (Config.TLS).
func (c Config) TLSEnabled() bool { return c.TLS.Enabled() }

// GossipEncrypted reports whether the config encrypts gossip.
func (c Config) GossipEncrypted() bool { return len(c.GossipKeys) > 0 || c.GossipKeyFile != "" }

// validateTLS checks the TLS fields without reading any file.
func (c Config) validateTLS() []error {
	var errs []error
	if err := c.TLS.Validate(); err != nil {
		errs = append(errs, err)
	}
	if c.TLS.Enabled() && c.NodeID != "" {
		// The certificate names the node in a DNS SAN (tlsutil.NodeSAN).
		if err := tlsutil.ValidNodeName(c.NodeID); err != nil {
			errs = append(errs, fmt.Errorf("with TLS, node id: %w", err))
		}
	}
	if len(c.GossipKeys) > 0 && c.GossipKeyFile != "" {
		errs = append(errs, errors.New("gossip keys and a gossip key file are exclusive"))
	}
	for i, k := range c.GossipKeys {
		if n := len(k); n != 16 && n != 24 && n != 32 {
			errs = append(errs, fmt.Errorf("gossip key %d is %d bytes, want 16, 24 or 32", i+1, n))
		}
	}
	return errs
}

// openTLS loads the node's TLS files (when configured) and checks that its
// certificate has the server role, names this node and chains to its own
// CA bundle: a node that would present a certificate its peers refuse
// does not start. Errors name the file.
func openTLS(cfg Config) (*tlsutil.Reloader, error) {
	if !cfg.TLS.Enabled() {
		return nil, nil
	}
	r, err := tlsutil.NewReloader(cfg.TLS, tlsutil.Options{
		Interval: cfg.TLSReloadInterval,
		Check:    tlsutil.ServerCheck(cfg.NodeID),
		Logger:   cfg.Logger.With("component", "tls"),
	})
	if err != nil {
		return nil, fmt.Errorf("node %s cannot serve TLS: %w", cfg.NodeID, err)
	}
	return r, nil
}

// gossipKeys returns the gossip keyring of the config (reading the key file).
func gossipKeys(cfg Config) ([][]byte, error) {
	if cfg.GossipKeyFile != "" {
		return tlsutil.ReadGossipKeys(cfg.GossipKeyFile)
	}
	return cfg.GossipKeys, nil
}

// tlsServerOptions are the node's gRPC server options for TLS (none without).
func (n *Node) tlsServerOptions() []grpc.ServerOption {
	if n.tls == nil {
		return nil
	}
	return transport.ServerTLS(n.tls)
}

// newPool makes the node's connection pool: mutual TLS to other nodes when
// TLS is on; extra are more dial options (the node's auth credential).
func (n *Node) newPool(extra ...grpc.DialOption) *transport.Pool {
	opts := append(n.cfg.peerDialOptions(), extra...)
	if n.tls == nil {
		return transport.NewPool(opts...)
	}
	return transport.NewSecurePool(transport.PeerTLS(n.tls), opts...)
}

// TLSEnabled reports whether the node serves mutual TLS.
func (n *Node) TLSEnabled() bool { return n.tls != nil }

// GossipEncrypted reports whether the node's gossip is encrypted.
func (n *Node) GossipEncrypted() bool { return n.gossipImpl != nil && n.gossipImpl.Encrypted() }

// TLSIdentity is the identity of the node's current certificate (false
// without TLS).
func (n *Node) TLSIdentity() (tlsutil.Identity, bool) {
	if n.tls == nil {
		return tlsutil.Identity{}, false
	}
	return tlsutil.IdentityOf(n.tls.Current().Leaf), true
}

// ReloadTLS reads the TLS files and the gossip key file again (the server
// calls it on SIGHUP; file changes are also picked up by polling). What
// does not load or does not pass the checks is refused and the previous
// files stay in use; the error says which file. New handshakes use the new
// certificate and CA bundle; open connections keep theirs.
func (n *Node) ReloadTLS() error {
	var errs []error
	if n.tls != nil {
		if err := n.tls.Reload(); err != nil {
			errs = append(errs, err)
		}
	}
	if n.cfg.GossipKeyFile != "" && n.gossipImpl != nil {
		keys, err := tlsutil.ReadGossipKeys(n.cfg.GossipKeyFile)
		if err == nil {
			err = n.gossipImpl.SetKeys(keys)
		}
		if err != nil {
			errs = append(errs, err)
		} else {
			n.cfg.Logger.Info("gossip keys reloaded", "file", n.cfg.GossipKeyFile, "keys", len(keys))
		}
	}
	return errors.Join(errs...)
}

// closeTLS stops the TLS files' poller (idempotent).
func (n *Node) closeTLS() {
	if n.tls != nil {
		n.tls.Close()
	}
}

// logSecurity says at start what the node protects: TLS, and whether
// gossip is encrypted (with TLS on and gossip in plaintext, anyone on the
// network can forge liveness, which drives balancing and automatic
// removal: worth a warning).
func (n *Node) logSecurity() {
	log := n.cfg.Logger
	switch {
	case n.tls == nil:
		log.Log(context.Background(), n.cfg.securityLevel(), "TLS is off: any process that reaches the gRPC port is trusted, and Raft traffic is plaintext")
	case !n.GossipEncrypted():
		id, _ := n.TLSIdentity()
		log.Warn("TLS is on but gossip is not encrypted (give --gossip-key-file): gossip messages can be read and forged on the network", "cert", id.Name)
	default:
		id, _ := n.TLSIdentity()
		log.Info("mutual TLS on, gossip encrypted", "cert", id.Name, "serial", id.Serial,
			"not_after", n.tls.Current().Leaf.NotAfter.UTC().Format("2006-01-02T15:04:05Z"))
	}
}

// securityLevel is the level of the "TLS is off" and "auth is off" lines.
func (c *Config) securityLevel() slog.Level {
	if c.SecurityWarnings {
		return slog.LevelWarn
	}
	return slog.LevelInfo
}

// registerTLSMetrics exports, with TLS on, when the node's certificate and
// the first CA of its bundle expire (alert before either passes: an
// expired certificate stops every new handshake) and how many reloads
// changed its files.
func (n *Node) registerTLSMetrics(reg prometheus.Registerer) {
	if n.tls == nil {
		return
	}
	reg.MustRegister(
		prometheus.NewGaugeFunc(prometheus.GaugeOpts{Name: "hodei_tls_cert_expiry_timestamp_seconds",
			Help: "When this node's TLS certificate expires (Unix time)."}, func() float64 {
			return float64(n.tls.Current().Leaf.NotAfter.Unix())
		}),
		prometheus.NewGaugeFunc(prometheus.GaugeOpts{Name: "hodei_tls_ca_expiry_timestamp_seconds",
			Help: "When the first CA of this node's TLS CA bundle expires (Unix time)."}, func() float64 {
			first := n.tls.Current().CAs[0].NotAfter
			for _, c := range n.tls.Current().CAs[1:] {
				if c.NotAfter.Before(first) {
					first = c.NotAfter
				}
			}
			return float64(first.Unix())
		}),
		prometheus.NewCounterFunc(prometheus.CounterOpts{Name: "hodei_tls_reloads_total",
			Help: "Reloads that installed changed TLS files (polling or SIGHUP)."}, func() float64 {
			return float64(n.tls.Generation() - 1)
		}),
	)
}
