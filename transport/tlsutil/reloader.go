package tlsutil

import (
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"sync"
	"sync/atomic"
	"time"
)

// DefaultPollInterval is how often a Reloader looks at its files by default.
const DefaultPollInterval = 2 * time.Second

// Options configure a Reloader.
type Options struct {
	// Interval between two looks at the files' size and modification time
	// (a changed file is read and hashed; a changed hash is reloaded).
	// 0 means DefaultPollInterval; negative turns polling off (Reload only).
	Interval time.Duration
	// Check runs on every bundle before it is used (at start and on each
	// reload); an error refuses the bundle: NewReloader fails, a reload
	// keeps the previous bundle. Nil accepts any bundle that parses.
	Check func(*Bundle) error
	// Logger receives one line per reload and per refused reload; nil
	// discards.
	Logger *slog.Logger
}

// Reloader holds the current Bundle of a set of Files and replaces it when
// they change. Its configs (ServerConfig, ClientConfig) read the current
// bundle at every handshake. It is safe for concurrent use; Close stops
// its poller.
type Reloader struct {
	files Files
	opts  Options
	log   *slog.Logger

	cur atomic.Pointer[loaded]
	gen atomic.Uint64

	mu     sync.Mutex   // serialises reloads
	stamps [3]fileStamp // what the poller saw last
	failed bool         // the last reload attempt failed: retry at every tick

	stop      chan struct{}
	done      chan struct{}
	closeOnce sync.Once
}

// loaded is one bundle and the server config derived from it.
type loaded struct {
	b      *Bundle
	server *tls.Config
}

type fileStamp struct {
	size int64
	mod  time.Time
	ok   bool
}

// NewReloader loads files (an error names the file and starts nothing),
// applies opts.Check, and starts polling.
func NewReloader(files Files, opts Options) (*Reloader, error) {
	if opts.Interval == 0 {
		opts.Interval = DefaultPollInterval
	}
	r := &Reloader{files: files, opts: opts, log: opts.Logger, stop: make(chan struct{}), done: make(chan struct{})}
	if r.log == nil {
		r.log = slog.New(slog.DiscardHandler)
	}
	r.stamps = r.stat()
	b, err := r.load()
	if err != nil {
		return nil, err
	}
	r.install(b)
	if opts.Interval > 0 {
		go r.poll()
	} else {
		close(r.done)
	}
	return r, nil
}

// Files returns the files the reloader reads.
func (r *Reloader) Files() Files { return r.files }

// Current returns the bundle in use.
func (r *Reloader) Current() *Bundle { return r.cur.Load().b }

// Generation counts the bundles installed (1 after NewReloader); it grows
// by one with each reload that changed something.
func (r *Reloader) Generation() uint64 { return r.gen.Load() }

// Reload reads the files now. When they parse and pass the check and
// differ from the current bundle, the new bundle serves every later
// handshake; otherwise nothing changes and the error (naming the file)
// is returned.
func (r *Reloader) Reload() error {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.stamps = r.stat()
	return r.reloadLocked()
}

func (r *Reloader) reloadLocked() error {
	b, err := r.load()
	if err != nil {
		r.failed = true
		return err
	}
	r.failed = false
	if b.Hash == r.Current().Hash {
		return nil
	}
	r.install(b)
	r.log.Info("tls files reloaded", "cert", r.files.Cert, "subject", b.Leaf.Subject.CommonName,
		"not_after", b.Leaf.NotAfter.UTC().Format(time.RFC3339), "cas", len(b.CAs), "generation", r.Generation())
	return nil
}

// Close stops the poller. It is idempotent.
func (r *Reloader) Close() error {
	r.closeOnce.Do(func() {
		close(r.stop)
		<-r.done
	})
	return nil
}

func (r *Reloader) load() (*Bundle, error) {
	b, err := Load(r.files)
	if err != nil {
		return nil, err
	}
	if r.opts.Check != nil {
		if err := r.opts.Check(b); err != nil {
			return nil, fmt.Errorf("tls: certificate %s: %w", r.files.Cert, err)
		}
	}
	return b, nil
}

func (r *Reloader) install(b *Bundle) {
	srv := &tls.Config{
		MinVersion:   tls.VersionTLS13,
		Certificates: []tls.Certificate{b.Cert},
		ClientCAs:    b.Pool,
		ClientAuth:   tls.RequireAndVerifyClientCert,
		// gRPC needs ALPN h2; a config returned by GetConfigForClient
		// replaces the outer one, NextProtos included.
		NextProtos: []string{"h2"},
	}
	r.cur.Store(&loaded{b: b, server: srv})
	r.gen.Add(1)
}

// stat looks at the three files (size, modification time).
func (r *Reloader) stat() [3]fileStamp {
	var out [3]fileStamp
	for i, p := range []string{r.files.CA, r.files.Cert, r.files.Key} {
		if fi, err := os.Stat(p); err == nil {
			out[i] = fileStamp{size: fi.Size(), mod: fi.ModTime(), ok: true}
		}
	}
	return out
}

