package tlsutil

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"errors"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// pki is a test CA that writes the files of parties into a temp dir.
type pki struct {
	t   *testing.T
	dir string
	ca  *CA
}

func newPKI(t *testing.T, name string) *pki {
	t.Helper()
	ca, _, err := NewCA(name, 0)
	if err != nil {
		t.Fatal(err)
	}
	return &pki{t: t, dir: t.TempDir(), ca: ca}
}

// party writes a CA bundle (bundle, or this CA's certificate), and a
// leaf for req, and returns their files.
func (p *pki) party(file string, req LeafRequest, bundle ...[]byte) Files {
	p.t.Helper()
	cert, key, err := p.ca.Issue(req)
	if err != nil {
		p.t.Fatal(err)
	}
	if len(bundle) == 0 {
		bundle = [][]byte{p.ca.CertPEM}
	}
	f := Files{CA: filepath.Join(p.dir, file+"-ca.pem"), Cert: filepath.Join(p.dir, file+".pem"), Key: filepath.Join(p.dir, file+"-key.pem")}
	writeFile(p.t, f.CA, joinPEM(bundle...))
	writeFile(p.t, f.Cert, cert)
	writeFile(p.t, f.Key, key)
	return f
}

// rawParty issues tmpl as it is (for certificates Issue would not make).
func (p *pki) rawParty(file string, tmpl *x509.Certificate) Files {
	p.t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		p.t.Fatal(err)
	}
	tmpl.SerialNumber = serial()
	tmpl.NotBefore, tmpl.NotAfter = time.Now().Add(-time.Minute), time.Now().Add(time.Hour)
	tmpl.KeyUsage = x509.KeyUsageDigitalSignature
	der, err := x509.CreateCertificate(rand.Reader, tmpl, p.ca.Cert, key.Public(), p.ca.Key)
	if err != nil {
		p.t.Fatal(err)
	}
	keyPEM, err := encodeKey(key)
	if err != nil {
		p.t.Fatal(err)
	}
	f := Files{CA: filepath.Join(p.dir, file+"-ca.pem"), Cert: filepath.Join(p.dir, file+".pem"), Key: filepath.Join(p.dir, file+"-key.pem")}
	writeFile(p.t, f.CA, p.ca.CertPEM)
	writeFile(p.t, f.Cert, pemBlock("CERTIFICATE", der))
	writeFile(p.t, f.Key, keyPEM)
	return f
}

// reissue replaces the leaf of f with a new one signed by p's CA.
func (p *pki) reissue(f Files, req LeafRequest) {
	p.t.Helper()
	cert, key, err := p.ca.Issue(req)
	if err != nil {
		p.t.Fatal(err)
	}
	writeFile(p.t, f.Key, key)
	writeFile(p.t, f.Cert, cert)
}

func joinPEM(parts ...[]byte) []byte {
	var out []byte
	for _, p := range parts {
		out = append(out, p...)
	}
	return out
}

func writeFile(t *testing.T, path string, data []byte) {
	t.Helper()
	if err := WriteFileAtomic(path, data, 0o600); err != nil {
		t.Fatal(err)
	}
}

func reloader(t *testing.T, f Files, o Options) *Reloader {
	t.Helper()
	r, err := NewReloader(f, o)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { r.Close() })
	return r
}

// handshake runs a TLS handshake over an in-memory pipe, then the server
// writes one byte that the client reads (with TLS 1.3 the client finishes
// its handshake before the server has checked the client's certificate,
// so a refused client learns it on its first read). It returns the
// server's view of the client and both sides' errors.
func handshake(t *testing.T, srv, cli *tls.Config) (peer Identity, srvErr, cliErr error) {
	t.Helper()
	a, b := net.Pipe()
	deadline := time.Now().Add(10 * time.Second)
	a.SetDeadline(deadline)
	b.SetDeadline(deadline)
	done := make(chan struct{})
	go func() {
		defer close(done)
		defer a.Close()
		s := tls.Server(a, srv)
		if srvErr = s.Handshake(); srvErr != nil {
			return
		}
		peer, _ = IdentityFromState(s.ConnectionState())
		_, srvErr = s.Write([]byte{1})
	}()
	c := tls.Client(b, cli)
	cliErr = c.Handshake()
	if cliErr == nil {
		var buf [1]byte
		_, cliErr = c.Read(buf[:])
	}
	b.Close()
	<-done
	return peer, srvErr, cliErr
}

