package pipeline

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"sort"
	"unicode/utf8"

	"github.com/goccy/go-yaml"

	"github.com/hodei-io/hodei/proto/hodeiv1"
)

// ErrDecode is wrapped by every Decode error.
var ErrDecode = errors.New("invalid pipeline file")

// File is the pipeline file format (YAML or JSON, the same field names):
//
//	name: build
//	tenant: acme                 # default "default"
//	failure_policy: fail-fast    # or continue
//	steps:
//	  - id: fetch
//	    command: git clone https://example.com/repo   # a string runs with /bin/sh -c; a list is argv
//	  - id: test
//	    depends_on: [fetch]
//	    for_each: [unit, integration]                 # fan-out: test[0], test[1]
//	    command: ["make", "test-{{item}}"]
//	  - id: report
//	    depends_on: [test]                            # fan-in: every instance of test
//	    trigger_rule: all_done
//	    kind: notify                                  # a handler job
//	    payload: "done"
//
// Job options per step: command, shell, kind, payload, env, labels,
// constraints ("region in (eu,us)"), priority, timeout_ms, max_attempts,
// backoff_base_ms, backoff_max_ms, delay_ms.
type File struct {
	Name          string     `json:"name" yaml:"name"`
	Tenant        string     `json:"tenant" yaml:"tenant"`
	FailurePolicy string     `json:"failure_policy" yaml:"failure_policy"`
	Steps         []FileStep `json:"steps" yaml:"steps"`
}

// FileStep is one step of a File.
type FileStep struct {
	ID            string            `json:"id" yaml:"id"`
	DependsOn     []string          `json:"depends_on" yaml:"depends_on"`
	TriggerRule   string            `json:"trigger_rule" yaml:"trigger_rule"`
	ForEach       []string          `json:"for_each" yaml:"for_each"`
	Command       Command           `json:"command" yaml:"command"`
	Shell         bool              `json:"shell" yaml:"shell"`
	Kind          string            `json:"kind" yaml:"kind"`
	Payload       string            `json:"payload" yaml:"payload"`
	Env           map[string]string `json:"env" yaml:"env"`
	Labels        map[string]string `json:"labels" yaml:"labels"`
	Constraints   []string          `json:"constraints" yaml:"constraints"`
	Priority      int32             `json:"priority" yaml:"priority"`
	TimeoutMs     int64             `json:"timeout_ms" yaml:"timeout_ms"`
	MaxAttempts   int32             `json:"max_attempts" yaml:"max_attempts"`
	BackoffBaseMs int64             `json:"backoff_base_ms" yaml:"backoff_base_ms"`
	BackoffMaxMs  int64             `json:"backoff_max_ms" yaml:"backoff_max_ms"`
	DelayMs       int64             `json:"delay_ms" yaml:"delay_ms"`
}

// Command is a step's command: a list (argv) or one string (a shell line:
// shell is implied).
type Command struct {
	Args  []string
	Shell bool // given as one string
}

// UnmarshalJSON accepts a string or a list of strings.
func (c *Command) UnmarshalJSON(b []byte) error {
	var s string
	if err := json.Unmarshal(b, &s); err == nil {
		c.Args, c.Shell = []string{s}, true
		return nil
	}
	c.Shell = false
	return json.Unmarshal(b, &c.Args)
}

// UnmarshalYAML accepts a string or a list of strings.
func (c *Command) UnmarshalYAML(unmarshal func(any) error) error {
	var s string
	if err := unmarshal(&s); err == nil {
		c.Args, c.Shell = []string{s}, true
		return nil
	}
	c.Shell = false
	return unmarshal(&c.Args)
}

// DecodeOptions are the parsers Decode borrows from the FSM (this package
// cannot import it).
type DecodeOptions struct {
	// ParseConstraint parses one constraint ("region in (eu,us)"); nil
	// makes a file with constraints an error.
	ParseConstraint func(string) (*hodeiv1.Constraint, error)
}

// Decode parses a pipeline file: JSON when its first non-blank byte is
// '{', YAML otherwise. A file that does not parse, or has an unknown field
// or a value of the wrong type, is an error naming the line and column.
// The result is not validated: Compile does that.
func Decode(data []byte, opts DecodeOptions) (*hodeiv1.PipelineSpec, error) {
	if len(data) > MaxBytes {
		return nil, fmt.Errorf("%w: file is %d bytes, limit %d", ErrDecode, len(data), MaxBytes)
	}
	if !utf8.Valid(data) {
		return nil, fmt.Errorf("%w: file is not valid UTF-8", ErrDecode)
	}
	var f File
	trimmed := bytes.TrimLeft(data, " \t\r\n")
	if len(trimmed) > 0 && trimmed[0] == '{' {
		if err := decodeJSON(data, &f); err != nil {
			return nil, err
		}
	} else if err := decodeYAML(data, &f); err != nil {
		return nil, err
	}
	return f.Spec(opts)
}

