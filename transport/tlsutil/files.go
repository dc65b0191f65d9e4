package tlsutil

import (
	"crypto/sha256"
	"crypto/tls"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"fmt"
	"os"
	"time"
)

// Files names the PEM files of one party: the CA bundle it trusts (one or
// more CA certificates; during a CA rotation, the old and the new), its
// certificate (leaf first, then any intermediates) and its private key.
type Files struct {
	CA   string
	Cert string
	Key  string
}

// Enabled reports whether any file is named (TLS is configured).
func (f Files) Enabled() bool { return f.CA != "" || f.Cert != "" || f.Key != "" }

// Validate checks that the three files are named together (or none). It
// does not read them.
func (f Files) Validate() error {
	if !f.Enabled() {
		return nil
	}
	var missing []string
	if f.CA == "" {
		missing = append(missing, "CA bundle")
	}
	if f.Cert == "" {
		missing = append(missing, "certificate")
	}
	if f.Key == "" {
		missing = append(missing, "key")
	}
	if len(missing) > 0 {
		return fmt.Errorf("tls: the CA bundle, certificate and key files go together; missing: %v", missing)
	}
	return nil
}

// Bundle is one loaded set of files.
type Bundle struct {
	// Pool holds the CA bundle's certificates.
	Pool *x509.CertPool
	// CAs are the CA bundle's certificates, in file order.
	CAs []*x509.Certificate
	// Cert is the party's certificate chain and key.
	Cert tls.Certificate
	// Leaf is Cert's parsed leaf.
	Leaf *x509.Certificate
	// Hash is the SHA-256 of the three files' contents (what the reloader
	// compares to know whether anything changed).
	Hash [sha256.Size]byte
}

// Load reads and parses the three files. An error names the file.
func Load(f Files) (*Bundle, error) {
	if err := f.Validate(); err != nil {
		return nil, err
	}
	if !f.Enabled() {
		return nil, errors.New("tls: no files configured")
	}
	caPEM, err := os.ReadFile(f.CA)
	if err != nil {
		return nil, fmt.Errorf("tls: read CA bundle: %w", err)
	}
	certPEM, err := os.ReadFile(f.Cert)
	if err != nil {
		return nil, fmt.Errorf("tls: read certificate: %w", err)
	}
	keyPEM, err := os.ReadFile(f.Key)
	if err != nil {
		return nil, fmt.Errorf("tls: read key: %w", err)
	}
	return Parse(f, caPEM, certPEM, keyPEM)
}

// Parse builds a Bundle from PEM contents; f names the files in errors.
func Parse(f Files, caPEM, certPEM, keyPEM []byte) (*Bundle, error) {
	cas, err := parseCerts(caPEM)
	if err != nil {
		return nil, fmt.Errorf("tls: CA bundle %s: %w", f.CA, err)
	}
	pool := x509.NewCertPool()
	for _, c := range cas {
		if !c.IsCA {
			return nil, fmt.Errorf("tls: CA bundle %s: certificate %q is not a CA", f.CA, c.Subject.CommonName)
		}
		pool.AddCert(c)
	}
	cert, err := tls.X509KeyPair(certPEM, keyPEM)
	if err != nil {
		return nil, fmt.Errorf("tls: certificate %s with key %s: %w", f.Cert, f.Key, err)
	}
	b := &Bundle{Pool: pool, CAs: cas, Cert: cert, Leaf: cert.Leaf}
	if b.Leaf == nil { // X509KeyPair fills Leaf since Go 1.23; parse for older behaviour
		if b.Leaf, err = x509.ParseCertificate(cert.Certificate[0]); err != nil {
			return nil, fmt.Errorf("tls: certificate %s: %w", f.Cert, err)
		}
	}
	h := sha256.New()
	for _, p := range [][]byte{caPEM, certPEM, keyPEM} {
		fmt.Fprintf(h, "%d:", len(p))
		h.Write(p)
	}
	copy(b.Hash[:], h.Sum(nil))
	return b, nil
}

// parseCerts parses every CERTIFICATE block of a PEM file (at least one).
func parseCerts(data []byte) ([]*x509.Certificate, error) {
	var out []*x509.Certificate
	for {
		var blk *pem.Block
		blk, data = pem.Decode(data)
		if blk == nil {
			break
		}
		if blk.Type != "CERTIFICATE" {
			continue
		}
		c, err := x509.ParseCertificate(blk.Bytes)
		if err != nil {
			return nil, err
		}
		out = append(out, c)
	}
	if len(out) == 0 {
		return nil, errors.New("no PEM certificate found")
	}
	return out, nil
}

// Verify checks that b's own certificate chains to b's CA bundle and is
// valid at now, for the given usage (x509.ExtKeyUsageServerAuth for a
// node, ClientAuth for a client). A party that would present a certificate
// its own cluster refuses is misconfigured: better to say so at start (or
// keep the previous files on reload) than to fail every handshake.
func (b *Bundle) Verify(now time.Time, usage x509.ExtKeyUsage) error {
	return verifyChain(b.Cert, b.Leaf, b.Pool, now, usage)
}

func verifyChain(cert tls.Certificate, leaf *x509.Certificate, roots *x509.CertPool, now time.Time, usage x509.ExtKeyUsage) error {
	inter := x509.NewCertPool()
	for _, der := range cert.Certificate[1:] {
		c, err := x509.ParseCertificate(der)
		if err != nil {
			return err
		}
		inter.AddCert(c)
	}
	_, err := leaf.Verify(x509.VerifyOptions{Roots: roots, Intermediates: inter, CurrentTime: now, KeyUsages: []x509.ExtKeyUsage{usage}})
	return err
}