func wantOK(t *testing.T, srvErr, cliErr error) {
	t.Helper()
	if srvErr != nil || cliErr != nil {
		t.Fatalf("handshake failed: server %v, client %v", srvErr, cliErr)
	}
}

func wantRefused(t *testing.T, side string, srvErr, cliErr error, contains string) {
	t.Helper()
	if srvErr == nil && cliErr == nil {
		t.Fatalf("handshake succeeded; want it refused by the %s", side)
	}
	err := cliErr
	if side == "server" {
		err = srvErr
	}
	if err == nil || !strings.Contains(err.Error(), contains) {
		t.Fatalf("want the %s to refuse with %q; server: %v; client: %v", side, contains, srvErr, cliErr)
	}
}

func node(name string) func() string { return func() string { return name } }

func TestHandshakeRolesAndNames(t *testing.T) {
	p := newPKI(t, "ca")
	n1 := reloader(t, p.party("n1", LeafRequest{Name: "n1", Server: true}), Options{Check: ServerCheck("n1"), Interval: -1})
	n2 := reloader(t, p.party("n2", LeafRequest{Name: "n2", Server: true}), Options{Check: ServerCheck("n2"), Interval: -1})
	alice := reloader(t, p.party("alice", LeafRequest{Name: "alice"}), Options{Check: ClientCheck, Interval: -1})

	t.Run("client to node", func(t *testing.T) {
		peer, se, ce := handshake(t, n1.ServerConfig(), alice.ClientConfig(nil))
		wantOK(t, se, ce)
		if peer.Name != "alice" || peer.IsServer() || peer.Node != "" || len(peer.Roles) != 1 || peer.Roles[0] != RoleClient {
			t.Fatalf("server sees %+v, want client alice", peer)
		}
	})
	t.Run("node to node, name checked", func(t *testing.T) {
		peer, se, ce := handshake(t, n1.ServerConfig(), n2.ClientConfig(node("n1")))
		wantOK(t, se, ce)
		if !peer.IsServer() || peer.Node != "n2" || peer.Name != "n2" {
			t.Fatalf("n1 sees %+v, want server n2", peer)
		}
	})
	t.Run("node at an address known to be another node", func(t *testing.T) {
		_, se, ce := handshake(t, n1.ServerConfig(), n2.ClientConfig(node("n3")))
		wantRefused(t, "client", se, ce, "names another node")
		if !errors.Is(ce, ErrWrongNode) {
			t.Fatalf("client error %v, want ErrWrongNode", ce)
		}
	})
	t.Run("client certificate posing as a server", func(t *testing.T) {
		// alice's files served by a listener built without the server check.
		fake := reloader(t, alice.Files(), Options{Interval: -1})
		// Its usage is client auth only: chain verification refuses it.
		_, _, ce := handshake(t, fake.ServerConfig(), n2.ClientConfig(nil))
		if ce == nil || !strings.Contains(ce.Error(), "incompatible key usage") {
			t.Fatalf("a node dialing a client certificate: %v, want a key usage refusal", ce)
		}
		_, _, ce = handshake(t, fake.ServerConfig(), alice.ClientConfig(nil))
		if ce == nil || !strings.Contains(ce.Error(), "incompatible key usage") {
			t.Fatalf("a client dialing a client certificate: %v, want a key usage refusal", ce)
		}
		// A certificate some other CA tooling issued with both usages but
		// without the server role SAN: the role check refuses it.
		both := p.rawParty("both", &x509.Certificate{Subject: pkix.Name{CommonName: "n1"}, DNSNames: []string{"n1", "localhost"},
			ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth, x509.ExtKeyUsageClientAuth}})
		fake = reloader(t, both, Options{Interval: -1})
		_, _, ce = handshake(t, fake.ServerConfig(), n2.ClientConfig(node("n1")))
		if !errors.Is(ce, ErrNotServer) {
			t.Fatalf("a node dialing a certificate without the server role: %v, want ErrNotServer", ce)
		}
		_, _, ce = handshake(t, fake.ServerConfig(), alice.ClientConfig(nil))
		if !errors.Is(ce, ErrNotServer) {
			t.Fatalf("a client dialing a certificate without the server role: %v, want ErrNotServer", ce)
		}
		if _, err := NewReloader(both, Options{Check: ServerCheck("n1")}); !errors.Is(err, ErrNotServer) {
			t.Fatalf("a node started on a certificate without the server role: %v", err)
		}
	})
	t.Run("no client certificate", func(t *testing.T) {
		cli := &tls.Config{MinVersion: tls.VersionTLS13, RootCAs: n1.Current().Pool, ServerName: ServerRoleName}
		_, se, ce := handshake(t, n1.ServerConfig(), cli)
		wantRefused(t, "server", se, ce, "certificate")
	})
	t.Run("standard verification with ServerName server.hodei checks the role", func(t *testing.T) {
		// What a client that brings its own tls.Config does (client.Config.TLS).
		cli := &tls.Config{MinVersion: tls.VersionTLS13, RootCAs: n1.Current().Pool, ServerName: ServerRoleName,
			Certificates: []tls.Certificate{alice.Current().Cert}}
		_, se, ce := handshake(t, n1.ServerConfig(), cli)
		wantOK(t, se, ce)
		fake := reloader(t, alice.Files(), Options{Interval: -1})
		_, _, ce = handshake(t, fake.ServerConfig(), cli)
		if ce == nil {
			t.Fatal("standard verification accepted a client certificate as server.hodei")
		}
	})
}

