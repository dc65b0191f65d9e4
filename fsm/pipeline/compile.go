package pipeline

import (
	"bytes"
	"strconv"
	"strings"

	"google.golang.org/protobuf/proto"

	"github.com/hodei-io/hodei/proto/hodeiv1"
)

// Step is one step of a compiled plan: a fan-out instance or a plain step.
type Step struct {
	ID      string              // "id", or "id[i]" for fan-out instance i
	Parents []int32             // indexes of the steps it depends on, in depends_on order
	Rule    hodeiv1.TriggerRule // never UNSPECIFIED (ALL_SUCCESS)
	Job     *hodeiv1.JobSpec    // the normalized job template (shared between instances when the item is not used)
	Item    string              // fan-out: the instance's item
}

// Plan is a validated, expanded pipeline. Steps are in file order, a
// fan-out step's instances in item order.
type Plan struct {
	Name   string
	Tenant string
	Policy hodeiv1.FailurePolicy // never UNSPECIFIED (FAIL_FAST)
	Steps  []Step
	// Children of step i are child[childStart[i]:childStart[i+1]], in
	// ascending index order (compressed rows: two slices for the whole graph).
	childStart []int32
	child      []int32
	Edges      int
}

// Children returns the steps that depend on step i, in ascending order.
func (p *Plan) Children(i int) []int32 { return p.child[p.childStart[i]:p.childStart[i+1]] }

// Normalizer validates and normalizes one step's job spec; the FSM passes
// fsm.NormalizeSpec, so that a step template obeys exactly the job rules.
// Its error names the field. It must not keep or change its argument.
type Normalizer func(*hodeiv1.JobSpec) (*hodeiv1.JobSpec, error)

