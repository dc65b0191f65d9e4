package fsm

import (
	"errors"
	"fmt"
	"sort"
	"strconv"
	"strings"

	"google.golang.org/protobuf/proto"

	"github.com/hodei-io/hodei/proto/hodeiv1"
)

// ErrInvalidSpec is wrapped by every NormalizeSpec error.
var ErrInvalidSpec = errors.New("invalid job spec")

// ErrInvalidJobID is returned by ParseJobID.
var ErrInvalidJobID = errors.New("invalid job id")

const (
	// DefaultTenant is the tenant of a spec that names none.
	DefaultTenant = "default"
	// MaxNameBytes bounds tenant names and idempotency keys.
	MaxNameBytes = 128
	// maxDurationMs bounds timeouts, delays and backoffs (about 100 years),
	// so that now + d never overflows.
	maxDurationMs = int64(100 * 365 * 24 * 3600 * 1000)
)

// FormatJobID returns "<shard>-<seq>".
func FormatJobID(shard uint32, seq uint64) string {
	b := make([]byte, 0, 24)
	b = strconv.AppendUint(b, uint64(shard), 10)
	b = append(b, '-')
	b = strconv.AppendUint(b, seq, 10)
	return string(b)
}

// ParseJobID parses an id made by FormatJobID. It accepts only the
// canonical form (no sign, no leading zeros), so one job has one id.
func ParseJobID(id string) (shard uint32, seq uint64, err error) {
	i := strings.IndexByte(id, '-')
	if i <= 0 || i == len(id)-1 {
		return 0, 0, fmt.Errorf("%w: %q", ErrInvalidJobID, id)
	}
	a, b := id[:i], id[i+1:]
	if !canonicalUint(a) || !canonicalUint(b) {
		return 0, 0, fmt.Errorf("%w: %q", ErrInvalidJobID, id)
	}
	sh, err1 := strconv.ParseUint(a, 10, 32)
	sq, err2 := strconv.ParseUint(b, 10, 64)
	if err1 != nil || err2 != nil || sq == 0 {
		return 0, 0, fmt.Errorf("%w: %q", ErrInvalidJobID, id)
	}
	return uint32(sh), sq, nil
}

func canonicalUint(s string) bool {
	if s == "" || (len(s) > 1 && s[0] == '0') {
		return false
	}
	for i := 0; i < len(s); i++ {
		if s[i] < '0' || s[i] > '9' {
			return false
		}
	}
	return true
}

func invalid(format string, args ...any) error {
	return fmt.Errorf("%w: %s", ErrInvalidSpec, fmt.Sprintf(format, args...))
}

func validTenant(t string) bool {
	if t == "" || len(t) > MaxNameBytes {
		return false
	}
	for i := 0; i < len(t); i++ {
		c := t[i]
		switch {
		case c >= 'a' && c <= 'z', c >= 'A' && c <= 'Z', c >= '0' && c <= '9', c == '.', c == '_', c == '-':
		default:
			return false
		}
	}
	return true
}

