package main

// Mutual TLS (issue 12): `hodei tls ...` makes a CA and certificates with
// the Go standard library (transport/tlsutil); addTLSFlags gives the server
// its TLS and gossip-key flags; addClientTLSFlags gives every client
// command (job, operator, worker, bench, ...) --tls-ca/--tls-cert/--tls-key
// with HODEI_TLS_* defaults.

import (
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/signal"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/spf13/cobra"

	"github.com/hodei-io/hodei/cluster"
	"github.com/hodei-io/hodei/transport/tlsutil"
)

func init() { register(newTLSCmd) }

// clientTLSFiles are the client commands' TLS files (--tls-ca, --tls-cert,
// --tls-key on the root command; env HODEI_TLS_CA, HODEI_TLS_CERT,
// HODEI_TLS_KEY).
var clientTLSFiles tlsutil.Files

// addClientTLSFlags adds the client TLS flags to root's persistent flags. `hodei server` defines flags of the same names for its
// own files (addTLSFlags), which take precedence there and have no env
// defaults: a server's identity is given explicitly.
func addClientTLSFlags(root *cobra.Command) {
	f := root.PersistentFlags()
	f.StringVar(&clientTLSFiles.CA, "tls-ca", os.Getenv("HODEI_TLS_CA"), "client TLS: CA bundle (PEM) that signs the nodes' certificates (env HODEI_TLS_CA); with --tls-cert and --tls-key turns mutual TLS on")
	f.StringVar(&clientTLSFiles.Cert, "tls-cert", os.Getenv("HODEI_TLS_CERT"), "client TLS: this client's certificate (PEM; env HODEI_TLS_CERT)")
	f.StringVar(&clientTLSFiles.Key, "tls-key", os.Getenv("HODEI_TLS_KEY"), "client TLS: this client's private key (PEM; env HODEI_TLS_KEY)")
}

// clientTLS returns the client commands' TLS files, checked (all three or none).
func clientTLS() (tlsutil.Files, error) {
	if err := clientTLSFiles.Validate(); err != nil {
		return tlsutil.Files{}, fmt.Errorf("--tls-ca/--tls-cert/--tls-key: %w", err)
	}
	return clientTLSFiles, nil
}

// addTLSFlags adds the server's TLS and gossip encryption flags to cmd; the
// returned function, called before cluster.New, fills cfg's gossip keys
// from --gossip-key.
func addTLSFlags(cmd *cobra.Command, cfg *cluster.Config) func() error {
	f := cmd.Flags()
	f.StringVar(&cfg.TLS.CA, "tls-ca", "", "CA bundle (PEM, one or more CAs) whose certificates clients, workers and other nodes must present; with --tls-cert and --tls-key turns mutual TLS on (re-read on SIGHUP and when the files change)")
	f.StringVar(&cfg.TLS.Cert, "tls-cert", "", "this node's certificate (PEM): it must have the server role and name --id (hodei tls cert --server ID)")
	f.StringVar(&cfg.TLS.Key, "tls-key", "", "this node's private key (PEM)")
	f.DurationVar(&cfg.TLSReloadInterval, "tls-reload-interval", 0, "how often the TLS files are checked for changes (0: 2s; negative: only on SIGHUP)")
	f.StringVar(&cfg.GossipKeyFile, "gossip-key-file", "", "file of gossip encryption keys (base64, one per line, the first encrypts; hodei tls gossip-key makes one); re-read on SIGHUP")
	var keys string
	f.StringVar(&keys, "gossip-key", "", "gossip encryption keys, base64, comma-separated (the first encrypts); visible in the process list: prefer --gossip-key-file")
	return func() error {
		if keys == "" {
			return nil
		}
		k, err := tlsutil.ParseGossipKeys(keys)
		if err != nil {
			return fmt.Errorf("--gossip-key: %w", err)
		}
		cfg.GossipKeys = k
		return nil
	}
}

// onSIGHUP calls reload on every SIGHUP until the returned stop is called
// (it waits for the goroutine).
func onSIGHUP(log *slog.Logger, what string, reload func() error) (stop func()) {
	ch := make(chan os.Signal, 1)
	signal.Notify(ch, syscall.SIGHUP)
	quit, done := make(chan struct{}), make(chan struct{})
	go func() {
		defer close(done)
		for {
			select {
			case <-quit:
				return
			case <-ch:
				if err := reload(); err != nil {
					log.Error("SIGHUP: reload refused, the previous files stay in use", "what", what, "err", err)
				} else {
					log.Info("SIGHUP: reloaded", "what", what)
				}
			}
		}
	}()
	var once sync.Once
	return func() {
		once.Do(func() {
			signal.Stop(ch)
			close(quit)
			<-done
		})
	}
}