// Compile expands and validates spec in O(steps + edges + bytes). On any
// problem it returns an *Error listing every problem it found (unknown
// dependency, duplicate id, cycle with its path, self-dependency, limits,
// empty pipeline, invalid step template with the step id and the field).
// norm == nil checks only that each step has a job (benchmarks of the
// graph work alone).
func Compile(spec *hodeiv1.PipelineSpec, norm Normalizer) (*Plan, error) {
	var pr problems
	if spec == nil || len(spec.GetSteps()) == 0 {
		pr.add("pipeline has no steps")
		return nil, pr.err()
	}
	if n := proto.Size(spec); n > MaxBytes {
		pr.add("pipeline is %d bytes, limit %d", n, MaxBytes)
		return nil, pr.err()
	}
	plan := &Plan{Name: spec.GetName(), Tenant: spec.GetTenant()}
	if plan.Tenant == "" {
		plan.Tenant = "default"
	}
	if !ValidStepID(plan.Tenant) {
		pr.add("tenant %q must match [A-Za-z0-9._-]+ (at most %d bytes)", plan.Tenant, MaxIDBytes)
	}
	if len(plan.Name) > MaxNameBytes {
		pr.add("name is %d bytes, limit %d", len(plan.Name), MaxNameBytes)
	}
	switch p := spec.GetFailurePolicy(); p {
	case hodeiv1.FailurePolicy_FAILURE_POLICY_UNSPECIFIED, hodeiv1.FailurePolicy_FAILURE_POLICY_FAIL_FAST:
		plan.Policy = hodeiv1.FailurePolicy_FAILURE_POLICY_FAIL_FAST
	case hodeiv1.FailurePolicy_FAILURE_POLICY_CONTINUE:
		plan.Policy = p
	default:
		pr.add("failure_policy %d is unknown", int32(p))
	}

	specs := spec.GetSteps()
	// Pass 1: ids and instance counts. byID maps a written id to its spec
	// index; base[i] is the index of spec step i's first instance.
	byID := make(map[string]int, len(specs))
	inst := make([]int, len(specs))
	base := make([]int, len(specs)+1)
	for i, st := range specs {
		id := st.GetId()
		switch {
		case id == "":
			pr.add("step %d has no id", i)
		case !ValidStepID(id):
			pr.add("step id %q must match [A-Za-z0-9._-]+ (at most %d bytes)", id, MaxIDBytes)
		default:
			if _, dup := byID[id]; dup {
				pr.add("duplicate step id %q", id)
			} else {
				byID[id] = i
			}
		}
		inst[i] = 1
		if n := len(st.GetForEach()); n > 0 {
			inst[i] = n
		}
		base[i+1] = base[i] + inst[i]
		if base[i+1] > MaxSteps {
			pr.add("pipeline has more than %d steps after fan-out (at step %q)", MaxSteps, id)
			return nil, pr.err()
		}
		switch r := st.GetTriggerRule(); r {
		case hodeiv1.TriggerRule_TRIGGER_RULE_UNSPECIFIED, hodeiv1.TriggerRule_TRIGGER_RULE_ALL_SUCCESS,
			hodeiv1.TriggerRule_TRIGGER_RULE_ALL_DONE, hodeiv1.TriggerRule_TRIGGER_RULE_ONE_SUCCESS,
			hodeiv1.TriggerRule_TRIGGER_RULE_ONE_FAILED, hodeiv1.TriggerRule_TRIGGER_RULE_NONE_FAILED:
		default:
			pr.add("step %q: trigger_rule %d is unknown", id, int32(r))
		}
	}
	total := base[len(specs)]

	// Pass 2: resolve dependencies to instance ranges, counting edges
	// before anything is materialized. A dependency on "x" is every
	// instance of x; on "x[k]" the one instance.
	type dep struct{ from, to int } // expanded range [from, to)
	deps := make([][]dep, len(specs))
	edges := 0
	seen := make([]int32, total) // seen[e] == i+1: spec step i already depends on instance e
	for i, st := range specs {
		id := st.GetId()
		for _, ref := range st.GetDependsOn() {
			j, ok := byID[ref]
			d := dep{}
			if ok {
				d = dep{base[j], base[j+1]}
			} else if sid, k, isInst := splitInstance(ref); isInst {
				if jj, ok2 := byID[sid]; ok2 && len(specs[jj].GetForEach()) > k {
					j, ok = jj, true
					d = dep{base[jj] + k, base[jj] + k + 1}
				}
			}
			switch {
			case !ok:
				pr.add("step %q depends on unknown step %q", id, ref)
				continue
			case j == i:
				pr.add("step %q depends on itself", id)
				continue
			}
			dupl := false
			for e := d.from; e < d.to; e++ {
				if seen[e] == int32(i+1) {
					dupl = true
				}
				seen[e] = int32(i + 1)
			}
			if dupl {
				pr.add("step %q names dependency %q twice", id, ref)
				continue
			}
			edges += (d.to - d.from) * inst[i]
			if edges > MaxEdges {
				pr.add("pipeline has more than %d dependency edges after fan-out (at step %q)", MaxEdges, id)
				return nil, pr.err()
			}
			deps[i] = append(deps[i], d)
		}
	}
	plan.Edges = edges

	// Pass 3: materialize the steps and their jobs.
	plan.Steps = make([]Step, total)
	parentBuf := make([]int32, 0, edges)
	stored := 0
	for i, st := range specs {
		id := st.GetId()
		rule := st.GetTriggerRule()
		if rule == hodeiv1.TriggerRule_TRIGGER_RULE_UNSPECIFIED {
			rule = hodeiv1.TriggerRule_TRIGGER_RULE_ALL_SUCCESS
		}
		np := 0
		for _, d := range deps[i] {
			np += d.to - d.from
		}
		jobs := stepJobs(&pr, plan.Tenant, st, norm)
		for k := 0; k < inst[i]; k++ {
			s := &plan.Steps[base[i]+k]
			s.ID, s.Rule = id, rule
			if len(st.GetForEach()) > 0 {
				s.ID, s.Item = InstanceID(id, k), st.GetForEach()[k]
			}
			start := len(parentBuf)
			for _, d := range deps[i] {
				for e := d.from; e < d.to; e++ {
					parentBuf = append(parentBuf, int32(e))
				}
			}
			s.Parents = parentBuf[start:len(parentBuf):len(parentBuf)]
			if jobs != nil {
				s.Job = jobs(k)
				if s.Job == nil {
					jobs = nil // the template is invalid: reported once for the step
				} else {
					stored += proto.Size(s.Job)
				}
			}
			stored += len(s.ID) + len(s.Item) + 8*np + 16
		}
	}
	if stored > MaxBytes {
		pr.add("expanded pipeline is %d bytes, limit %d", stored, MaxBytes)
	}

	// Pass 4: cycles, over the resolved edges (self-dependencies were
	// reported and left out).
	findCycles(&pr, plan.Steps)

	if pr.any() {
		return nil, pr.err()
	}
	plan.buildChildren()
	return plan, nil
}

// stepJobs checks spec step st's job template and returns the job of each
// instance k (nil when the template is invalid, reported in pr; a nil
// function when norm is nil and only presence was checked).
func stepJobs(pr *problems, tenant string, st *hodeiv1.PipelineStepSpec, norm Normalizer) func(k int) *hodeiv1.JobSpec {
	id := st.GetId()
	tpl := st.GetJob()
	if tpl == nil {
		pr.add("step %q has no job: give it a command or a kind", id)
		return nil
	}
	if tpl.GetIdempotencyKey() != "" {
		pr.add("step %q: job.idempotency_key is not allowed in a pipeline step (retry a submit with its request id)", id)
		return nil
	}
	if t := tpl.GetTenant(); t != "" && t != tenant {
		pr.add("step %q: job.tenant %q differs from the pipeline's tenant %q", id, t, tenant)
		return nil
	}
	if norm == nil {
		return nil
	}
	items := st.GetForEach()
	if len(items) == 0 || !usesItem(tpl) {
		// One normalized spec for every instance: the FSM never changes a
		// spec in place, so instances can share it.
		n, err := normalize(tpl, tenant, "", false, norm)
		if err != nil {
			pr.add("step %q: job: %v", id, err)
			return nil
		}
		return func(int) *hodeiv1.JobSpec { return n }
	}
	return func(k int) *hodeiv1.JobSpec {
		n, err := normalize(tpl, tenant, items[k], true, norm)
		if err != nil {
			pr.add("step %q: job: %v", InstanceID(id, k), err)
			return nil
		}
		return n
	}
}

