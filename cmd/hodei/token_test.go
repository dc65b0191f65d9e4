package main

import (
	"context"
	"encoding/json"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// hodei dev --auth, then token create | list | revoke, and a job run by the
// embedded worker's own token; a command without a token is refused.
func TestCLITokens(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	d, err := startDev(ctx, devOptions{nodes: 1, workers: 1, shards: 1, auth: true, dataDir: t.TempDir()}, slog.New(slog.DiscardHandler))
	if err != nil {
		t.Fatal(err)
	}
	defer d.Close()
	if d.adminToken == "" {
		t.Fatal("no admin token")
	}
	addr := "--addr=" + strings.Join(d.addrs, ",")
	if out, err := run(t, addr, "job", "list"); err == nil || !strings.Contains(err.Error(), "Unauthenticated") {
		t.Fatalf("list without a token: %v\n%s", err, out)
	}
	tok := "--token=" + d.adminToken
	out, err := run(t, addr, tok, "-o", "json", "token", "create", "--name", "ci", "--role", "tenant:a:submit", "--ttl", "1h")
	if err != nil {
		t.Fatalf("create: %v\n%s", err, out)
	}
	var created struct {
		Token struct {
			ID, Name string
			Roles    []string
		} `json:"token"`
		Secret string `json:"secret"`
	}
	if err := json.Unmarshal([]byte(out), &created); err != nil || created.Secret == "" || created.Token.Name != "ci" {
		t.Fatalf("create output %q: %v", out, err)
	}
	// The new token, from a file, submits to its tenant and is refused another.
	file := filepath.Join(t.TempDir(), "tok")
	if err := os.WriteFile(file, []byte(created.Secret+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	if out, err := run(t, addr, "--token-file="+file, "job", "submit", "--wait", "--tenant", "a", "--", "true"); err != nil || !strings.Contains(out, "SUCCEEDED") {
		t.Fatalf("submit with the new token: %v\n%s", err, out)
	}
	if out, err := run(t, addr, "--token-file="+file, "job", "submit", "--tenant", "b", "--", "true"); err == nil || !strings.Contains(err.Error(), "PermissionDenied") {
		t.Fatalf("submit to another tenant: %v\n%s", err, out)
	}
	if out, err := run(t, addr, tok, "token", "list"); err != nil || !strings.Contains(out, created.Token.ID) || !strings.Contains(out, "bootstrap") {
		t.Fatalf("list: %v\n%s", err, out)
	}
	if out, err := run(t, addr, tok, "token", "revoke", created.Token.ID); err != nil || !strings.Contains(out, "revoked") {
		t.Fatalf("revoke: %v\n%s", err, out)
	}
	if out, err := run(t, addr, "--token-file="+file, "job", "list", "--tenant", "a"); err == nil || !strings.Contains(err.Error(), "Unauthenticated") {
		t.Fatalf("list with the revoked token: %v\n%s", err, out)
	}
	if out, err := run(t, addr, tok, "token", "create", "--name", "bad", "--role", "root"); err == nil || !strings.Contains(err.Error(), "InvalidArgument") {
		t.Fatalf("bad role: %v\n%s", err, out)
	}
}
