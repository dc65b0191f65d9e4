// Command hodei is the single Hodei binary: server, dev cluster, CLI,
// worker agent, load generator and chaos harness.
package main

import (
	"fmt"
	"os"
	"strings"

	"github.com/spf13/cobra"
)

// version is set at build time with -ldflags "-X main.version=...".
var version = "dev"

// globalOpts are the flags shared by every client command.
type globalOpts struct {
	addr   string // comma-separated node addresses
	output string // text|json
	logFmt string // text|json: the format of log lines (server, dev, worker)
}

var global globalOpts

func newRootCmd() *cobra.Command {
	root := &cobra.Command{
		Use:           "hodei",
		Short:         "Hodei: a replicated job scheduler",
		SilenceUsage:  true,
		SilenceErrors: true,
		Version:       version,
		PersistentPreRunE: func(cmd *cobra.Command, _ []string) error {
			switch global.output {
			case "text", "json":
			default:
				return fmt.Errorf("--output must be text or json, got %q", global.output)
			}
			_, err := clientTLS() // tls.go: all three files or none
			return err
		},
	}
	defAddr := os.Getenv("HODEI_ADDR")
	if defAddr == "" {
		defAddr = "127.0.0.1:7401"
	}
	root.PersistentFlags().StringVar(&global.addr, "addr", defAddr, "comma-separated node gRPC addresses (env HODEI_ADDR)")
	root.PersistentFlags().StringVarP(&global.output, "output", "o", "text", "output format: text or json")
	root.PersistentFlags().StringVar(&global.logFmt, "log-format", "text", "log line format of server, dev and worker: text or json (one object per line)")
	addClientTLSFlags(root) // tls.go (issue 12)
	addAuthFlags(root)      // --token, --token-file (token.go)

	for _, c := range subcommands {
		root.AddCommand(c())
	}
	return root
}

// subcommands is filled by the init functions of the files that define them.
var subcommands []func() *cobra.Command

func register(f func() *cobra.Command) { subcommands = append(subcommands, f) }

// addrs returns the --addr list.
func addrs() []string {
	var out []string
	for _, a := range strings.Split(global.addr, ",") {
		if a = strings.TrimSpace(a); a != "" {
			out = append(out, a)
		}
	}
	return out
}

func main() {
	if err := newRootCmd().Execute(); err != nil {
		fmt.Fprintln(os.Stderr, "error:", err)
		os.Exit(1)
	}
}
