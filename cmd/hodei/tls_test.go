package main

import (
	"bytes"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func TestTLSInitAndCert(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "tls")
	if _, err := run(t, "tls", "init", dir, "--nodes", "n1,n2,n3"); err != nil {
		t.Fatal(err)
	}
	for _, f := range []string{"ca.pem", "ca-key.pem", "n1.pem", "n1-key.pem", "n3-key.pem", "client.pem", "client-key.pem", "gossip.key"} {
		fi, err := os.Stat(filepath.Join(dir, f))
		if err != nil {
			t.Fatal(err)
		}
		secret := strings.HasSuffix(f, "key.pem") || f == "gossip.key"
		if secret && fi.Mode().Perm() != 0o600 {
			t.Errorf("%s has mode %v, want 0600", f, fi.Mode().Perm())
		}
	}
	before, _ := os.ReadFile(filepath.Join(dir, "ca.pem"))
	if _, err := run(t, "tls", "init", dir, "--nodes", "n1"); err == nil || !strings.Contains(err.Error(), "exists") {
		t.Fatalf("init over existing files: %v", err)
	}
	if after, _ := os.ReadFile(filepath.Join(dir, "ca.pem")); !bytes.Equal(before, after) {
		t.Fatal("a refused init replaced the CA")
	}
	ca, key := "--ca="+filepath.Join(dir, "ca.pem"), "--ca-key="+filepath.Join(dir, "ca-key.pem")
	if _, err := run(t, "tls", "cert", "--server", "n4", ca, key, "--out", dir); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(filepath.Join(dir, "n4-key.pem")); err != nil {
		t.Fatal(err)
	}
	for _, bad := range [][]string{
		{"tls", "cert", "--server", "bad name", ca, key, "--out", dir},
		{"tls", "cert", "--server", "n5", "--client", "x", ca, key, "--out", dir},
		{"tls", "cert", "--client", "x", "--ca", filepath.Join(dir, "n1.pem"), "--ca-key", filepath.Join(dir, "n1-key.pem"), "--out", dir},
		{"tls", "init", t.TempDir(), "--nodes", "n1,n1"},
		{"job", "list", "--tls-ca", filepath.Join(dir, "ca.pem")}, // cert and key missing
	} {
		if _, err := run(t, bad...); err == nil {
			t.Errorf("%v: accepted", bad)
		}
	}
	// A server on a client certificate refuses to start, naming the file.
	client := filepath.Join(dir, "client.pem")
	_, err := run(t, "server", "--id", "n1", "--data", t.TempDir(), "--grpc", "127.0.0.1:0", "--insecure",
		"--tls-ca", filepath.Join(dir, "ca.pem"), "--tls-cert", client, "--tls-key", filepath.Join(dir, "client-key.pem"))
	if err == nil || !strings.Contains(err.Error(), "no server role") || !strings.Contains(err.Error(), client) {
		t.Fatalf("server on a client certificate: %v", err)
	}
	if _, err := run(t, "bench", "--tls"); err == nil || !strings.Contains(err.Error(), "--dev") {
		t.Fatalf("bench --tls without --dev: %v", err)
	}
}

// TestCLIWithDevTLS: `hodei dev --tls` serves only clients with a
// certificate of its CA; the CLI's --tls-* flags reach it.
func TestCLIWithDevTLS(t *testing.T) {
	data := t.TempDir()
	addr := startTestDev(t, devOptions{nodes: 1, workers: 1, shards: 2, dataDir: data, tls: true})
	tlsDir := filepath.Join(data, "tls")
	flags := []string{addr, "--tls-ca", filepath.Join(tlsDir, "ca.pem"), "--tls-cert", filepath.Join(tlsDir, "client.pem"), "--tls-key", filepath.Join(tlsDir, "client-key.pem")}
	out, err := run(t, append(flags, "job", "submit", "--wait", "--", "echo", "hello")...)
	if err != nil || !strings.Contains(out, "SUCCEEDED") {
		t.Fatalf("submit over TLS: %v\n%s", err, out)
	}
	// The env defaults work the same.
	t.Setenv("HODEI_TLS_CA", filepath.Join(tlsDir, "ca.pem"))
	t.Setenv("HODEI_TLS_CERT", filepath.Join(tlsDir, "client.pem"))
	t.Setenv("HODEI_TLS_KEY", filepath.Join(tlsDir, "client-key.pem"))
	if out, err := run(t, addr, "job", "list"); err != nil {
		t.Fatalf("list with HODEI_TLS_*: %v\n%s", err, out)
	}
	t.Setenv("HODEI_TLS_CA", "")
	t.Setenv("HODEI_TLS_CERT", "")
	t.Setenv("HODEI_TLS_KEY", "")
	if _, err := run(t, addr, "job", "list"); err == nil || !strings.Contains(err.Error(), "Unavailable") {
		t.Fatalf("a plaintext CLI against a TLS cluster: %v", err)
	}
}