func newTLSCmd() *cobra.Command {
	cmd := &cobra.Command{
		Use:   "tls",
		Short: "Make a CA and node/client certificates for mutual TLS",
		Long: `Make a CA and certificates for Hodei's mutual TLS (ECDSA P-256, Go standard library).

A node certificate has the server role (DNS SAN server.hodei) and names its node
(DNS SAN <id>.server.hodei); a client certificate has neither and cannot act as
a node. Quick start for three nodes:
  hodei tls init ./tls --nodes n1,n2,n3
makes ./tls/ca.pem, ca-key.pem, n1.pem, n1-key.pem, ..., client.pem,
client-key.pem and gossip.key. Keep ca-key.pem offline.`,
	}
	cmd.AddCommand(newTLSInitCmd(), newTLSCACmd(), newTLSCertCmd(), newTLSGossipKeyCmd())
	return cmd
}

// tlsWriter collects files for tlsutil.WriteFiles and reports them.
type tlsWriter struct {
	dir   string
	files []tlsutil.OutFile
}

func (w *tlsWriter) add(name string, data []byte, secret bool) {
	mode := os.FileMode(0o644)
	if secret {
		mode = 0o600
	}
	w.files = append(w.files, tlsutil.OutFile{Path: filepath.Join(w.dir, name), Data: data, Mode: mode})
}

func (w *tlsWriter) leaf(ca *tlsutil.CA, req tlsutil.LeafRequest, base string) error {
	cert, key, err := ca.Issue(req)
	if err != nil {
		return err
	}
	w.add(base+".pem", cert, false)
	w.add(base+"-key.pem", key, true)
	return nil
}

// write creates dir and writes every file, or nothing if one exists.
func (w *tlsWriter) write(out io.Writer) error {
	if err := os.MkdirAll(w.dir, 0o755); err != nil {
		return err
	}
	if err := tlsutil.WriteFiles(w.files); err != nil {
		return err
	}
	for _, f := range w.files {
		fmt.Fprintln(out, "wrote", f.Path)
	}
	return nil
}

func splitList(s string) []string {
	var out []string
	for _, p := range strings.Split(s, ",") {
		if p = strings.TrimSpace(p); p != "" {
			out = append(out, p)
		}
	}
	return out
}

func leafValidity(days int) (time.Time, time.Time, error) {
	if days < 1 {
		return time.Time{}, time.Time{}, fmt.Errorf("--days must be >= 1, got %d", days)
	}
	nb := time.Now().Add(-time.Minute)
	return nb, nb.Add(time.Duration(days) * 24 * time.Hour), nil
}

// defaultHosts are extra SANs of node certificates, for tools that verify a
// host name (grpcurl -cacert, openssl s_client) on a local cluster.
var defaultHosts = []string{"localhost", "127.0.0.1", "::1"}

func newTLSInitCmd() *cobra.Command {
	var nodes, clientName, hosts string
	var days int
	cmd := &cobra.Command{
		Use:   "init DIR",
		Short: "Make a CA, a certificate per node, a client certificate and a gossip key in DIR",
		Example: `  hodei tls init ./tls --nodes n1,n2,n3
  hodei server --id n1 ... --tls-ca tls/ca.pem --tls-cert tls/n1.pem --tls-key tls/n1-key.pem --gossip-key-file tls/gossip.key
  hodei job list --tls-ca tls/ca.pem --tls-cert tls/client.pem --tls-key tls/client-key.pem`,
		Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			ids := splitList(nodes)
			if len(ids) == 0 {
				return fmt.Errorf("--nodes: give the node ids, e.g. n1,n2,n3")
			}
			seen := map[string]bool{clientName: true}
			for _, id := range ids {
				if err := tlsutil.ValidNodeName(id); err != nil {
					return fmt.Errorf("--nodes: %w", err)
				}
				if seen[id] {
					return fmt.Errorf("--nodes: %q listed twice or equal to --client", id)
				}
				seen[id] = true
			}
			nb, na, err := leafValidity(days)
			if err != nil {
				return err
			}
			ca, caKey, err := tlsutil.NewCA("Hodei CA", 0)
			if err != nil {
				return err
			}
			w := &tlsWriter{dir: args[0]}
			w.add("ca.pem", ca.CertPEM, false)
			w.add("ca-key.pem", caKey, true)
			extra := append(append([]string(nil), defaultHosts...), splitList(hosts)...)
			for _, id := range ids {
				if err := w.leaf(ca, tlsutil.LeafRequest{Name: id, Server: true, Hosts: append([]string{id}, extra...), NotBefore: nb, NotAfter: na}, id); err != nil {
					return err
				}
			}
			if err := w.leaf(ca, tlsutil.LeafRequest{Name: clientName, NotBefore: nb, NotAfter: na}, "client"); err != nil {
				return err
			}
			w.add("gossip.key", []byte(tlsutil.NewGossipKey()+"\n"), true)
			return w.write(cmd.OutOrStdout())
		},
	}
	f := cmd.Flags()
	f.StringVar(&nodes, "nodes", "", "comma-separated node ids (each gets <id>.pem and <id>-key.pem)")
	f.StringVar(&clientName, "client", "admin", "common name of the client certificate (client.pem)")
	f.StringVar(&hosts, "host", "", "extra DNS names or IPs for every node certificate, comma-separated (localhost and loopback IPs are always in)")
	f.IntVar(&days, "days", 365, "validity of the node and client certificates, in days (the CA: 5 years)")
	return cmd
}