func TestServerCheckRefusesAtStart(t *testing.T) {
	p := newPKI(t, "ca")
	client := p.party("c", LeafRequest{Name: "n1"}) // a client certificate named like a node
	_, err := NewReloader(client, Options{Check: ServerCheck("n1")})
	if !errors.Is(err, ErrNotServer) || !strings.Contains(err.Error(), client.Cert) {
		t.Fatalf("server started on a client certificate: %v", err)
	}
	other := p.party("n2", LeafRequest{Name: "n2", Server: true})
	if _, err := NewReloader(other, Options{Check: ServerCheck("n1")}); !errors.Is(err, ErrWrongNode) {
		t.Fatalf("n1 started on n2's certificate: %v", err)
	}
	expired := p.party("old", LeafRequest{Name: "n1", Server: true, NotBefore: time.Now().Add(-48 * time.Hour), NotAfter: time.Now().Add(-time.Hour)})
	if _, err := NewReloader(expired, Options{Check: ServerCheck("n1")}); err == nil || !strings.Contains(err.Error(), "expired") {
		t.Fatalf("n1 started on an expired certificate: %v", err)
	}
	foreign := newPKI(t, "other").party("n1", LeafRequest{Name: "n1", Server: true}, p.ca.CertPEM)
	if _, err := NewReloader(foreign, Options{Check: ServerCheck("n1")}); err == nil || !strings.Contains(err.Error(), "unknown authority") {
		t.Fatalf("n1 started on a certificate of another CA: %v", err)
	}
}

