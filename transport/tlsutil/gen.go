package tlsutil

import (
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"errors"
	"fmt"
	"math/big"
	"net"
	"os"
	"path/filepath"
	"strings"
	"time"
)

// Default validity of issued certificates.
const (
	DefaultCAValidity   = 5 * 365 * 24 * time.Hour
	DefaultLeafValidity = 365 * 24 * time.Hour
)

// CA is a certificate authority able to sign leaf certificates.
type CA struct {
	Cert *x509.Certificate
	Key  crypto.Signer
	// CertPEM is Cert in PEM (what goes into CA bundles).
	CertPEM []byte
}

// NewCA makes a self-signed ECDSA P-256 CA named name, valid from now
// (less a minute, for clock skew) for validity (0: DefaultCAValidity).
func NewCA(name string, validity time.Duration) (*CA, []byte, error) {
	if validity == 0 {
		validity = DefaultCAValidity
	}
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, nil, err
	}
	now := time.Now()
	tmpl := &x509.Certificate{
		SerialNumber:          serial(),
		Subject:               pkix.Name{CommonName: name, Organization: []string{"Hodei"}},
		NotBefore:             now.Add(-time.Minute),
		NotAfter:              now.Add(validity),
		IsCA:                  true,
		BasicConstraintsValid: true,
		MaxPathLenZero:        true,
		KeyUsage:              x509.KeyUsageCertSign | x509.KeyUsageCRLSign | x509.KeyUsageDigitalSignature,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, key.Public(), key)
	if err != nil {
		return nil, nil, err
	}
	cert, err := x509.ParseCertificate(der)
	if err != nil {
		return nil, nil, err
	}
	keyPEM, err := encodeKey(key)
	if err != nil {
		return nil, nil, err
	}
	return &CA{Cert: cert, Key: key, CertPEM: pemBlock("CERTIFICATE", der)}, keyPEM, nil
}

// LoadCA reads a CA certificate and its key (PEM files, e.g. from NewCA).
func LoadCA(certFile, keyFile string) (*CA, error) {
	pair, err := tls.LoadX509KeyPair(certFile, keyFile)
	if err != nil {
		return nil, fmt.Errorf("tls: CA %s with key %s: %w", certFile, keyFile, err)
	}
	cert, err := x509.ParseCertificate(pair.Certificate[0])
	if err != nil {
		return nil, fmt.Errorf("tls: CA %s: %w", certFile, err)
	}
	if !cert.IsCA {
		return nil, fmt.Errorf("tls: %s is not a CA certificate", certFile)
	}
	signer, ok := pair.PrivateKey.(crypto.Signer)
	if !ok {
		return nil, fmt.Errorf("tls: CA key %s cannot sign", keyFile)
	}
	return &CA{Cert: cert, Key: signer, CertPEM: pemBlock("CERTIFICATE", pair.Certificate[0])}, nil
}

// LeafRequest describes a certificate to issue.
type LeafRequest struct {
	// Name is the common name: the node id of a server, the client's name.
	Name string
	// Server gives the certificate the server role and names node Name
	// (DNS SANs ServerRoleName and NodeSAN(Name)), with server and client
	// auth usages; otherwise it is a client certificate (client auth only).
	Server bool
	// Hosts are extra SANs (DNS names or IP addresses) for tools that
	// verify a host name (curl, grpcurl, openssl); Hodei's own parties
	// verify roles and node names, not host names.
	Hosts []string
	// NotBefore and NotAfter: zero means now less a minute and
	// NotBefore + DefaultLeafValidity.
	NotBefore, NotAfter time.Time
}

