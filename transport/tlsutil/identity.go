// Package tlsutil loads, checks, reloads and issues the certificates of
// Hodei's mutual TLS (issue 12). It imports only the standard library, so
// that the client SDK, the server packages and the CLI can all use it.
//
// The model, after Nomad's server.<region>.nomad: one CA (bundle) per
// cluster; every certificate it signs names who holds it.
//
//   - A server (node) certificate carries the server role, the DNS SAN
//     "server.hodei" (ServerRoleName), and names its node with the DNS SAN
//     "<node>.server.hodei" (NodeSAN). Its extended key usages are both
//     server and client auth: a node presents the same certificate when it
//     serves and when it dials another node.
//   - A client certificate (CLI, SDK, worker) has client auth only and no
//     server role. It can never pass as a server: a client verifies that
//     the node it dials presents ServerRoleName, a node verifies that the
//     node it dials presents ServerRoleName and, when it knows which node
//     lives at the address, that node's NodeSAN.
//
// Reloader keeps the current files in memory and re-reads them on Reload
// (the server calls it on SIGHUP) and when they change on disk, so that a
// rotated CA bundle or leaf certificate takes effect for the next handshake
// without a restart (etcd#11555 was a CA bundle that did not).
package tlsutil

import (
	"crypto/x509"
	"errors"
	"fmt"
	"regexp"
	"slices"
	"strings"
)

// Role names in an Identity.
const (
	RoleServer = "server"
	RoleClient = "client"
)

// ServerRoleName is the DNS SAN that gives a certificate the server role.
const ServerRoleName = "server.hodei"

// NodeSAN is the DNS SAN that names node in a server certificate
// ("n1.server.hodei"). DNS names compare case-insensitively, so the node
// name is lowercased.
func NodeSAN(node string) string { return strings.ToLower(node) + "." + ServerRoleName }

var nodeNameRE = regexp.MustCompile(`^[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?$`)

// ValidNodeName reports whether node can be named in a certificate: one
// DNS label (letters, digits and '-', at most 63, not starting or ending
// with '-').
func ValidNodeName(node string) error {
	if !nodeNameRE.MatchString(node) {
		return fmt.Errorf("node name %q cannot be named in a certificate: want one DNS label (letters, digits, '-', at most 63)", node)
	}
	return nil
}

// Identity is who a verified peer certificate says its holder is.
type Identity struct {
	// Name is the certificate's common name: the node id of a server
	// certificate, the client's name otherwise.
	Name string
	// Roles is [RoleServer] for a certificate with the server role,
	// [RoleClient] otherwise.
	Roles []string
	// Node is the node named by a server certificate's NodeSAN ("" for a
	// client certificate).
	Node string
	// Serial is the certificate's serial number in hex (for audit lines).
	Serial string
}

// IsServer reports whether the identity has the server role.
func (id Identity) IsServer() bool { return slices.Contains(id.Roles, RoleServer) }

// HasServerRole reports whether cert carries the server role: the DNS SAN
// ServerRoleName and the server-auth extended key usage (or no extended
// key usage at all, which x509 treats as any).
func HasServerRole(cert *x509.Certificate) bool {
	if !slices.Contains(lowerAll(cert.DNSNames), ServerRoleName) {
		return false
	}
	return len(cert.ExtKeyUsage) == 0 || slices.Contains(cert.ExtKeyUsage, x509.ExtKeyUsageServerAuth) ||
		slices.Contains(cert.ExtKeyUsage, x509.ExtKeyUsageAny)
}

// NamesNode reports whether cert is a server certificate of node.
func NamesNode(cert *x509.Certificate, node string) bool {
	return HasServerRole(cert) && slices.Contains(lowerAll(cert.DNSNames), NodeSAN(node))
}

// IdentityOf reads the identity of a certificate that has already been
// verified against the CA bundle.
func IdentityOf(cert *x509.Certificate) Identity {
	id := Identity{Name: cert.Subject.CommonName, Roles: []string{RoleClient}, Serial: cert.SerialNumber.Text(16)}
	if HasServerRole(cert) {
		id.Roles = []string{RoleServer}
		for _, n := range lowerAll(cert.DNSNames) {
			if node, ok := strings.CutSuffix(n, "."+ServerRoleName); ok && node != "" && !strings.Contains(node, ".") {
				id.Node = node
				break
			}
		}
	}
	return id
}

func lowerAll(names []string) []string {
	out := make([]string, len(names))
	for i, n := range names {
		out[i] = strings.ToLower(n)
	}
	return out
}

// Errors of the role checks, wrapped with details.
var (
	// ErrNotServer: the peer's certificate lacks the server role (a client
	// certificate presented where a node was expected).
	ErrNotServer = errors.New("tls: certificate has no server role")
	// ErrWrongNode: a server certificate of another node.
	ErrWrongNode = errors.New("tls: certificate names another node")
)

// CheckServerCert checks that cert has the server role and, if node is
// not empty, names node.
func CheckServerCert(cert *x509.Certificate, node string) error {
	if !HasServerRole(cert) {
		return fmt.Errorf("%w (it needs the DNS SAN %s and server auth usage; subject %q): a client certificate cannot act as a server",
			ErrNotServer, ServerRoleName, cert.Subject.CommonName)
	}
	if node != "" && !NamesNode(cert, node) {
		return fmt.Errorf("%w: want %s, the certificate (subject %q) has %v", ErrWrongNode, NodeSAN(node), cert.Subject.CommonName, cert.DNSNames)
	}
	return nil
}
