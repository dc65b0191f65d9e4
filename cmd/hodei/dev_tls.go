package main

import (
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"

	"github.com/hodei-io/hodei/cluster"
	"github.com/hodei-io/hodei/transport/tlsutil"
)

// devPKI is the TLS material of `hodei dev --tls` (and `hodei bench --dev
// --tls`): the layout of `hodei tls init` in DATA/tls.
type devPKI struct {
	dir    string
	client tlsutil.Files
}

// makeDevPKI makes a CA, a certificate per peer, a client certificate and a
// gossip key in dir, unless dir already holds them (a dev cluster restarted
// on the same --data keeps its certificates).
func makeDevPKI(dir string, peers []cluster.Peer) (*devPKI, error) {
	p := &devPKI{dir: dir, client: tlsutil.Files{CA: filepath.Join(dir, "ca.pem"), Cert: filepath.Join(dir, "client.pem"), Key: filepath.Join(dir, "client-key.pem")}}
	if _, err := os.Stat(p.client.CA); err == nil {
		for _, peer := range peers {
			if _, err := os.Stat(p.node(peer.ID).Cert); err != nil {
				return nil, fmt.Errorf("dev --tls: %s exists but has no certificate for %s: %w", dir, peer.ID, err)
			}
		}
		return p, nil
	} else if !errors.Is(err, os.ErrNotExist) {
		return nil, err
	}
	ca, caKey, err := tlsutil.NewCA("Hodei dev CA", 0)
	if err != nil {
		return nil, err
	}
	w := &tlsWriter{dir: dir}
	w.add("ca.pem", ca.CertPEM, false)
	w.add("ca-key.pem", caKey, true)
	for _, peer := range peers {
		if err := w.leaf(ca, tlsutil.LeafRequest{Name: peer.ID, Server: true, Hosts: defaultHosts}, peer.ID); err != nil {
			return nil, err
		}
	}
	if err := w.leaf(ca, tlsutil.LeafRequest{Name: "dev"}, "client"); err != nil {
		return nil, err
	}
	w.add("gossip.key", []byte(tlsutil.NewGossipKey()+"\n"), true)
	if err := w.write(io.Discard); err != nil {
		return nil, err
	}
	return p, nil
}

func (p *devPKI) node(id string) tlsutil.Files {
	return tlsutil.Files{CA: filepath.Join(p.dir, "ca.pem"), Cert: filepath.Join(p.dir, id+".pem"), Key: filepath.Join(p.dir, id+"-key.pem")}
}

// apply turns TLS and gossip encryption on in a node's config.
func (p *devPKI) apply(cfg *cluster.Config) {
	cfg.TLS = p.node(cfg.NodeID)
	cfg.GossipKeyFile = filepath.Join(p.dir, "gossip.key")
}