func TestValidityAndCA(t *testing.T) {
	p := newPKI(t, "ca")
	n1 := reloader(t, p.party("n1", LeafRequest{Name: "n1", Server: true}), Options{Check: ServerCheck("n1"), Interval: -1})
	good := reloader(t, p.party("good", LeafRequest{Name: "good"}), Options{Interval: -1})
	past := LeafRequest{Name: "x", NotBefore: time.Now().Add(-48 * time.Hour), NotAfter: time.Now().Add(-time.Hour)}
	future := LeafRequest{Name: "x", NotBefore: time.Now().Add(time.Hour), NotAfter: time.Now().Add(48 * time.Hour)}
	other := newPKI(t, "other")

	cases := []struct {
		name   string
		srv    *tls.Config
		cli    *tls.Config
		side   string
		reason string
	}{
		{"expired client", n1.ServerConfig(), reloader(t, p.party("c1", past), Options{Interval: -1}).ClientConfig(nil), "server", "expired"},
		{"not yet valid client", n1.ServerConfig(), reloader(t, p.party("c2", future), Options{Interval: -1}).ClientConfig(nil), "server", "not yet valid"},
		{"client of another CA", n1.ServerConfig(), reloader(t, other.party("c3", LeafRequest{Name: "x"}, p.ca.CertPEM), Options{Interval: -1}).ClientConfig(nil), "server", "unknown authority"},
		{"expired server", reloader(t, p.party("s1", LeafRequest{Name: "n1", Server: true, NotBefore: past.NotBefore, NotAfter: past.NotAfter}), Options{Interval: -1}).ServerConfig(), good.ClientConfig(nil), "client", "expired"},
		{"not yet valid server", reloader(t, p.party("s2", LeafRequest{Name: "n1", Server: true, NotBefore: future.NotBefore, NotAfter: future.NotAfter}), Options{Interval: -1}).ServerConfig(), good.ClientConfig(nil), "client", "not yet valid"},
		{"server of another CA", reloader(t, other.party("s3", LeafRequest{Name: "n1", Server: true}, p.ca.CertPEM), Options{Interval: -1}).ServerConfig(), good.ClientConfig(nil), "client", "unknown authority"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			_, se, ce := handshake(t, c.srv, c.cli)
			wantRefused(t, c.side, se, ce, c.reason)
		})
	}
	t.Run("the good client passes", func(t *testing.T) {
		_, se, ce := handshake(t, n1.ServerConfig(), good.ClientConfig(nil))
		wantOK(t, se, ce)
	})
}

// waitFor polls cond until it holds or the deadline passes.
func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

func TestReloadOnFileChange(t *testing.T) {
	oldCA := newPKI(t, "old")
	newCA := newPKI(t, "new")
	nf := oldCA.party("n1", LeafRequest{Name: "n1", Server: true})
	n1 := reloader(t, nf, Options{Check: ServerCheck("n1"), Interval: 10 * time.Millisecond})
	// A client of the new CA that already trusts both.
	cf := newCA.party("c", LeafRequest{Name: "c"}, oldCA.ca.CertPEM, newCA.ca.CertPEM)
	cli := reloader(t, cf, Options{Interval: 10 * time.Millisecond})

	_, se, ce := handshake(t, n1.ServerConfig(), cli.ClientConfig(nil))
	wantRefused(t, "server", se, ce, "unknown authority")

	// Step 1 of a CA rotation: the node's bundle gets old+new. The poller
	// picks it up; the next handshake, with the same *tls.Config, passes.
	gen := n1.Generation()
	writeFile(t, nf.CA, joinPEM(oldCA.ca.CertPEM, newCA.ca.CertPEM))
	waitFor(t, "the CA bundle to be reloaded", func() bool { return n1.Generation() > gen })
	srvCfg := n1.ServerConfig()
	_, se, ce = handshake(t, srvCfg, cli.ClientConfig(nil))
	wantOK(t, se, ce)

	// Step 2: the node gets a leaf of the new CA; the client's next
	// handshake sees the new serial.
	gen = n1.Generation()
	newCA.reissue(nf, LeafRequest{Name: "n1", Server: true})
	waitFor(t, "the new leaf to be reloaded", func() bool { return n1.Generation() > gen })
	var seen string
	cc := cli.ClientConfig(nil)
	verify := cc.VerifyConnection
	cc.VerifyConnection = func(cs tls.ConnectionState) error {
		seen = IdentityOf(cs.PeerCertificates[0]).Serial
		return verify(cs)
	}
	_, se, ce = handshake(t, srvCfg, cc)
	wantOK(t, se, ce)
	if want := n1.Current().Leaf.SerialNumber.Text(16); seen != want {
		t.Fatalf("client saw serial %s, want the new leaf's %s", seen, want)
	}
	if n1.Current().Leaf.Issuer.CommonName != "new" {
		t.Fatalf("leaf issuer %q, want new", n1.Current().Leaf.Issuer.CommonName)
	}
}

