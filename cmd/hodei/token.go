package main

// hodei token create|list|revoke (auth, issue 12) and the --token flag of
// every client command.

import (
	"context"
	"errors"
	"fmt"
	"os"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"

	hodeiv1 "github.com/hodei-io/hodei/proto/hodeiv1"
)

func init() { register(newTokenCmd) }

// authOpts are the client commands' credential flags.
type authOpts struct {
	token     string
	tokenFile string
}

var authFlags authOpts

// addAuthFlags adds --token (env HODEI_TOKEN) and --token-file to every
// command. A file keeps the secret out of the process list and the shell's
// history; its trailing newline is ignored.
func addAuthFlags(root *cobra.Command) {
	root.PersistentFlags().StringVar(&authFlags.token, "token", os.Getenv("HODEI_TOKEN"), "bearer token for a cluster with auth on (env HODEI_TOKEN)")
	root.PersistentFlags().StringVar(&authFlags.tokenFile, "token-file", os.Getenv("HODEI_TOKEN_FILE"), "read the bearer token from this file (env HODEI_TOKEN_FILE)")
}

// clientToken is the token client commands send ("" = none).
func clientToken() (string, error) {
	if authFlags.tokenFile == "" {
		return authFlags.token, nil
	}
	if authFlags.token != "" && os.Getenv("HODEI_TOKEN") != authFlags.token {
		return "", errors.New("give --token or --token-file, not both")
	}
	b, err := os.ReadFile(authFlags.tokenFile)
	if err != nil {
		return "", fmt.Errorf("token file: %w", err)
	}
	return strings.TrimSpace(string(b)), nil
}

func newTokenCmd() *cobra.Command {
	cmd := &cobra.Command{
		Use:   "token",
		Short: "Bearer tokens and their roles (admin only)",
		Long: `Tokens are kept in the meta group (only a SHA-256 of each secret) and checked
by every node. Roles:

  admin                         everything: membership, snapshots, tenant settings, tokens, every tenant
  tenant:NAME:submit            submit, cancel, retry, requeue, schedules of tenant NAME (and read it)
  tenant:NAME:read              get, list, watch, logs, dead jobs, schedules of tenant NAME
  worker                        lease and complete jobs of every tenant and kind
  worker:tenants=a,b;kinds=x,y  ... only of these tenants / kinds (either part may be left out)

Clients send a token with --token or HODEI_TOKEN (or --token-file).`,
	}
	cmd.AddCommand(newTokenCreateCmd(), newTokenListCmd(), newTokenRevokeCmd(), newTokenNodeSecretCmd())
	return cmd
}

func newTokenCreateCmd() *cobra.Command {
	var (
		name  string
		roles []string
		ttl   time.Duration
	)
	cmd := &cobra.Command{
		Use:   "create --name NAME --role ROLE [--role ROLE...] [--ttl D]",
		Short: "Create a token; its secret is printed once",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if ttl < 0 {
				return fmt.Errorf("--ttl must be >= 0, got %v", ttl)
			}
			c, err := newAPIClient()
			if err != nil {
				return err
			}
			defer c.Close()
			resp, err := c.CreateToken(cmd.Context(), name, roles, ttl.Milliseconds())
			if err != nil {
				return rpcError(err)
			}
			w := cmd.OutOrStdout()
			if jsonOutput() {
				return printProto(w, resp)
			}
			fmt.Fprintf(w, "token %s (%s) roles %s expires %s\n", resp.GetToken().GetId(), resp.GetToken().GetName(),
				strings.Join(resp.GetToken().GetRoles(), " "), expiry(resp.GetToken()))
			fmt.Fprintf(w, "secret (shown once): %s\n", resp.GetSecret())
			return nil
		},
	}
	cmd.Flags().StringVar(&name, "name", "", "a label for the token, [A-Za-z0-9._-]{1,64} (required)")
	cmd.Flags().StringArrayVar(&roles, "role", nil, "a role (repeatable, at least one)")
	cmd.Flags().DurationVar(&ttl, "ttl", 0, "expire after this long (0 = never)")
	_ = cmd.MarkFlagRequired("name")
	_ = cmd.MarkFlagRequired("role")
	return cmd
}

func expiry(t *hodeiv1.TokenInfo) string {
	if t.GetExpiresAtMs() == 0 {
		return "never"
	}
	return fmtMillis(t.GetExpiresAtMs())
}

func newTokenListCmd() *cobra.Command {
	var all bool
	cmd := &cobra.Command{
		Use:   "list [--all]",
		Short: "List tokens (never their secrets)",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			c, err := newAPIClient()
			if err != nil {
				return err
			}
			defer c.Close()
			list, err := c.ListTokens(cmd.Context(), all)
			if err != nil {
				return rpcError(err)
			}
			w := cmd.OutOrStdout()
			if jsonOutput() {
				return printProto(w, &hodeiv1.TokenListResponse{Tokens: list})
			}
			tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
			fmt.Fprintln(tw, "ID\tNAME\tROLES\tCREATED\tEXPIRES\tSTATE\tCREATED BY")
			for _, t := range list {
				state := "active"
				if t.GetRevoked() {
					state = "revoked " + fmtMillis(t.GetRevokedAtMs())
				} else if t.GetExpiresAtMs() != 0 && t.GetExpiresAtMs() <= time.Now().UnixMilli() {
					state = "expired"
				}
				fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\t%s\n", t.GetId(), t.GetName(), strings.Join(t.GetRoles(), ","),
					fmtMillis(t.GetCreatedAtMs()), expiry(t), state, t.GetCreatedBy())
			}
			return tw.Flush()
		},
	}
	cmd.Flags().BoolVar(&all, "all", false, "include revoked tokens")
	return cmd
}

func newTokenRevokeCmd() *cobra.Command {
	return &cobra.Command{
		Use:   "revoke ID",
		Short: "Revoke a token: every node refuses it once its meta replica applied the revocation",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			c, err := newAPIClient()
			if err != nil {
				return err
			}
			defer c.Close()
			ctx, cancel := context.WithTimeout(cmd.Context(), 30*time.Second)
			defer cancel()
			t, err := c.RevokeToken(ctx, args[0])
			if err != nil {
				return rpcError(err)
			}
			if jsonOutput() {
				return printProto(cmd.OutOrStdout(), t)
			}
			fmt.Fprintf(cmd.OutOrStdout(), "token %s (%s) revoked\n", t.GetId(), t.GetName())
			return nil
		},
	}
}
