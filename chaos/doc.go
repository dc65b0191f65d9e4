// Package chaos is Hodei's chaos harness. It starts a real cluster of
// separate `hodei server` processes and `hodei worker` processes (on loopback,
// or each server in its own network namespace when partitions are wanted),
// drives a recorded workload through the public gRPC API, injects faults from
// a seeded schedule (SIGKILL, SIGSTOP/SIGCONT, network partitions, worker
// crashes and pauses), heals, waits for the queue to drain, and then checks
// the history against the invariants of issue 4 and writes a report.
//
// The checker (Check) is pure: it takes the recorded Evidence and returns a
// CheckResult, so it is tested with synthetic histories that pass and fail.
//
// Server code must never import this package.
package chaos
