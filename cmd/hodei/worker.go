package main

import (
	"errors"
	"strings"
	"time"

	"github.com/spf13/cobra"

	"github.com/hodei-io/hodei/chaos"
	"github.com/hodei-io/hodei/client"
	"github.com/hodei-io/hodei/worker"
)

func init() { register(newWorkerCmd) }

func newWorkerCmd() *cobra.Command {
	var (
		servers, id, logLevel          string
		testExecLog                    string // hidden, test-only: the chaos harness's handler jobs
		concurrency                    int
		labels                         []string
		leaseTTL, pollWait, drainAfter time.Duration // pollWait: deprecated, ignored
	)
	cmd := &cobra.Command{
		Use:   "worker",
		Short: "Run a worker agent: lease jobs and run them as shell commands",
		Long: `Run a worker agent. It keeps a worker stream to one node (moving to the next
on failure), is pushed command jobs whose labels it carries, runs up to
--concurrency of them at once, extends their leases and reports results. On
SIGINT/SIGTERM it takes no new work, lets running jobs finish for up to
--drain-timeout (then kills them), reports them and exits.`,
		Example: `  hodei worker --server 10.0.0.1:7401,10.0.0.2:7401 --concurrency 8 --label gpu=true`,
		Args:    cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			log, err := newLogger(logLevel)
			if err != nil {
				return err
			}

			addrList := addrs()
			if servers != "" {
				addrList = nil
				for _, a := range strings.Split(servers, ",") {
					if a = strings.TrimSpace(a); a != "" {
						addrList = append(addrList, a)
					}
				}
			}
			kvs, err := parseKVs("label", labels)
			if err != nil {
				return err
			}
			lm := make(map[string]string, len(kvs))
			for _, kv := range kvs {
				lm[kv.GetKey()] = kv.GetValue()
			}
			tok, err := clientToken()
			if err != nil {
				return err
			}
			c, err := client.New(client.Config{Addrs: addrList, TLSFiles: clientTLSFiles, Token: tok})
			if err != nil {
				return err
			}
			defer c.Close()
			defer onSIGHUP(log, "tls files", c.ReloadTLS)() // tls.go
			w, err := worker.New(worker.Config{
				Client:       c,
				ID:           id,
				Concurrency:  concurrency,
				Labels:       lm,
				LeaseTTL:     leaseTTL,
				DrainTimeout: drainAfter,
				Logger:       log,
			})
			if err != nil {
				return err
			}
			if testExecLog != "" {
				h, closeLog, err := chaos.ExecHandler(testExecLog)
				if err != nil {
					return err
				}
				defer closeLog()
				w.Handle(chaos.ExecKind, h)
			}
			ctx, cancel := signalContext(cmd)
			defer cancel()
			log.Info("worker connecting", "id", w.ID(), "servers", strings.Join(addrList, ","), "labels", lm)
			if err := w.Run(ctx); err != nil && !errors.Is(err, ctx.Err()) {
				return err
			}
			return nil
		},
	}
	f := cmd.Flags()
	f.StringVar(&servers, "server", "", "comma-separated node addresses (default: the global --addr)")
	f.IntVar(&concurrency, "concurrency", worker.DefaultConcurrency, "jobs run at once")
	f.StringArrayVar(&labels, "label", nil, "worker label K=V (repeatable); jobs requiring labels go to workers that carry them")
	f.DurationVar(&leaseTTL, "lease-ttl", worker.DefaultLeaseTTL, "lease TTL; heartbeats every TTL/3")
	f.DurationVar(&pollWait, "poll-wait", 0, "ignored: the worker stream pushes work")
	_ = f.MarkDeprecated("poll-wait", "the worker stream pushes work as slots free up")
	f.DurationVar(&drainAfter, "drain-timeout", worker.DefaultDrainTimeout, "on shutdown, how long running jobs may finish before being killed")
	f.StringVar(&id, "id", "", "worker id (default hostname-pid-random)")
	f.StringVar(&logLevel, "log-level", "info", "debug|info|warn|error")
	f.StringVar(&testExecLog, "test-exec-log", "", "test only: also run the chaos harness's handler jobs (kind "+chaos.ExecKind+"), appending their execution lines to this file")
	_ = f.MarkHidden("test-exec-log")
	return cmd
}
