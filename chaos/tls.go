package chaos

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"sync"

	"github.com/hodei-io/hodei/transport/tlsutil"
)

// PKI is the TLS material of a chaos run with --tls: a CA, a client
// certificate for the harness and the workers, a gossip key, and a node
// certificate per node id, issued when the id first starts (membership
// faults start nodes with new ids).
type PKI struct {
	dir string
	ca  *tlsutil.CA

	mu sync.Mutex // serialises Node (the faults' goroutines start nodes)
}

// NewPKI makes the CA, the client certificate and the gossip key in dir.
func NewPKI(dir string) (*PKI, error) {
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return nil, err
	}
	ca, caKey, err := tlsutil.NewCA("Hodei chaos CA", 0)
	if err != nil {
		return nil, err
	}
	cert, key, err := ca.Issue(tlsutil.LeafRequest{Name: "chaos"})
	if err != nil {
		return nil, err
	}
	p := &PKI{dir: dir, ca: ca}
	files := []tlsutil.OutFile{
		{Path: filepath.Join(dir, "ca.pem"), Data: ca.CertPEM, Mode: 0o644},
		{Path: filepath.Join(dir, "ca-key.pem"), Data: caKey, Mode: 0o600},
		{Path: p.Client().Cert, Data: cert, Mode: 0o644},
		{Path: p.Client().Key, Data: key, Mode: 0o600},
		{Path: p.GossipKeyFile(), Data: []byte(tlsutil.NewGossipKey() + "\n"), Mode: 0o600},
	}
	if err := tlsutil.WriteFiles(files); err != nil {
		return nil, err
	}
	return p, nil
}

// Client is the files of the harness's clients and of the workers.
func (p *PKI) Client() tlsutil.Files {
	return tlsutil.Files{CA: filepath.Join(p.dir, "ca.pem"), Cert: filepath.Join(p.dir, "client.pem"), Key: filepath.Join(p.dir, "client-key.pem")}
}

// GossipKeyFile is the gossip keyring file of every node.
func (p *PKI) GossipKeyFile() string { return filepath.Join(p.dir, "gossip.key") }

// Node returns node id's files, issuing its certificate the first time.
func (p *PKI) Node(id string) (tlsutil.Files, error) {
	p.mu.Lock()
	defer p.mu.Unlock()
	f := tlsutil.Files{CA: filepath.Join(p.dir, "ca.pem"), Cert: filepath.Join(p.dir, id+".pem"), Key: filepath.Join(p.dir, id+"-key.pem")}
	if _, err := os.Stat(f.Cert); err == nil {
		return f, nil
	} else if !errors.Is(err, os.ErrNotExist) {
		return f, err
	}
	cert, key, err := p.ca.Issue(tlsutil.LeafRequest{Name: id, Server: true, Hosts: []string{"localhost", "127.0.0.1"}})
	if err != nil {
		return f, fmt.Errorf("certificate for %s: %w", id, err)
	}
	return f, tlsutil.WriteFiles([]tlsutil.OutFile{{Path: f.Key, Data: key, Mode: 0o600}, {Path: f.Cert, Data: cert, Mode: 0o644}})
}

// ServerArgs are the TLS flags of node id's server process.
func (p *PKI) ServerArgs(id string) ([]string, error) {
	f, err := p.Node(id)
	if err != nil {
		return nil, err
	}
	return []string{"--tls-ca", f.CA, "--tls-cert", f.Cert, "--tls-key", f.Key, "--gossip-key-file", p.GossipKeyFile()}, nil
}

// ClientArgs are the TLS flags of a worker process.
func (p *PKI) ClientArgs() []string {
	f := p.Client()
	return []string{"--tls-ca", f.CA, "--tls-cert", f.Cert, "--tls-key", f.Key}
}

// clientTLS is the files the harness's clients use (none without TLS).
func (c *Cluster) clientTLS() tlsutil.Files {
	if c.cfg.TLS == nil {
		return tlsutil.Files{}
	}
	return c.cfg.TLS.Client()
}