// Issue signs a new leaf certificate for req with a fresh ECDSA P-256 key,
// returning the certificate and key in PEM.
func (ca *CA) Issue(req LeafRequest) (certPEM, keyPEM []byte, err error) {
	if strings.TrimSpace(req.Name) == "" {
		return nil, nil, errors.New("tls: a certificate needs a name")
	}
	if req.Server {
		if err := ValidNodeName(req.Name); err != nil {
			return nil, nil, err
		}
	}
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, nil, err
	}
	nb, na := req.NotBefore, req.NotAfter
	if nb.IsZero() {
		nb = time.Now().Add(-time.Minute)
	}
	if na.IsZero() {
		na = nb.Add(DefaultLeafValidity)
	}
	if !na.After(nb) {
		return nil, nil, fmt.Errorf("tls: not-after %v is not after not-before %v", na, nb)
	}
	tmpl := &x509.Certificate{
		SerialNumber: serial(),
		Subject:      pkix.Name{CommonName: req.Name, Organization: []string{"Hodei"}},
		NotBefore:    nb,
		NotAfter:     na,
		KeyUsage:     x509.KeyUsageDigitalSignature,
		ExtKeyUsage:  []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth},
	}
	if req.Server {
		tmpl.ExtKeyUsage = []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth, x509.ExtKeyUsageClientAuth}
		tmpl.DNSNames = []string{ServerRoleName, NodeSAN(req.Name)}
	}
	for _, h := range req.Hosts {
		if h = strings.TrimSpace(h); h == "" {
			continue
		}
		if ip := net.ParseIP(h); ip != nil {
			tmpl.IPAddresses = append(tmpl.IPAddresses, ip)
		} else {
			tmpl.DNSNames = append(tmpl.DNSNames, h)
		}
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, ca.Cert, key.Public(), ca.Key)
	if err != nil {
		return nil, nil, err
	}
	keyPEM, err = encodeKey(key)
	if err != nil {
		return nil, nil, err
	}
	return pemBlock("CERTIFICATE", der), keyPEM, nil
}

func serial() *big.Int {
	n, err := rand.Int(rand.Reader, new(big.Int).Lsh(big.NewInt(1), 127))
	if err != nil {
		panic(err) // crypto/rand never fails on supported platforms
	}
	return n
}

func encodeKey(key *ecdsa.PrivateKey) ([]byte, error) {
	der, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		return nil, err
	}
	return pemBlock("PRIVATE KEY", der), nil
}

func pemBlock(typ string, der []byte) []byte {
	return pem.EncodeToMemory(&pem.Block{Type: typ, Bytes: der})
}

// OutFile is one file to write.
type OutFile struct {
	Path string
	Data []byte
	Mode os.FileMode // 0600 for keys, 0644 for certificates
}

// WriteFiles writes every file, refusing (and writing nothing) if any of
// them exists already. Each file is written to a temporary name and
// renamed, so a reader polling it never sees half a file.
func WriteFiles(files []OutFile) error {
	for _, f := range files {
		if _, err := os.Lstat(f.Path); err == nil {
			return fmt.Errorf("tls: %s exists already: nothing was written (move it away or choose another directory)", f.Path)
		} else if !errors.Is(err, os.ErrNotExist) {
			return fmt.Errorf("tls: %s: %w", f.Path, err)
		}
	}
	for _, f := range files {
		if err := WriteFileAtomic(f.Path, f.Data, f.Mode); err != nil {
			return err
		}
	}
	return nil
}

// WriteFileAtomic writes data to path through a temporary file in the same
// directory and a rename (replacing path if it exists).
func WriteFileAtomic(path string, data []byte, mode os.FileMode) error {
	dir := filepath.Dir(path)
	tmp, err := os.CreateTemp(dir, "."+filepath.Base(path)+".tmp-*")
	if err != nil {
		return fmt.Errorf("tls: write %s: %w", path, err)
	}
	name := tmp.Name()
	_, werr := tmp.Write(data)
	cerr := tmp.Close()
	if err := errors.Join(werr, cerr, os.Chmod(name, mode)); err != nil {
		os.Remove(name)
		return fmt.Errorf("tls: write %s: %w", path, err)
	}
	if err := os.Rename(name, path); err != nil {
		os.Remove(name)
		return fmt.Errorf("tls: write %s: %w", path, err)
	}
	return nil
}
