package main

// Output helpers shared by the client commands: --output json prints protos
// with protojson, --output text prints readable blocks and tables; gRPC
// errors become "<code>: <message>" (main prefixes "error: " and exits 1).

import (
	"fmt"
	"io"
	"strconv"
	"strings"
	"text/tabwriter"
	"time"
	"unicode/utf8"

	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/proto"

	"github.com/hodei-io/hodei/client"
	hodeiv1 "github.com/hodei-io/hodei/proto/hodeiv1"
)

// newAPIClient connects to the --addr nodes.
func newAPIClient() (*client.Client, error) {
	tok, err := clientToken()
	if err != nil {
		return nil, err
	}
	return client.New(client.Config{Addrs: addrs(), TLSFiles: clientTLSFiles, Token: tok})
}

// jsonOutput reports whether --output json was asked for.
func jsonOutput() bool { return global.output == "json" }

// rpcError turns a gRPC status error into "<code>: <message>"; other errors
// are returned unchanged.
func rpcError(err error) error {
	if err == nil {
		return nil
	}
	if st, ok := status.FromError(err); ok {
		return fmt.Errorf("%s: %s", st.Code(), st.Message())
	}
	return err
}

// printProto writes m as indented protojson (unpopulated fields omitted).
func printProto(w io.Writer, m proto.Message) error {
	b, err := protojson.MarshalOptions{Multiline: true, Indent: "  ", EmitUnpopulated: false}.Marshal(m)
	if err != nil {
		return err
	}
	_, err = fmt.Fprintf(w, "%s\n", b)
	return err
}

// stateName is a job state without its JOB_STATE_ prefix.
func stateName(s hodeiv1.JobState) string {
	return strings.TrimPrefix(s.String(), "JOB_STATE_")
}

// parseState parses a --state value (case-insensitive, with or without the prefix).
func parseState(s string) (hodeiv1.JobState, error) {
	if s == "" {
		return hodeiv1.JobState_JOB_STATE_UNSPECIFIED, nil
	}
	name := "JOB_STATE_" + strings.TrimPrefix(strings.ToUpper(s), "JOB_STATE_")
	if name == "JOB_STATE_CANCELED" {
		name = "JOB_STATE_CANCELLED"
	}
	v, ok := hodeiv1.JobState_value[name]
	if !ok || v == 0 {
		return 0, fmt.Errorf("unknown state %q: want pending, running, succeeded, failed, cancelled or dead", s)
	}
	return hodeiv1.JobState(v), nil
}

// terminal reports whether a job state is final.
func terminal(s hodeiv1.JobState) bool {
	switch s {
	case hodeiv1.JobState_JOB_STATE_SUCCEEDED, hodeiv1.JobState_JOB_STATE_FAILED, hodeiv1.JobState_JOB_STATE_CANCELLED,
		hodeiv1.JobState_JOB_STATE_DEAD:
		return true
	}
	return false
}

// parseKVs parses repeated K=V flag values.
func parseKVs(flag string, vals []string) ([]*hodeiv1.KeyValue, error) {
	var out []*hodeiv1.KeyValue
	for _, v := range vals {
		k, val, ok := strings.Cut(v, "=")
		if !ok || strings.TrimSpace(k) == "" {
			return nil, fmt.Errorf("--%s %q: want KEY=VALUE", flag, v)
		}
		out = append(out, &hodeiv1.KeyValue{Key: k, Value: val})
	}
	return out, nil
}

// commandLine renders a spec's command for humans.
func commandLine(spec *hodeiv1.JobSpec) string {
	if spec.GetShell() && len(spec.GetCommand()) > 0 {
		return "sh -c " + strconv.Quote(spec.GetCommand()[0])
	}
	parts := make([]string, len(spec.GetCommand()))
	for i, a := range spec.GetCommand() {
		if a == "" || strings.ContainsAny(a, " \t\n\"'\\$`") {
			a = strconv.Quote(a)
		}
		parts[i] = a
	}
	return strings.Join(parts, " ")
}

func tenantName(spec *hodeiv1.JobSpec) string {
	if t := spec.GetTenant(); t != "" {
		return t
	}
	return "default"
}

func fmtMillis(ms int64) string {
	return time.UnixMilli(ms).Local().Format("2006-01-02 15:04:05.000 MST")
}

func kvString(kvs []*hodeiv1.KeyValue) string {
	parts := make([]string, len(kvs))
	for i, kv := range kvs {
		parts[i] = kv.GetKey() + "=" + kv.GetValue()
	}
	return strings.Join(parts, " ")
}

