package main

// Server-side auth flags (issue 12): `hodei server --auth`, `hodei dev
// --auth`, `hodei bench --dev --auth`.

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/spf13/cobra"

	"github.com/hodei-io/hodei/client"
	"github.com/hodei-io/hodei/cluster"
	"github.com/hodei-io/hodei/transport/tlsutil"
)

// addAuthServerFlags adds --auth and --auth-node-secret-file to `hodei
// server`; the returned function reads the secret file into cfg (call it
// once the flags are parsed).
func addAuthServerFlags(cmd *cobra.Command, cfg *cluster.Config) func() error {
	var secretFile, bootFile string
	f := cmd.Flags()
	f.StringVar(&bootFile, "auth-bootstrap-token-file", "", "file with the first admin token of a new cluster (hodei_<16 hex>_<64 hex>, the same on every bootstrap node); default: a random one written to DATA/"+cluster.BootstrapTokenFile)
	f.BoolVar(&cfg.Auth.Enabled, "auth", false, "require bearer tokens (docs/security.md); the first admin token is written to DATA/"+cluster.BootstrapTokenFile)
	f.StringVar(&secretFile, "auth-node-secret-file", "", "file with the cluster's node credential, the same on every node (make one with `hodei token node-secret`)")
	return func() error {
		if secretFile != "" {
			b, err := os.ReadFile(secretFile)
			if err != nil {
				return fmt.Errorf("--auth-node-secret-file: %w", err)
			}
			cfg.Auth.NodeSecret = strings.TrimSpace(string(b))
		}
		if bootFile != "" {
			b, err := os.ReadFile(bootFile)
			if err != nil {
				return fmt.Errorf("--auth-bootstrap-token-file: %w", err)
			}
			cfg.Auth.BootstrapToken = strings.TrimSpace(string(b))
		}
		return nil
	}
}

func newTokenNodeSecretCmd() *cobra.Command {
	return &cobra.Command{
		Use:   "node-secret",
		Short: "Print a new random node credential for --auth-node-secret-file",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			_, err := fmt.Fprintln(cmd.OutOrStdout(), cluster.NewNodeSecret())
			return err
		},
	}
}

// readBootstrapToken waits (within ctx) for the bootstrap admin token that
// the meta leader of a new cluster with auth on writes to its data dir,
// and returns it. dirs are the nodes' data dirs.
func readBootstrapToken(ctx context.Context, dirs []string) (string, error) {
	for {
		for _, d := range dirs {
			b, err := os.ReadFile(filepath.Join(d, cluster.BootstrapTokenFile))
			if err == nil {
				return strings.TrimSpace(string(b)), nil
			}
			if !errors.Is(err, os.ErrNotExist) {
				return "", err
			}
		}
		select {
		case <-ctx.Done():
			return "", fmt.Errorf("no bootstrap admin token in %v (deleted after an earlier run? use that run's token): %w", dirs, ctx.Err())
		case <-time.After(20 * time.Millisecond):
		}
	}
}

// devWorkerToken makes the token of a dev cluster's embedded workers.
func devWorkerToken(ctx context.Context, addrs []string, admin string, tlsFiles tlsutil.Files) (string, error) {
	c, err := client.New(client.Config{Addrs: addrs, Token: admin, TLSFiles: tlsFiles})
	if err != nil {
		return "", err
	}
	defer c.Close()
	resp, err := c.CreateToken(ctx, "dev-worker", []string{"worker"}, 0)
	if err != nil {
		return "", fmt.Errorf("create the dev workers' token: %w", err)
	}
	return resp.GetSecret(), nil
}