func normalize(tpl *hodeiv1.JobSpec, tenant, item string, subst bool, norm Normalizer) (*hodeiv1.JobSpec, error) {
	j := proto.Clone(tpl).(*hodeiv1.JobSpec)
	j.Tenant = tenant
	if subst {
		for a, s := range j.Command {
			j.Command[a] = strings.ReplaceAll(s, ItemPlaceholder, item)
		}
		for _, kv := range j.Env {
			kv.Value = strings.ReplaceAll(kv.GetValue(), ItemPlaceholder, item)
		}
		j.Payload = bytes.ReplaceAll(j.Payload, []byte(ItemPlaceholder), []byte(item))
	}
	return norm(j)
}

// usesItem reports whether a template mentions ItemPlaceholder where it
// is substituted.
func usesItem(tpl *hodeiv1.JobSpec) bool {
	for _, s := range tpl.GetCommand() {
		if strings.Contains(s, ItemPlaceholder) {
			return true
		}
	}
	for _, kv := range tpl.GetEnv() {
		if strings.Contains(kv.GetValue(), ItemPlaceholder) {
			return true
		}
	}
	return bytes.Contains(tpl.GetPayload(), []byte(ItemPlaceholder))
}

// maxCycles bounds the cycles one error reports; maxPath the steps shown
// of one cycle's path.
const (
	maxCycles = 5
	maxPath   = 24
)

// findCycles reports each cycle an iterative depth-first search meets, as
// its path in dependency order ("a → b → c → a": a depends on b, ...).
// Every step and edge is visited once: O(steps + edges).
func findCycles(pr *problems, steps []Step) {
	const (
		white = iota
		gray
		black
	)
	color := make([]uint8, len(steps))
	pos := make([]int32, len(steps)) // a gray step's place on the stack
	type frame struct {
		node int32
		next int32 // next parent to look at
	}
	var stack []frame
	found := 0
	for root := range steps {
		if color[root] != white {
			continue
		}
		stack = append(stack[:0], frame{int32(root), 0})
		color[root], pos[root] = gray, 0
		for len(stack) > 0 {
			top := &stack[len(stack)-1]
			ps := steps[top.node].Parents
			if int(top.next) == len(ps) {
				color[top.node] = black
				stack = stack[:len(stack)-1]
				continue
			}
			p := ps[top.next]
			top.next++
			switch color[p] {
			case white:
				color[p], pos[p] = gray, int32(len(stack))
				stack = append(stack, frame{p, 0})
			case gray:
				if found < maxCycles {
					path := make([]int32, 0, len(stack)-int(pos[p])+1)
					for _, f := range stack[pos[p]:] {
						path = append(path, f.node)
					}
					pr.add("cycle: %s", cyclePath(steps, append(path, p)))
				}
				found++
			}
		}
	}
	if found > maxCycles {
		pr.add("%d more cycles", found-maxCycles)
	}
}

// cyclePath renders a cycle, eliding the middle of a long one.
func cyclePath(steps []Step, path []int32) string {
	var b strings.Builder
	for i, n := range path {
		if len(path) > maxPath && i == maxPath/2 {
			b.WriteString(" → … (")
			b.WriteString(strconv.Itoa(len(path) - maxPath))
			b.WriteString(" more) …")
		}
		if len(path) > maxPath && i >= maxPath/2 && i < len(path)-maxPath/2 {
			continue
		}
		if i > 0 {
			b.WriteString(" → ")
		}
		b.WriteString(steps[n].ID)
	}
	return b.String()
}

// buildChildren fills the compressed child rows from the parents: child
// lists come out in ascending index order because children are visited in
// index order.
func (p *Plan) buildChildren() {
	p.childStart = make([]int32, len(p.Steps)+1)
	for _, s := range p.Steps {
		for _, q := range s.Parents {
			p.childStart[q+1]++
		}
	}
	for i := 1; i < len(p.childStart); i++ {
		p.childStart[i] += p.childStart[i-1]
	}
	p.child = make([]int32, p.Edges)
	fill := append([]int32(nil), p.childStart[:len(p.Steps)]...)
	for c, s := range p.Steps {
		for _, q := range s.Parents {
			p.child[fill[q]] = int32(c)
			fill[q]++
		}
	}
}