// poll reloads when a file's size or modification time changed since the
// last look, or at every tick after a failed attempt (a rotation writes
// the certificate and the key one after the other: the first look may see
// a certificate that does not match its key yet). Reading is cheap; the
// bundle is replaced only when the contents' hash changed.
func (r *Reloader) poll() {
	defer close(r.done)
	t := time.NewTicker(r.opts.Interval)
	defer t.Stop()
	for {
		select {
		case <-r.stop:
			return
		case <-t.C:
		}
		r.mu.Lock()
		st := r.stat()
		if st != r.stamps || r.failed {
			r.stamps = st
			if err := r.reloadLocked(); err != nil {
				r.log.Warn("tls files changed but were not reloaded; the previous ones stay in use", "err", err)
			}
		}
		r.mu.Unlock()
	}
}

// ServerConfig is the config of a node's listener: every handshake gets
// the current certificate and CA bundle (GetConfigForClient), and client
// certificates signed by that bundle are required.
func (r *Reloader) ServerConfig() *tls.Config {
	return &tls.Config{
		MinVersion: tls.VersionTLS13,
		NextProtos: []string{"h2"},
		GetConfigForClient: func(*tls.ClientHelloInfo) (*tls.Config, error) {
			return r.cur.Load().server, nil
		},
		GetCertificate: func(*tls.ClientHelloInfo) (*tls.Certificate, error) {
			return &r.cur.Load().b.Cert, nil
		},
	}
}

// ClientConfig is the config of a party that dials a node: it presents the
// current certificate (GetClientCertificate) and verifies the node's
// against the current CA bundle, requiring the server role and, when node
// is not nil and returns a name, that node's NodeSAN. node is called at
// each handshake, so a caller can learn later which node an address is.
//
// The standard verification is turned off (InsecureSkipVerify) only
// because it would use a fixed RootCAs; VerifyConnection, which crypto/tls
// calls on every handshake whatever InsecureSkipVerify says, does the full
// chain verification against the bundle in use at that moment instead.
func (r *Reloader) ClientConfig(node func() string) *tls.Config {
	return &tls.Config{
		MinVersion:         tls.VersionTLS13,
		InsecureSkipVerify: true, // see above: VerifyConnection verifies
		GetClientCertificate: func(*tls.CertificateRequestInfo) (*tls.Certificate, error) {
			return &r.cur.Load().b.Cert, nil
		},
		VerifyConnection: func(cs tls.ConnectionState) error {
			want := ""
			if node != nil {
				want = node()
			}
			return VerifyServer(cs, r.Current().Pool, want, time.Now())
		},
	}
}

// VerifyServer verifies the certificate a node presented in cs: chained to
// roots and valid at now for server auth, with the server role, and naming
// node unless node is "".
func VerifyServer(cs tls.ConnectionState, roots *x509.CertPool, node string, now time.Time) error {
	if len(cs.PeerCertificates) == 0 {
		return errors.New("tls: the server presented no certificate")
	}
	leaf := cs.PeerCertificates[0]
	inter := x509.NewCertPool()
	for _, c := range cs.PeerCertificates[1:] {
		inter.AddCert(c)
	}
	if _, err := leaf.Verify(x509.VerifyOptions{Roots: roots, Intermediates: inter, CurrentTime: now,
		KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth}}); err != nil {
		return fmt.Errorf("tls: server certificate (subject %q): %w", leaf.Subject.CommonName, err)
	}
	return CheckServerCert(leaf, node)
}

// IdentityFromState returns the identity of a peer whose certificate the
// local side verified (a node's listener verifies every client); false
// when there is no verified chain.
func IdentityFromState(cs tls.ConnectionState) (Identity, bool) {
	if len(cs.VerifiedChains) == 0 || len(cs.VerifiedChains[0]) == 0 {
		return Identity{}, false
	}
	return IdentityOf(cs.VerifiedChains[0][0]), true
}

// ServerCheck is the Check of a node's Reloader: its certificate must have
// the server role, name node, and chain to its own CA bundle now (so a
// node never serves a certificate its peers refuse).
func ServerCheck(node string) func(*Bundle) error {
	return func(b *Bundle) error {
		if err := CheckServerCert(b.Leaf, node); err != nil {
			return err
		}
		// A node serves with it and dials other nodes with it.
		for _, u := range []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth, x509.ExtKeyUsageClientAuth} {
			if err := b.Verify(time.Now(), u); err != nil {
				return fmt.Errorf("not valid against its own CA bundle: %w", err)
			}
		}
		return nil
	}
}

// ClientCheck is the Check of a client's Reloader: its certificate chains
// to its CA bundle now, for client auth.
func ClientCheck(b *Bundle) error {
	if err := b.Verify(time.Now(), x509.ExtKeyUsageClientAuth); err != nil {
		return fmt.Errorf("not valid against its own CA bundle: %w", err)
	}
	return nil
}