func TestReloadExplicitAndBadFilesKeepThePrevious(t *testing.T) {
	p := newPKI(t, "ca")
	nf := p.party("n1", LeafRequest{Name: "n1", Server: true})
	n1 := reloader(t, nf, Options{Check: ServerCheck("n1"), Interval: -1}) // Reload only
	cli := reloader(t, p.party("c", LeafRequest{Name: "c"}), Options{Interval: -1})
	first := n1.Current()

	// A leaf without the server role is refused; the previous stays.
	p.reissue(nf, LeafRequest{Name: "n1"})
	err := n1.Reload()
	if !errors.Is(err, ErrNotServer) || !strings.Contains(err.Error(), nf.Cert) {
		t.Fatalf("Reload of a client certificate: %v", err)
	}
	// Garbage: refused with the file's name.
	writeFile(t, nf.CA, []byte("not pem"))
	if err := n1.Reload(); err == nil || !strings.Contains(err.Error(), nf.CA) {
		t.Fatalf("Reload of a bad CA bundle: %v", err)
	}
	os.Remove(nf.Key)
	if err := n1.Reload(); err == nil || !strings.Contains(err.Error(), nf.Key) {
		t.Fatalf("Reload without a key file: %v", err)
	}
	if n1.Current() != first || n1.Generation() != 1 {
		t.Fatal("a refused reload changed the bundle")
	}
	_, se, ce := handshake(t, n1.ServerConfig(), cli.ClientConfig(nil))
	wantOK(t, se, ce)

	// Good files again: Reload installs them and the next handshake uses them.
	writeFile(t, nf.CA, p.ca.CertPEM)
	p.reissue(nf, LeafRequest{Name: "n1", Server: true})
	if err := n1.Reload(); err != nil {
		t.Fatal(err)
	}
	if n1.Current() == first || n1.Generation() != 2 {
		t.Fatal("Reload did not install the new bundle")
	}
	if err := n1.Reload(); err != nil || n1.Generation() != 2 {
		t.Fatalf("a Reload of unchanged files: err %v, generation %d (want 2)", err, n1.Generation())
	}
	peer, se, ce := handshake(t, n1.ServerConfig(), cli.ClientConfig(nil))
	wantOK(t, se, ce)
	if peer.Name != "c" {
		t.Fatalf("peer %+v", peer)
	}
}

func TestPollerRetriesAfterAHalfWrittenRotation(t *testing.T) {
	p := newPKI(t, "ca")
	nf := p.party("n1", LeafRequest{Name: "n1", Server: true})
	n1 := reloader(t, nf, Options{Check: ServerCheck("n1"), Interval: 10 * time.Millisecond})
	cert, key, err := p.ca.Issue(LeafRequest{Name: "n1", Server: true})
	if err != nil {
		t.Fatal(err)
	}
	// The certificate first: it does not match the old key yet.
	writeFile(t, nf.Cert, cert)
	err = n1.Reload()
	if err == nil {
		t.Fatal("a certificate with the wrong key was accepted")
	}
	writeFile(t, nf.Key, key)
	waitFor(t, "the matching key to be picked up", func() bool { return n1.Generation() == 2 })
}

