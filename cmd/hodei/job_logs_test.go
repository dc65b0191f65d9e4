package main

import (
	"encoding/json"
	"strings"
	"testing"
)

// `hodei job logs` against a dev cluster: a shell job's stdout and stderr
// lines, streamed by the dev worker, in text (stdout lines on stdout) and
// JSON lines; --follow of an ended job prints them and ends.
func TestCLIJobLogs(t *testing.T) {
	addr := startTestDev(t, devOptions{nodes: 3, workers: 1})
	out, err := run(t, addr, "job", "submit", "--wait", "--shell", "--", "echo one; echo two >&2; echo three")
	if err != nil || !strings.Contains(out, "SUCCEEDED") {
		t.Fatalf("submit: %v\n%s", err, out)
	}
	var id string
	for _, line := range strings.Split(out, "\n") {
		if f := strings.Fields(line); len(f) == 2 && f[0] == "ID:" {
			id = f[1]
		}
	}
	out, err = run(t, addr, "job", "logs", id)
	if err != nil || out != "one\nthree\n" {
		t.Fatalf("logs: %v\n%q", err, out)
	}
	out, err = run(t, addr, "job", "logs", id, "--follow")
	if err != nil || out != "one\nthree\n" {
		t.Fatalf("logs --follow: %v\n%q", err, out)
	}
	out, err = run(t, addr, "job", "logs", id, "--attempt", "1", "-o", "json")
	if err != nil {
		t.Fatal(err)
	}
	var got []string
	for _, line := range strings.Split(strings.TrimSpace(out), "\n") {
		var l struct {
			Seq    string `json:"seq"`
			Stream string `json:"stream"`
			Data   string `json:"data"` // base64
		}
		if err := json.Unmarshal([]byte(line), &l); err != nil {
			t.Fatalf("not a JSON line: %q: %v", line, err)
		}
		got = append(got, l.Seq+" "+l.Stream+" "+l.Data)
	}
	// stdout and stderr are two pipes: "two" may come anywhere; seqs are 1..3.
	var stdout []string
	all := strings.Join(got, ",")
	for _, g := range got {
		if strings.Contains(g, "STDOUT") {
			stdout = append(stdout, g[2:])
		}
	}
	if len(got) != 3 || !strings.Contains(all, "1 ") || !strings.Contains(all, "2 ") || !strings.Contains(all, "3 ") ||
		!strings.Contains(all, "LOG_STREAM_STDERR dHdv") || strings.Join(stdout, ",") != "LOG_STREAM_STDOUT b25l,LOG_STREAM_STDOUT dGhyZWU=" {
		t.Fatalf("json lines %v", got)
	}
	for _, bad := range [][]string{{"job", "logs", "nope"}, {"job", "logs", id, "--attempt", "-1"}, {"job", "logs", id, "--attempt", "5"}} {
		if _, err := run(t, append([]string{addr}, bad...)...); err == nil {
			t.Errorf("%v: no error", bad)
		}
	}
}
