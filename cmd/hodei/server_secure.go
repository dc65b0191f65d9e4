package main

import (
	"fmt"
	"io"
	"log/slog"
	"strings"

	"github.com/spf13/cobra"

	"github.com/hodei-io/hodei/cluster"
)

// The production gate (issue 12). A `hodei server` started without mutual
// TLS or without tokens lets anyone who reaches its port read every
// tenant's jobs, submit as anyone, remove nodes and restore snapshots (in
// the clear, without TLS). Nothing in a deployment should end up that way
// by omission — Temporal's "no authorizer configured allows everything" —
// so the server refuses to start unless both are on or the operator says
// --insecure, and then says so loudly, once in the log and once on stderr.
// `hodei dev` is a single-process lab cluster and stays open by default
// (it warns that auth is off).

// addInsecureFlag adds --insecure; the returned function checks cfg
// against it after the other flags are applied.
func addInsecureFlag(cmd *cobra.Command) func(cfg cluster.Config, log *slog.Logger, stderr io.Writer) error {
	var insecure bool
	cmd.Flags().BoolVar(&insecure, "insecure", false, "run without mutual TLS and/or tokens (a lab or a private network you trust; docs/security.md); without it the server refuses to start unless --tls-* and --auth are given")
	return func(cfg cluster.Config, log *slog.Logger, stderr io.Writer) error {
		return checkSecure(cfg, insecure, log, stderr)
	}
}

// checkSecure is the gate: nil when TLS and auth are on; with insecure, a
// warning naming what is off; otherwise an error naming it and the flags.
func checkSecure(cfg cluster.Config, insecure bool, log *slog.Logger, stderr io.Writer) error {
	var missing []string
	if !cfg.TLSEnabled() {
		missing = append(missing, "mutual TLS (--tls-ca, --tls-cert, --tls-key; make them with `hodei tls init`)")
	}
	if !cfg.Auth.Enabled {
		missing = append(missing, "tokens (--auth, with --auth-node-secret-file on every node)")
	}
	if len(missing) == 0 {
		return nil
	}
	what := strings.Join(missing, " and ")
	if !insecure {
		return fmt.Errorf("refusing to start without %s: anyone who reaches the port could read and change every tenant's jobs and the membership. "+
			"Give them (docs/security.md), or pass --insecure to run this way on purpose", what)
	}
	log.Warn("INSECURE: started with --insecure, without "+what, "insecure", true)
	fmt.Fprintf(stderr, "WARNING: INSECURE: running without %s (--insecure)\n", what)
	return nil
}
