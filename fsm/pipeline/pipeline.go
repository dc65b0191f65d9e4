// Package pipeline is the pure core of Hodei pipelines (DAGs of jobs): the
// pipeline file decoder (YAML or JSON), fan-out expansion, the validator
// and the trigger rules.
//
// Compile and Decide are called from the deterministic shard FSM, so they
// follow its rules: no clock, no randomness, no goroutines, no map
// iteration where order matters; the same input gives the same plan and
// the same error text on every replica. Everything is linear: Compile is
// O(steps + edges + bytes) and Decide is O(1).
//
// Limits (stated here and in docs/architecture.md, "Pipelines"): a
// pipeline has at most MaxSteps steps after fan-out, MaxEdges dependency
// edges after fan-out, and MaxBytes of encoded spec, both as submitted and
// as stored after expansion (argo#1186: DAG objects too big for the store).
package pipeline

import (
	"errors"
	"fmt"
	"strconv"
	"strings"

	"github.com/hodei-io/hodei/proto/hodeiv1"
)

// Limits of one pipeline.
const (
	// MaxSteps bounds the steps of a pipeline after fan-out expansion.
	MaxSteps = 10_000
	// MaxEdges bounds the dependency edges after fan-out expansion.
	MaxEdges = 100_000
	// MaxBytes bounds the encoded spec (the file, the submitted proto and
	// the expanded steps as stored).
	MaxBytes = 8 << 20
	// MaxIDBytes bounds a step id (as written, before "[i]").
	MaxIDBytes = 128
	// MaxNameBytes bounds the pipeline's name.
	MaxNameBytes = 256
	// maxProblems is how many problems one error lists.
	maxProblems = 20
)

// ItemPlaceholder is replaced by a fan-out instance's item in its job's
// command, env values and payload.
const ItemPlaceholder = "{{item}}"

// ErrInvalid is wrapped by every validation error (*Error).
var ErrInvalid = errors.New("invalid pipeline")

// Error is a validation failure listing every problem found (at most
// maxProblems are kept; More counts the rest).
type Error struct {
	Problems []string
	More     int
}

// Error implements error: "invalid pipeline: p1; p2; ... (and N more)".
func (e *Error) Error() string {
	var b strings.Builder
	b.WriteString(ErrInvalid.Error())
	b.WriteString(": ")
	b.WriteString(strings.Join(e.Problems, "; "))
	if e.More > 0 {
		fmt.Fprintf(&b, " (and %d more)", e.More)
	}
	return b.String()
}

// Unwrap makes errors.Is(err, ErrInvalid) true.
func (e *Error) Unwrap() error { return ErrInvalid }

type problems struct{ e Error }

func (p *problems) add(format string, args ...any) {
	if len(p.e.Problems) >= maxProblems {
		p.e.More++
		return
	}
	p.e.Problems = append(p.e.Problems, fmt.Sprintf(format, args...))
}

func (p *problems) any() bool { return len(p.e.Problems) > 0 }

func (p *problems) err() error {
	if !p.any() {
		return nil
	}
	e := p.e
	return &e
}

// ValidStepID reports whether id is a step id as written in a file:
// 1..MaxIDBytes bytes of [A-Za-z0-9._-].
func ValidStepID(id string) bool {
	if id == "" || len(id) > MaxIDBytes {
		return false
	}
	for i := 0; i < len(id); i++ {
		c := id[i]
		switch {
		case c >= 'a' && c <= 'z', c >= 'A' && c <= 'Z', c >= '0' && c <= '9', c == '.', c == '_', c == '-':
		default:
			return false
		}
	}
	return true
}

// InstanceID is the id of fan-out instance i of step id: "id[i]".
func InstanceID(id string, i int) string {
	return id + "[" + strconv.Itoa(i) + "]"
}

// splitInstance splits "id[i]" into id and i; ok is false for a plain id.
func splitInstance(ref string) (id string, i int, ok bool) {
	if !strings.HasSuffix(ref, "]") {
		return ref, 0, false
	}
	open := strings.LastIndexByte(ref, '[')
	if open <= 0 {
		return ref, 0, false
	}
	num := ref[open+1 : len(ref)-1]
	if num == "" || (len(num) > 1 && num[0] == '0') || len(num) > 6 {
		return ref, 0, false
	}
	n, err := strconv.Atoi(num)
	if err != nil || n < 0 {
		return ref, 0, false
	}
	return ref[:open], n, true
}

// RuleName is the file spelling of a trigger rule ("all_success").
func RuleName(r hodeiv1.TriggerRule) string {
	switch r {
	case hodeiv1.TriggerRule_TRIGGER_RULE_UNSPECIFIED, hodeiv1.TriggerRule_TRIGGER_RULE_ALL_SUCCESS:
		return "all_success"
	case hodeiv1.TriggerRule_TRIGGER_RULE_ALL_DONE:
		return "all_done"
	case hodeiv1.TriggerRule_TRIGGER_RULE_ONE_SUCCESS:
		return "one_success"
	case hodeiv1.TriggerRule_TRIGGER_RULE_ONE_FAILED:
		return "one_failed"
	case hodeiv1.TriggerRule_TRIGGER_RULE_NONE_FAILED:
		return "none_failed"
	}
	return r.String()
}

// ParseRule parses a trigger rule's file spelling ("" = all_success).
func ParseRule(s string) (hodeiv1.TriggerRule, error) {
	switch strings.ReplaceAll(strings.ToLower(s), "-", "_") {
	case "", "all_success":
		return hodeiv1.TriggerRule_TRIGGER_RULE_ALL_SUCCESS, nil
	case "all_done":
		return hodeiv1.TriggerRule_TRIGGER_RULE_ALL_DONE, nil
	case "one_success":
		return hodeiv1.TriggerRule_TRIGGER_RULE_ONE_SUCCESS, nil
	case "one_failed":
		return hodeiv1.TriggerRule_TRIGGER_RULE_ONE_FAILED, nil
	case "none_failed":
		return hodeiv1.TriggerRule_TRIGGER_RULE_NONE_FAILED, nil
	}
	return 0, fmt.Errorf("trigger rule %q is not one of all_success, all_done, one_success, one_failed, none_failed", s)
}

// PolicyName is the file spelling of a failure policy ("fail-fast").
func PolicyName(p hodeiv1.FailurePolicy) string {
	if p == hodeiv1.FailurePolicy_FAILURE_POLICY_CONTINUE {
		return "continue"
	}
	return "fail-fast"
}

// ParsePolicy parses a failure policy's file spelling ("" = fail-fast).
func ParsePolicy(s string) (hodeiv1.FailurePolicy, error) {
	switch strings.ReplaceAll(strings.ToLower(s), "_", "-") {
	case "", "fail-fast":
		return hodeiv1.FailurePolicy_FAILURE_POLICY_FAIL_FAST, nil
	case "continue":
		return hodeiv1.FailurePolicy_FAILURE_POLICY_CONTINUE, nil
	}
	return 0, fmt.Errorf("failure policy %q is not fail-fast or continue", s)
}
