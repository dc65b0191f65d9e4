package main

import (
	"errors"
	"fmt"
	"log/slog"
	"os"
	"os/signal"
	"syscall"

	"github.com/hodei-io/hodei/chaos"
	"github.com/spf13/cobra"
)

func init() { register(newChaosCmd) }

// errChaosViolations makes the command exit non-zero after printing the report.
var errChaosViolations = errors.New("chaos: invariant violations (see the report)")

func newChaosCmd() *cobra.Command {
	root := &cobra.Command{Use: "chaos", Short: "Chaos harness: real processes, faults, history checks"}
	cfg := chaos.DefaultConfig()
	var unsafeDemo bool
	run := &cobra.Command{
		Use:   "run",
		Short: "Start a real cluster, run load, inject faults, check invariants, write a report",
		Long: `Starts --nodes hodei server processes and --workers hodei worker processes, drives a
recorded workload, injects faults (--faults: mixed, kill-leader, kill-random, pause-leader,
partition-leader, partition-majority, partition-ring, workers, membership, clock-skew, disk-full, slow-disk,
worker-crash, stream-node, worker-pause, none) on a schedule fixed by
--seed, heals, waits for the queue to drain and checks the history. Writes report.json,
summary.txt, history.jsonl and every process's log under --out. Exits non-zero on any
invariant violation. Partitions need root and network namespaces (ip netns).`,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if unsafeDemo {
				// show that the checker fails against a deliberately broken
				// cluster: acknowledged submits die with a killed leader
				cfg.ServerArgs = append(cfg.ServerArgs, "--unsafe-ack-before-commit")
				if !cmd.Flags().Changed("faults") {
					cfg.Faults = chaos.FaultKillLeader
				}
			}
			if cfg.Binary == "" {
				exe, err := os.Executable()
				if err != nil {
					return err
				}
				cfg.Binary = exe
			}
			cfg.Log = slog.New(slog.NewTextHandler(cmd.ErrOrStderr(), nil))
			ctx, stop := signal.NotifyContext(cmd.Context(), os.Interrupt, syscall.SIGTERM)
			defer stop()
			rep, err := chaos.Run(ctx, cfg)
			if rep != nil {
				if global.output == "json" {
					b, _ := os.ReadFile(rep.RunDir + "/report.json")
					fmt.Fprintln(cmd.OutOrStdout(), string(b))
				} else {
					rep.WriteSummary(cmd.OutOrStdout())
				}
			}
			if err != nil {
				return err
			}
			if !rep.Passed() {
				return errChaosViolations
			}
			return nil
		},
	}
	f := run.Flags()
	f.IntVar(&cfg.Nodes, "nodes", cfg.Nodes, "server processes")
	f.IntVar(&cfg.Schedules, "schedules", cfg.Schedules, "cron schedules firing every second through the faults, checked for exactly one job per slot (invariant 10)")
	f.DurationVar(&cfg.Duration, "duration", cfg.Duration, "time under load and faults (then heal, drain, check)")
	f.StringVar(&cfg.Faults, "faults", cfg.Faults, "mixed|kill-leader|kill-random|pause-leader|partition-leader|partition-majority|partition-ring|workers|membership|clock-skew|disk-full|slow-disk|worker-crash|stream-node|worker-pause|none (membership, clock-skew, disk-full, slow-disk, worker-crash, stream-node and worker-pause are not part of mixed)")
	f.Int64Var(&cfg.Seed, "seed", cfg.Seed, "seed of the fault schedule and the workload")
	f.StringVar(&cfg.Binary, "binary", "", "hodei binary to run (default: this executable)")
	f.StringVar(&cfg.Out, "out", cfg.Out, "directory for the report, history and logs")
	f.Float64Var(&cfg.Rate, "rate", cfg.Rate, "offered load: jobs submitted per second (all clients)")
	f.Float64Var(&cfg.ReadRate, "read-rate", cfg.ReadRate, "linearizable gets, stale gets and cancels per second (all clients)")
	f.Float64Var(&cfg.ShellRate, "shell-rate", cfg.ShellRate, "of --rate, shell jobs per second (a process each); the rest are in-process handler jobs")
	f.Float64Var(&cfg.BatchShare, "batch-share", cfg.BatchShare, "share of jobs submitted in explicit batches of 2-20 (the rest: single submits coalesced by a client.Submitter)")
	f.IntVar(&cfg.Clients, "clients", cfg.Clients, "concurrent clients")
	f.IntVar(&cfg.Workers, "workers", cfg.Workers, "worker processes")
	f.IntVar(&cfg.Concurrency, "concurrency", cfg.Concurrency, "jobs per worker")
	f.IntVar(&cfg.Tenants, "tenants", cfg.Tenants, "tenants the jobs are spread over")
	f.StringVar(&cfg.Network, "network", cfg.Network, "auto (namespaces when partitions are wanted), netns or loopback")
	f.DurationVar(&cfg.LeaseTTL, "lease-ttl", cfg.LeaseTTL, "lease TTL given to the servers (and used for worker fault lengths)")
	f.DurationVar(&cfg.ElectionTimeout, "election-timeout", cfg.ElectionTimeout, "the servers' election timeout, for pause lengths and the drain bound")
	f.DurationVar(&cfg.DrainBound, "drain-bound", 0, "allowed drain time after heal (default lease TTL + 5 election timeouts + 20s)")
	f.DurationVar(&cfg.OpTimeout, "op-timeout", cfg.OpTimeout, "timeout of one client attempt")
	f.StringArrayVar(&cfg.ServerArgs, "server-arg", nil, "extra flag for every server, repeatable (e.g. --server-arg=--unsafe-ack-before-commit)")
	f.StringArrayVar(&cfg.WorkerArgs, "worker-arg", nil, "extra flag for every worker, repeatable")
	f.BoolVar(&cfg.TLS, "tls", false, "run servers, workers and the harness with mutual TLS and encrypted gossip (certificates made in --out/tls)")
	f.BoolVar(&cfg.Auth, "auth", false, "run the servers with tokens on (the harness's clients and workers use an admin token it makes)")
	f.BoolVar(&unsafeDemo, "unsafe-ack-demo", false, "run the servers with --unsafe-ack-before-commit (and --faults kill-leader unless set): the checker must FAIL (exit non-zero) with lost jobs")
	root.AddCommand(run)
	return root
}