// printJobText writes a readable block with every populated field of job,
// including the last result's output as text.
func printJobText(w io.Writer, job *hodeiv1.Job) error {
	spec := job.GetSpec()
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	row := func(k, v string) { fmt.Fprintf(tw, "%s:\t%s\n", k, v) }
	rowIf := func(cond bool, k string, v func() string) {
		if cond {
			row(k, v())
		}
	}
	row("ID", job.GetId())
	row("State", stateName(job.GetState()))
	row("Tenant", tenantName(spec))
	row("Command", commandLine(spec))
	row("Priority", strconv.Itoa(int(spec.GetPriority())))
	row("Attempts", fmt.Sprintf("%d (max %d)", job.GetAttempts(), spec.GetMaxAttempts()))
	rowIf(len(spec.GetEnv()) > 0, "Env", func() string { return kvString(spec.GetEnv()) })
	rowIf(len(spec.GetLabels()) > 0, "Labels", func() string { return kvString(spec.GetLabels()) })
	rowIf(len(spec.GetConstraints()) > 0, "Constraints", func() string { return constraintsString(spec.GetConstraints()) })
	rowIf(job.GetUnmatched() != "", "Unmatched", job.GetUnmatched)
	rowIf(spec.GetTimeoutMs() > 0, "Timeout", func() string { return (time.Duration(spec.GetTimeoutMs()) * time.Millisecond).String() })
	rowIf(spec.GetDelayMs() > 0, "Delay", func() string { return (time.Duration(spec.GetDelayMs()) * time.Millisecond).String() })
	rowIf(spec.GetBackoffBaseMs() > 0 || spec.GetBackoffMaxMs() > 0, "Backoff", func() string {
		return fmt.Sprintf("base %v, max %v", time.Duration(spec.GetBackoffBaseMs())*time.Millisecond, time.Duration(spec.GetBackoffMaxMs())*time.Millisecond)
	})
	rowIf(spec.GetIdempotencyKey() != "", "Idempotency key", spec.GetIdempotencyKey)
	row("Shard/seq", fmt.Sprintf("%d/%d", job.GetShard(), job.GetSeq()))
	rowIf(job.GetCreatedAtMs() > 0, "Created", func() string { return fmtMillis(job.GetCreatedAtMs()) })
	rowIf(job.GetUpdatedAtMs() > 0, "Updated", func() string { return fmtMillis(job.GetUpdatedAtMs()) })
	rowIf(job.GetReadyAtMs() > 0 && job.GetState() == hodeiv1.JobState_JOB_STATE_PENDING, "Ready at", func() string { return fmtMillis(job.GetReadyAtMs()) })
	rowIf(job.GetLeaseToken() > 0, "Lease", func() string {
		return fmt.Sprintf("token %d, worker %s, expires %s", job.GetLeaseToken(), job.GetLeaseWorker(), fmtMillis(job.GetLeaseExpiresAtMs()))
	})
	rowIf(job.GetFinishedAtMs() > 0, "Finished", func() string { return fmtMillis(job.GetFinishedAtMs()) })
	rowIf(job.GetCancelReason() != "", "Cancel reason", job.GetCancelReason)
	rowIf(job.GetPipelineId() != "", "Pipeline", func() string { // issue 13
		return fmt.Sprintf("%s, step %s", job.GetPipelineId(), job.GetPipelineStep())
	})
	rowIf(job.GetScheduleId() != "", "Schedule", func() string { // issue 11 cron
		return fmt.Sprintf("%s, slot %s", job.GetScheduleId(), fmtMillis(job.GetScheduleSlotMs()))
	})
	deadRows(row, job) // issue 11, job_dead.go
	if r := job.GetLastResult(); r != nil {
		row("Last result", "")
		row("  Exit code", strconv.Itoa(int(r.GetExitCode())))
		rowIf(r.GetError() != "", "  Error", r.GetError)
		rowIf(r.GetWorkerId() != "", "  Worker", r.GetWorkerId)
		rowIf(r.GetStartedAtMs() > 0, "  Started", func() string { return fmtMillis(r.GetStartedAtMs()) })
		rowIf(r.GetFinishedAtMs() > 0, "  Finished", func() string {
			if r.GetStartedAtMs() == 0 {
				return fmtMillis(r.GetFinishedAtMs())
			}
			return fmt.Sprintf("%s (took %v)", fmtMillis(r.GetFinishedAtMs()), time.Duration(r.GetFinishedAtMs()-r.GetStartedAtMs())*time.Millisecond)
		})
	}
	if err := tw.Flush(); err != nil {
		return err
	}
	if out := job.GetLastResult().GetOutput(); len(out) > 0 {
		s := string(out)
		if !utf8.ValidString(s) {
			s = strings.ToValidUTF8(s, "\uFFFD")
		}
		fmt.Fprintln(w, "  Output:")
		for _, line := range strings.Split(strings.TrimSuffix(s, "\n"), "\n") {
			fmt.Fprintln(w, "    "+line)
		}
	}
	return printAttemptHistory(w, job) // issue 11, job_dead.go
}

// printJob prints one job in the --output format.
func printJob(w io.Writer, job *hodeiv1.Job) error {
	if jsonOutput() {
		return printProto(w, job)
	}
	return printJobText(w, job)
}

// printJobsTable writes jobs as a table: ID, TENANT, STATE, ATTEMPTS, PRIO, COMMAND.
func printJobsTable(w io.Writer, jobs []*hodeiv1.Job) error {
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "ID\tTENANT\tSTATE\tATTEMPTS\tPRIO\tCOMMAND")
	for _, j := range jobs {
		cmd := commandLine(j.GetSpec())
		if r := []rune(cmd); len(r) > 60 {
			cmd = string(r[:57]) + "..."
		}
		cmd = strings.NewReplacer("\n", " ", "\t", " ").Replace(cmd)
		fmt.Fprintf(tw, "%s\t%s\t%s\t%d\t%d\t%s\n", j.GetId(), tenantName(j.GetSpec()), stateName(j.GetState()),
			j.GetAttempts(), j.GetSpec().GetPriority(), cmd)
	}
	return tw.Flush()
}