// NormalizeSpec validates spec and returns a normalized clone: defaults
// filled (tenant "default", max_attempts, backoff base and max from cfg),
// env and labels sorted by key. spec is not modified. Errors wrap
// ErrInvalidSpec and say what is wrong.
func NormalizeSpec(spec *hodeiv1.JobSpec, cfg Config) (*hodeiv1.JobSpec, error) {
	if spec == nil {
		return nil, invalid("spec is missing")
	}
	kind := spec.GetKind()
	if err := ValidateKind(kind); kind != "" && err != nil {
		return nil, err
	}
	if kind == "" || kind == ShellKind {
		if len(spec.GetCommand()) == 0 {
			return nil, invalid("command is empty")
		}
		if spec.GetShell() && (len(spec.GetCommand()) != 1 || spec.GetCommand()[0] == "") {
			return nil, invalid("shell=true needs exactly one non-empty command line, got %d elements", len(spec.GetCommand()))
		}
		if spec.GetCommand()[0] == "" {
			return nil, invalid("command[0] (the program) is empty")
		}
	} else if len(spec.GetCommand()) > 0 || spec.GetShell() {
		return nil, invalid("kind %q runs a handler: command and shell are only for command jobs (kind \"\" or %q)", kind, ShellKind)
	}
	if p := spec.GetPriority(); p < 0 || p > 100 {
		return nil, invalid("priority %d is outside 0..100", p)
	}
	for _, d := range []struct {
		name string
		v    int64
	}{
		{"timeout_ms", spec.GetTimeoutMs()},
		{"delay_ms", spec.GetDelayMs()},
		{"backoff_base_ms", spec.GetBackoffBaseMs()},
		{"backoff_max_ms", spec.GetBackoffMaxMs()},
	} {
		if d.v < 0 {
			return nil, invalid("%s is negative (%d)", d.name, d.v)
		}
		if d.v > maxDurationMs {
			return nil, invalid("%s is too large (%d ms, limit %d)", d.name, d.v, maxDurationMs)
		}
	}
	if spec.GetMaxAttempts() < 0 {
		return nil, invalid("max_attempts is negative (%d)", spec.GetMaxAttempts())
	}
	tenant := spec.GetTenant()
	if tenant == "" {
		tenant = DefaultTenant
	}
	if len(tenant) > MaxNameBytes {
		return nil, invalid("tenant is %d bytes, limit is %d", len(tenant), MaxNameBytes)
	}
	if !validTenant(tenant) {
		return nil, invalid("tenant %q must match [A-Za-z0-9._-]+", tenant)
	}
	if n := len(spec.GetIdempotencyKey()); n > MaxNameBytes {
		return nil, invalid("idempotency_key is %d bytes, limit is %d", n, MaxNameBytes)
	}

	payload := len(spec.GetPayload())
	for _, a := range spec.GetCommand() {
		payload += len(a)
	}
	env, n, err := sortedKVs("env", spec.GetEnv(), true)
	if err != nil {
		return nil, err
	}
	payload += n
	labels, n, err := sortedKVs("label", spec.GetLabels(), false)
	if err != nil {
		return nil, err
	}
	payload += n
	constraints, n, err := normalizeConstraints(spec.GetConstraints())
	if err != nil {
		return nil, err
	}
	payload += n
	if payload > cfg.MaxPayloadBytes {
		return nil, invalid("spec is %d bytes (payload, command, env and labels), limit is %d", payload, cfg.MaxPayloadBytes)
	}

	out := proto.Clone(spec).(*hodeiv1.JobSpec)
	out.Tenant = tenant
	if out.Kind == ShellKind {
		out.Kind = "" // one spelling of a command job
	}
	out.Env = env
	out.Labels = labels
	out.Constraints = constraints
	if out.MaxAttempts == 0 {
		out.MaxAttempts = cfg.DefaultMaxAttempts
	}
	if out.BackoffBaseMs == 0 {
		out.BackoffBaseMs = cfg.DefaultBackoffBaseMs
	}
	if out.BackoffMaxMs == 0 {
		out.BackoffMaxMs = cfg.DefaultBackoffMaxMs
	}
	if out.BackoffMaxMs < out.BackoffBaseMs {
		// A cap below the base would make every backoff the cap; say so.
		return nil, invalid("backoff_max_ms (%d) is below backoff_base_ms (%d)", out.BackoffMaxMs, out.BackoffBaseMs)
	}
	return out, nil
}

// ValidateKind checks a job or worker kind: 1..128 bytes of
// [A-Za-z0-9._:/-].
func ValidateKind(k string) error {
	if k == "" || len(k) > MaxNameBytes {
		return invalid("kind %q must be 1..%d bytes", k, MaxNameBytes)
	}
	for i := 0; i < len(k); i++ {
		c := k[i]
		switch {
		case c >= 'a' && c <= 'z', c >= 'A' && c <= 'Z', c >= '0' && c <= '9', c == '.', c == '_', c == '-', c == ':', c == '/':
		default:
			return invalid("kind %q must match [A-Za-z0-9._:/-]+", k)
		}
	}
	return nil
}

// sortedKVs clones and sorts kvs by key, rejecting empty or duplicate keys
// (and, for env, keys containing '='). It also returns their byte size.
func sortedKVs(what string, kvs []*hodeiv1.KeyValue, env bool) ([]*hodeiv1.KeyValue, int, error) {
	if len(kvs) == 0 {
		return nil, 0, nil
	}
	out := make([]*hodeiv1.KeyValue, len(kvs))
	size := 0
	for i, kv := range kvs {
		if kv == nil {
			return nil, 0, invalid("%s %d is missing", what, i)
		}
		k := kv.GetKey()
		if k == "" {
			return nil, 0, invalid("%s %d has an empty key", what, i)
		}
		if env && strings.IndexByte(k, '=') >= 0 {
			return nil, 0, invalid("env key %q contains '='", k)
		}
		size += len(k) + len(kv.GetValue())
		out[i] = &hodeiv1.KeyValue{Key: k, Value: kv.GetValue()}
	}
	sort.SliceStable(out, func(a, b int) bool { return out[a].Key < out[b].Key })
	for i := 1; i < len(out); i++ {
		if out[i].Key == out[i-1].Key {
			return nil, 0, invalid("duplicate %s key %q", what, out[i].Key)
		}
	}
	return out, size, nil
}