func decodeJSON(data []byte, f *File) error {
	dec := json.NewDecoder(bytes.NewReader(data))
	dec.DisallowUnknownFields()
	err := dec.Decode(f)
	if err == nil {
		// Exactly one JSON value.
		if _, err2 := dec.Token(); err2 != io.EOF {
			line, col := lineCol(data, dec.InputOffset())
			return fmt.Errorf("%w: line %d, column %d: data after the pipeline object", ErrDecode, line, col)
		}
		return nil
	}
	off := dec.InputOffset()
	var se *json.SyntaxError
	var te *json.UnmarshalTypeError
	switch {
	case errors.As(err, &se):
		off = se.Offset - 1 // Offset counts the bytes read, the bad one included
	case errors.As(err, &te):
		off = te.Offset
		line, col := lineCol(data, off)
		return fmt.Errorf("%w: line %d, column %d: %s: want %s, got %s", ErrDecode, line, col, te.Field, te.Type, te.Value)
	case errors.Is(err, io.ErrUnexpectedEOF) || errors.Is(err, io.EOF):
		off = int64(len(data))
	}
	line, col := lineCol(data, off)
	return fmt.Errorf("%w: line %d, column %d: %v", ErrDecode, line, col, err)
}

func decodeYAML(data []byte, f *File) (err error) {
	// goccy/go-yaml v1.19.2 panics on some malformed input (FuzzDecodeCompile
	// found "steps:\n  ! 000", kept in the seed corpus): a file must get an
	// error, never crash the CLI or the server decoding it.
	defer func() {
		if r := recover(); r != nil {
			err = fmt.Errorf("%w: the YAML parser failed on this file (%v)", ErrDecode, r)
		}
	}()
	err = yaml.UnmarshalWithOptions(data, f, yaml.DisallowUnknownField())
	if err == nil {
		return nil
	}
	var ye yaml.Error
	if errors.As(err, &ye) && ye.GetToken() != nil {
		p := ye.GetToken().Position
		return fmt.Errorf("%w: line %d, column %d: %s", ErrDecode, p.Line, p.Column, ye.GetMessage())
	}
	return fmt.Errorf("%w: %v", ErrDecode, err)
}

// lineCol turns a byte offset into a 1-based line and column (in runes).
func lineCol(data []byte, off int64) (line, col int) {
	if off > int64(len(data)) {
		off = int64(len(data))
	}
	if off < 0 {
		off = 0
	}
	line, col = 1, 1
	for _, r := range string(data[:off]) {
		if r == '\n' {
			line, col = line+1, 1
		} else {
			col++
		}
	}
	return line, col
}

// Spec converts a decoded file into the proto spec: the spellings of
// rules, policies and constraints are checked here (with the step they
// belong to); everything else by Compile.
func (f *File) Spec(opts DecodeOptions) (*hodeiv1.PipelineSpec, error) {
	out := &hodeiv1.PipelineSpec{Name: f.Name, Tenant: f.Tenant}
	pol, err := ParsePolicy(f.FailurePolicy)
	if err != nil {
		return nil, fmt.Errorf("%w: %v", ErrDecode, err)
	}
	out.FailurePolicy = pol
	for i, s := range f.Steps {
		name := s.ID
		if name == "" {
			name = fmt.Sprintf("#%d", i)
		}
		rule, err := ParseRule(s.TriggerRule)
		if err != nil {
			return nil, fmt.Errorf("%w: step %s: %v", ErrDecode, name, err)
		}
		job := &hodeiv1.JobSpec{
			Command:       s.Command.Args,
			Shell:         s.Shell || s.Command.Shell,
			Kind:          s.Kind,
			Priority:      s.Priority,
			TimeoutMs:     s.TimeoutMs,
			MaxAttempts:   s.MaxAttempts,
			BackoffBaseMs: s.BackoffBaseMs,
			BackoffMaxMs:  s.BackoffMaxMs,
			DelayMs:       s.DelayMs,
			Env:           kvs(s.Env),
			Labels:        kvs(s.Labels),
		}
		if s.Payload != "" {
			job.Payload = []byte(s.Payload)
		}
		for _, c := range s.Constraints {
			if opts.ParseConstraint == nil {
				return nil, fmt.Errorf("%w: step %s: constraints cannot be parsed here", ErrDecode, name)
			}
			pc, err := opts.ParseConstraint(c)
			if err != nil {
				return nil, fmt.Errorf("%w: step %s: constraint %q: %v", ErrDecode, name, c, err)
			}
			job.Constraints = append(job.Constraints, pc)
		}
		out.Steps = append(out.Steps, &hodeiv1.PipelineStepSpec{
			Id:          s.ID,
			DependsOn:   s.DependsOn,
			TriggerRule: rule,
			Job:         job,
			ForEach:     s.ForEach,
		})
	}
	return out, nil
}

// kvs turns a map into key-sorted pairs (map order is random).
func kvs(m map[string]string) []*hodeiv1.KeyValue {
	if len(m) == 0 {
		return nil
	}
	keys := make([]string, 0, len(m))
	for k := range m { // order fixed by the sort below
		keys = append(keys, k)
	}
	sort.Strings(keys)
	out := make([]*hodeiv1.KeyValue, len(keys))
	for i, k := range keys {
		out[i] = &hodeiv1.KeyValue{Key: k, Value: m[k]}
	}
	return out
}
