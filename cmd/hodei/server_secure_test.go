package main

import (
	"bytes"
	"log/slog"
	"strings"
	"testing"

	"github.com/hodei-io/hodei/cluster"
	"github.com/hodei-io/hodei/transport/tlsutil"
)

// The production gate: a server without TLS or without tokens refuses to
// start unless --insecure, naming what is missing; with --insecure it
// warns loudly in the log and on stderr; with both on it says nothing.
func TestServerRefusesToStartOpen(t *testing.T) {
	tlsOn := tlsutil.Files{CA: "ca.pem", Cert: "n1.pem", Key: "n1-key.pem"}
	for _, tc := range []struct {
		name     string
		tls      bool
		auth     bool
		insecure bool
		err      []string
		warn     string
	}{
		{name: "neither", err: []string{"refusing to start without mutual TLS", "and tokens (--auth", "--insecure"}},
		{name: "tls only", tls: true, err: []string{"refusing to start without tokens"}},
		{name: "auth only", auth: true, err: []string{"refusing to start without mutual TLS"}},
		{name: "both", tls: true, auth: true},
		{name: "insecure", insecure: true, warn: "INSECURE: running without mutual TLS"},
		{name: "insecure with tls", tls: true, insecure: true, warn: "INSECURE: running without tokens"},
		{name: "insecure but secured", tls: true, auth: true, insecure: true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			cfg := cluster.DefaultConfig()
			if tc.tls {
				cfg.TLS = tlsOn
			}
			cfg.Auth.Enabled = tc.auth
			var logs, stderr bytes.Buffer
			err := checkSecure(cfg, tc.insecure, slog.New(slog.NewTextHandler(&logs, nil)), &stderr)
			if len(tc.err) > 0 {
				if err == nil {
					t.Fatal("started open")
				}
				for _, w := range tc.err {
					if !strings.Contains(err.Error(), w) {
						t.Errorf("error %q does not say %q", err, w)
					}
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if tc.warn == "" {
				if logs.Len()+stderr.Len() != 0 {
					t.Fatalf("warned when secured: %s %s", logs.String(), stderr.String())
				}
				return
			}
			if !strings.Contains(stderr.String(), tc.warn) || !strings.Contains(logs.String(), "INSECURE") {
				t.Fatalf("no loud warning: stderr %q log %q", stderr.String(), logs.String())
			}
		})
	}
	// Through the command line: the gate runs before the node starts.
	_, err := run(t, "server", "--id", "n1", "--data", t.TempDir(), "--grpc", "127.0.0.1:0", "--bootstrap", "n1=127.0.0.1:1")
	if err == nil || !strings.Contains(err.Error(), "refusing to start") {
		t.Fatalf("hodei server without TLS and auth: %v", err)
	}
}