func TestFilesAndLoadErrors(t *testing.T) {
	if err := (Files{CA: "a"}).Validate(); err == nil || !strings.Contains(err.Error(), "certificate") {
		t.Fatalf("partial files: %v", err)
	}
	if (Files{}).Enabled() || (Files{}).Validate() != nil {
		t.Fatal("no files: want disabled and valid")
	}
	dir := t.TempDir()
	missing := Files{CA: filepath.Join(dir, "ca.pem"), Cert: filepath.Join(dir, "c.pem"), Key: filepath.Join(dir, "k.pem")}
	if _, err := NewReloader(missing, Options{}); err == nil || !strings.Contains(err.Error(), missing.CA) {
		t.Fatalf("missing CA: %v", err)
	}
	// A leaf in the CA bundle is refused.
	p := newPKI(t, "ca")
	f := p.party("n1", LeafRequest{Name: "n1", Server: true})
	leaf, _ := os.ReadFile(f.Cert)
	writeFile(t, f.CA, leaf)
	if _, err := Load(f); err == nil || !strings.Contains(err.Error(), "not a CA") {
		t.Fatalf("leaf as CA: %v", err)
	}
}

func TestIssueAndWriteFiles(t *testing.T) {
	ca, caKey, err := NewCA("ca", 0)
	if err != nil {
		t.Fatal(err)
	}
	if _, _, err := ca.Issue(LeafRequest{Name: "bad name", Server: true}); err == nil {
		t.Fatal("a node name with a space was issued")
	}
	cert, _, err := ca.Issue(LeafRequest{Name: "N1", Server: true, Hosts: []string{"10.0.0.1", "n1.example"}})
	if err != nil {
		t.Fatal(err)
	}
	certs, err := parseCerts(cert)
	if err != nil {
		t.Fatal(err)
	}
	c := certs[0]
	if !NamesNode(c, "n1") || !NamesNode(c, "N1") || len(c.IPAddresses) != 1 || IdentityOf(c).Node != "n1" {
		t.Fatalf("SANs %v %v", c.DNSNames, c.IPAddresses)
	}
	dir := t.TempDir()
	files := []OutFile{{filepath.Join(dir, "ca.pem"), ca.CertPEM, 0o644}, {filepath.Join(dir, "ca-key.pem"), caKey, 0o600}}
	if err := WriteFiles(files); err != nil {
		t.Fatal(err)
	}
	loaded, err := LoadCA(files[0].Path, files[1].Path)
	if err != nil || !loaded.Cert.Equal(ca.Cert) {
		t.Fatalf("LoadCA: %v", err)
	}
	if fi, _ := os.Stat(files[1].Path); fi.Mode().Perm() != 0o600 {
		t.Fatalf("key mode %v", fi.Mode())
	}
	// Refused when any file exists; the new one is not written either.
	more := []OutFile{{filepath.Join(dir, "new.pem"), []byte("x"), 0o644}, files[0]}
	if err := WriteFiles(more); err == nil || !strings.Contains(err.Error(), "exists") {
		t.Fatalf("overwrite: %v", err)
	}
	if _, err := os.Stat(more[0].Path); !os.IsNotExist(err) {
		t.Fatal("WriteFiles wrote a file before refusing")
	}
}

func TestGossipKeys(t *testing.T) {
	k1, k2 := NewGossipKey(), NewGossipKey()
	keys, err := ParseGossipKeys("# primary first\n" + k1 + "\n\n" + k2 + "," + k1 + "\n")
	if err != nil || len(keys) != 2 || len(keys[0]) != 32 {
		t.Fatalf("keys %d, err %v", len(keys), err)
	}
	for _, bad := range []string{"", "# only a comment", "not base64!", "c2hvcnQ="} {
		if _, err := ParseGossipKeys(bad); err == nil {
			t.Errorf("ParseGossipKeys(%q) accepted", bad)
		}
	}
	if _, err := ReadGossipKeys(filepath.Join(t.TempDir(), "none")); err == nil || !strings.Contains(err.Error(), "none") {
		t.Fatalf("missing file: %v", err)
	}
}
