package chaos

import (
	"context"
	"io"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"testing"
	"time"
)

// TestChaosSmoke runs a short mixed-fault run against real processes. It
// builds the binary, so it runs only with HODEI_CHAOS=1 and without -short:
//
//	HODEI_CHAOS=1 go test -run TestChaosSmoke -v ./chaos
func TestChaosSmoke(t *testing.T) {
	if testing.Short() || os.Getenv("HODEI_CHAOS") != "1" {
		t.Skip("set HODEI_CHAOS=1 (and no -short) to run the chaos smoke test")
	}
	dir := t.TempDir()
	bin := buildHodei(t, dir)
	cfg := DefaultConfig()
	cfg.Binary, cfg.Out = bin, filepath.Join(dir, "report")
	cfg.Duration, cfg.Clients = 45*time.Second, 4
	cfg.Log = slog.New(slog.NewTextHandler(testWriter{t}, nil))
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	rep, err := Run(ctx, cfg)
	if err != nil {
		t.Fatalf("run: %v", err)
	}
	rep.WriteSummary(testWriter{t})
	if !rep.Passed() {
		t.Fatal("chaos smoke found violations")
	}
}

type testWriter struct{ t *testing.T }

func (w testWriter) Write(p []byte) (int, error) { w.t.Log(string(p)); return len(p), nil }

var _ io.Writer = testWriter{}

// TestChaosTLSSmoke is a short kill-leader run with --tls: servers,
// workers and the harness talk mutual TLS and gossip is encrypted. Like
// TestChaosSmoke it runs only with HODEI_CHAOS=1:
//
//	HODEI_CHAOS=1 go test -run TestChaosTLSSmoke -v ./chaos
func TestChaosTLSSmoke(t *testing.T) {
	if testing.Short() || os.Getenv("HODEI_CHAOS") != "1" {
		t.Skip("set HODEI_CHAOS=1 (and no -short) to run the chaos smoke test")
	}
	dir := t.TempDir()
	bin := buildHodei(t, dir)
	cfg := DefaultConfig()
	cfg.Binary, cfg.Out, cfg.TLS = bin, filepath.Join(dir, "report"), true
	cfg.Duration, cfg.Clients, cfg.Rate, cfg.ShellRate, cfg.Workers = 30*time.Second, 2, 100, 5, 2
	cfg.Faults, cfg.Network = FaultKillLeader, "loopback"
	cfg.Log = slog.New(slog.NewTextHandler(testWriter{t}, nil))
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	rep, err := Run(ctx, cfg)
	if err != nil {
		t.Fatalf("run: %v", err)
	}
	rep.WriteSummary(testWriter{t})
	if !rep.Passed() {
		t.Fatal("chaos TLS smoke found violations")
	}
	if rep.Warmup.OKOps == 0 {
		t.Fatal("no submit was acknowledged before the first fault")
	}
}

// buildHodei builds the static hodei binary into dir.
func buildHodei(t *testing.T, dir string) string {
	t.Helper()
	bin := filepath.Join(dir, "hodei")
	build := exec.Command("go", "build", "-o", bin, "github.com/hodei-io/hodei/cmd/hodei")
	build.Env = append(os.Environ(), "CGO_ENABLED=0")
	if out, err := build.CombinedOutput(); err != nil {
		t.Fatalf("build: %v\n%s", err, out)
	}
	return bin
}