func newTLSCACmd() *cobra.Command {
	var out, name string
	var days int
	cmd := &cobra.Command{
		Use:   "ca",
		Short: "Make a new CA (ca.pem, ca-key.pem) in --out",
		Long: `Make a new CA. To rotate the CA, make the new one in another directory, give every
party a CA bundle holding both (cat old/ca.pem new/ca.pem > bundle.pem), then new
certificates signed by the new CA, then a bundle of the new CA only (docs/operations.md).`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if days < 1 {
				return fmt.Errorf("--days must be >= 1, got %d", days)
			}
			ca, key, err := tlsutil.NewCA(name, time.Duration(days)*24*time.Hour)
			if err != nil {
				return err
			}
			w := &tlsWriter{dir: out}
			w.add("ca.pem", ca.CertPEM, false)
			w.add("ca-key.pem", key, true)
			return w.write(cmd.OutOrStdout())
		},
	}
	f := cmd.Flags()
	f.StringVar(&out, "out", ".", "directory to write to (existing files are never replaced)")
	f.StringVar(&name, "name", "Hodei CA", "the CA's common name")
	f.IntVar(&days, "days", 5*365, "validity in days")
	return cmd
}

func newTLSCertCmd() *cobra.Command {
	var server, clientName, caFile, caKey, out, hosts string
	var days int
	cmd := &cobra.Command{
		Use:   "cert (--server ID | --client NAME)",
		Short: "Issue a node (--server) or client (--client) certificate signed by a CA",
		Example: `  hodei tls cert --server n4 --ca tls/ca.pem --ca-key tls/ca-key.pem --out tls
  hodei tls cert --client ci-bot --ca tls/ca.pem --ca-key tls/ca-key.pem --out tls`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if (server == "") == (clientName == "") {
				return fmt.Errorf("give exactly one of --server ID and --client NAME")
			}
			nb, na, err := leafValidity(days)
			if err != nil {
				return err
			}
			ca, err := tlsutil.LoadCA(caFile, caKey)
			if err != nil {
				return err
			}
			w := &tlsWriter{dir: out}
			req := tlsutil.LeafRequest{Name: clientName, NotBefore: nb, NotAfter: na}
			if server != "" {
				if err := tlsutil.ValidNodeName(server); err != nil {
					return fmt.Errorf("--server: %w", err)
				}
				req = tlsutil.LeafRequest{Name: server, Server: true, NotBefore: nb, NotAfter: na,
					Hosts: append(append([]string{server}, defaultHosts...), splitList(hosts)...)}
			}
			if err := w.leaf(ca, req, req.Name); err != nil {
				return err
			}
			return w.write(cmd.OutOrStdout())
		},
	}
	f := cmd.Flags()
	f.StringVar(&server, "server", "", "issue a node certificate for node id ID (server role, names the node)")
	f.StringVar(&clientName, "client", "", "issue a client certificate with common name NAME")
	f.StringVar(&caFile, "ca", "ca.pem", "the signing CA's certificate")
	f.StringVar(&caKey, "ca-key", "ca-key.pem", "the signing CA's key")
	f.StringVar(&out, "out", ".", "directory to write <name>.pem and <name>-key.pem to (existing files are never replaced)")
	f.StringVar(&hosts, "host", "", "with --server: extra DNS names or IPs, comma-separated")
	f.IntVar(&days, "days", 365, "validity in days")
	return cmd
}

func newTLSGossipKeyCmd() *cobra.Command {
	return &cobra.Command{
		Use:   "gossip-key",
		Short: "Print a new random gossip encryption key (base64, 32 bytes) for --gossip-key-file",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			_, err := fmt.Fprintln(cmd.OutOrStdout(), tlsutil.NewGossipKey())
			return err
		},
	}
}
