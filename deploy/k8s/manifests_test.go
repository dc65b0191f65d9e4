// Package k8s_test checks the Kubernetes manifests in deploy/k8s without a
// cluster: every document of every *.yaml file is decoded strictly (unknown
// or duplicate fields, a wrong case, an unknown kind are errors) into the
// k8s.io/api types with the API machinery's own decoder, and the invariants
// the deployment depends on are checked: ports match the server flags, probes
// use the named HTTP port, the bootstrap list and the join addresses name the
// headless Service, the PodDisruptionBudget keeps a Raft majority.
package k8s_test

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"path/filepath"
	"slices"
	"sort"
	"strconv"
	"strings"
	"testing"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	policyv1 "k8s.io/api/policy/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/runtime/serializer"
	"k8s.io/apimachinery/pkg/util/intstr"
	"k8s.io/apimachinery/pkg/util/validation"
	utilyaml "k8s.io/apimachinery/pkg/util/yaml"
)

const (
	headlessName  = "hodei-peers"
	clientName    = "hodei"
	bootstrapName = "hodei"       // the StatefulSet whose pods bootstrap
	extraName     = "hodei-extra" // the StatefulSet whose pods --join
	workerName    = "hodei-worker"
	bootstrapSize = 3
	image         = "hodei:dev"
	clusterDomain = "svc.cluster.local"
)

type manifests struct {
	statefulSets map[string]*appsv1.StatefulSet
	deployments  map[string]*appsv1.Deployment
	services     map[string]*corev1.Service
	pdbs         map[string]*policyv1.PodDisruptionBudget
}

func decoder(t *testing.T) runtime.Decoder {
	t.Helper()
	scheme := runtime.NewScheme()
	for _, add := range []func(*runtime.Scheme) error{appsv1.AddToScheme, corev1.AddToScheme, policyv1.AddToScheme} {
		if err := add(scheme); err != nil {
			t.Fatal(err)
		}
	}
	return serializer.NewCodecFactory(scheme, serializer.EnableStrict).UniversalDeserializer()
}

// load decodes every YAML document of every manifest file in this directory.
func load(t *testing.T) *manifests {
	t.Helper()
	files, err := filepath.Glob("*.y*ml")
	if err != nil {
		t.Fatal(err)
	}
	if len(files) == 0 {
		t.Fatal("no manifest files")
	}
	dec := decoder(t)
	m := &manifests{
		statefulSets: map[string]*appsv1.StatefulSet{},
		deployments:  map[string]*appsv1.Deployment{},
		services:     map[string]*corev1.Service{},
		pdbs:         map[string]*policyv1.PodDisruptionBudget{},
	}
	seen := map[string]string{}
	for _, f := range files {
		if ext := filepath.Ext(f); ext != ".yaml" && ext != ".yml" {
			continue
		}
		b, err := os.ReadFile(f)
		if err != nil {
			t.Fatal(err)
		}
		r := utilyaml.NewYAMLReader(bufio.NewReader(bytes.NewReader(b)))
		docs := 0
		for {
			doc, err := r.Read()
			if errors.Is(err, io.EOF) {
				break
			}
			if err != nil {
				t.Fatalf("%s: %v", f, err)
			}
			if len(bytes.TrimSpace(stripComments(doc))) == 0 {
				continue
			}
			docs++
			obj, gvk, err := dec.Decode(doc, nil, nil)
			if err != nil {
				t.Fatalf("%s, document %d: %v", f, docs, err)
			}
			var name string
			switch o := obj.(type) {
			case *appsv1.StatefulSet:
				name, m.statefulSets[o.Name] = o.Name, o
			case *appsv1.Deployment:
				name, m.deployments[o.Name] = o.Name, o
			case *corev1.Service:
				name, m.services[o.Name] = o.Name, o
			case *policyv1.PodDisruptionBudget:
				name, m.pdbs[o.Name] = o.Name, o
			default:
				t.Fatalf("%s, document %d: unexpected kind %v", f, docs, gvk)
			}
			if obj.(metav1.Object).GetNamespace() != "" {
				t.Errorf("%s: %s %s sets a namespace; the manifests are applied with -n", f, gvk.Kind, name)
			}
			key := gvk.Kind + "/" + name
			if prev, dup := seen[key]; dup {
				t.Errorf("%s is defined in %s and %s", key, prev, f)
			}
			seen[key] = f
		}
		if docs == 0 {
			t.Errorf("%s has no documents", f)
		}
	}
	return m
}

func stripComments(doc []byte) []byte {
	var out []byte
	for _, l := range bytes.Split(doc, []byte("\n")) {
		if t := bytes.TrimSpace(l); len(t) > 0 && t[0] != '#' {
			out = append(out, l...)
			out = append(out, '\n')
		}
	}
	return out
}

func (m *manifests) need(t *testing.T) (boot, extra *appsv1.StatefulSet, headless, client *corev1.Service) {
	t.Helper()
	var ok bool
	if boot, ok = m.statefulSets[bootstrapName]; !ok {
		t.Fatalf("no StatefulSet %s", bootstrapName)
	}
	if extra, ok = m.statefulSets[extraName]; !ok {
		t.Fatalf("no StatefulSet %s", extraName)
	}
	if headless, ok = m.services[headlessName]; !ok {
		t.Fatalf("no Service %s", headlessName)
	}
	if client, ok = m.services[clientName]; !ok {
		t.Fatalf("no Service %s", clientName)
	}
	return
}

// boolFlags are the server's flags that take no value ("--name" = true).
var boolFlags = map[string]bool{"insecure": true, "auth": true, "commit-nudge": true, "dead-letters": true}

// flags parses a container's args ("--name value", "--name=value", or a
// boolean "--name") after the subcommand.
func flags(t *testing.T, args []string, sub string) map[string]string {
	t.Helper()
	if len(args) == 0 || args[0] != sub {
		t.Fatalf("args %q do not start with the %q subcommand", args, sub)
	}
	out := map[string]string{}
	for i := 1; i < len(args); i++ {
		a := args[i]
		if !strings.HasPrefix(a, "--") {
			t.Fatalf("unexpected argument %q in %q", a, args)
		}
		name, val, hasEq := strings.Cut(strings.TrimPrefix(a, "--"), "=")
		if !hasEq && boolFlags[name] {
			val = "true"
		} else if !hasEq {
			if i+1 >= len(args) {
				t.Fatalf("flag --%s has no value", name)
			}
			i++
			val = args[i]
		}
		if _, dup := out[name]; dup {
			t.Fatalf("flag --%s given twice", name)
		}
		out[name] = val
	}
	return out
}

func port(t *testing.T, hostport string) int32 {
	t.Helper()
	_, p, err := net.SplitHostPort(hostport)
	if err != nil {
		t.Fatalf("%q: %v", hostport, err)
	}
	n, err := strconv.ParseInt(p, 10, 32)
	if err != nil {
		t.Fatalf("%q: %v", hostport, err)
	}
	return int32(n)
}

func container(t *testing.T, spec *corev1.PodSpec, name string) *corev1.Container {
	t.Helper()
	for i := range spec.Containers {
		if spec.Containers[i].Name == name {
			return &spec.Containers[i]
		}
	}
	t.Fatalf("no container %q", name)
	return nil
}

func containerPort(c *corev1.Container, name string) (corev1.ContainerPort, bool) {
	for _, p := range c.Ports {
		if p.Name == name {
			return p, true
		}
	}
	return corev1.ContainerPort{}, false
}

func selects(t *testing.T, sel *metav1.LabelSelector, podLabels map[string]string) bool {
	t.Helper()
	s, err := metav1.LabelSelectorAsSelector(sel)
	if err != nil {
		t.Fatal(err)
	}
	return !s.Empty() && s.Matches(labels.Set(podLabels))
}

func serviceSelects(svc *corev1.Service, podLabels map[string]string) bool {
	return len(svc.Spec.Selector) > 0 && labels.SelectorFromSet(svc.Spec.Selector).Matches(labels.Set(podLabels))
}

// podDNS is the name a pod of a StatefulSet has in its headless Service.
func podDNS(pod, svc string) string {
	return pod + "." + svc + ".$(POD_NAMESPACE)." + clusterDomain
}

func TestManifestsDecodeStrictly(t *testing.T) {
	m := load(t)
	m.need(t)
	if _, ok := m.deployments[workerName]; !ok {
		t.Errorf("no worker Deployment %s", workerName)
	}
	if len(m.pdbs) != 1 {
		t.Errorf("want one PodDisruptionBudget, have %d", len(m.pdbs))
	}
}

// TestNamesAreValid applies the API server's name rules that decoding does
// not: object names are DNS labels (a StatefulSet's pods and Services are
// host names), port names IANA service names (at most 15 characters), label
// keys and values well formed.
func TestNamesAreValid(t *testing.T) {
	m := load(t)
	var metas []metav1.Object
	var specs []*corev1.PodTemplateSpec
	for _, o := range m.statefulSets {
		metas = append(metas, o)
		specs = append(specs, &o.Spec.Template)
		for i := range o.Spec.VolumeClaimTemplates {
			metas = append(metas, &o.Spec.VolumeClaimTemplates[i])
		}
	}
	for _, o := range m.deployments {
		metas = append(metas, o)
		specs = append(specs, &o.Spec.Template)
	}
	for _, o := range m.services {
		metas = append(metas, o)
		for _, p := range o.Spec.Ports {
			for _, e := range validation.IsValidPortName(p.Name) {
				t.Errorf("Service %s: port name %q: %s", o.Name, p.Name, e)
			}
		}
	}
	for _, o := range m.pdbs {
		metas = append(metas, o)
	}
	checkLabels := func(what string, l map[string]string) {
		for k, v := range l {
			for _, e := range validation.IsQualifiedName(k) {
				t.Errorf("%s: label key %q: %s", what, k, e)
			}
			for _, e := range validation.IsValidLabelValue(v) {
				t.Errorf("%s: label %s=%q: %s", what, k, v, e)
			}
		}
	}
	for _, o := range metas {
		for _, e := range validation.IsDNS1123Label(o.GetName()) {
			t.Errorf("name %q: %s", o.GetName(), e)
		}
		checkLabels(o.GetName(), o.GetLabels())
	}
	for _, s := range specs {
		checkLabels("pod template", s.Labels)
		for _, c := range s.Spec.Containers {
			for _, e := range validation.IsDNS1123Label(c.Name) {
				t.Errorf("container %q: %s", c.Name, e)
			}
			for _, p := range c.Ports {
				for _, e := range validation.IsValidPortName(p.Name) {
					t.Errorf("container %s: port name %q: %s", c.Name, p.Name, e)
				}
			}
		}
	}
}

// TestStrictDecoderRejectsUnknownFields makes sure the decoder used above
// really is strict, so that a typo in a manifest fails the test.
func TestStrictDecoderRejectsUnknownFields(t *testing.T) {
	dec := decoder(t)
	for name, doc := range map[string]string{
		"unknown field": "apiVersion: v1\nkind: Service\nmetadata: {name: x}\nspec: {clusterIp: None}\n",
		"wrong case":    "apiVersion: v1\nkind: Service\nmetadata: {name: x}\nspec: {ClusterIP: None}\n",
		"duplicate":     "apiVersion: v1\nkind: Service\nmetadata: {name: x}\nspec: {clusterIP: None, clusterIP: None}\n",
		"unknown kind":  "apiVersion: v1\nkind: Servise\nmetadata: {name: x}\n",
	} {
		if _, _, err := dec.Decode([]byte(doc), nil, nil); err == nil {
			t.Errorf("%s: decoded without an error", name)
		}
	}
	if _, _, err := dec.Decode([]byte("apiVersion: v1\nkind: Service\nmetadata: {name: x}\nspec: {clusterIP: None}\n"), nil, nil); err != nil {
		t.Errorf("a valid Service: %v", err)
	}
}

// serverChecks are the checks shared by both server StatefulSets; it returns
// the container's flags.
func serverChecks(t *testing.T, sts *appsv1.StatefulSet, headless *corev1.Service) map[string]string {
	spec := &sts.Spec.Template.Spec
	c := container(t, spec, "hodei")
	if c.Image != image {
		t.Errorf("%s: image %q, want %q", sts.Name, c.Image, image)
	}
	if len(c.Command) != 0 {
		t.Errorf("%s: command %q overrides the image's /hodei entrypoint", sts.Name, c.Command)
	}
	f := flags(t, c.Args, "server")

	// Security (issue 12): a server either runs with mutual TLS and tokens
	// or says --insecure on purpose; the binary refuses to start otherwise,
	// so a manifest with neither would never become ready.
	secured := f["tls-ca"] != "" && f["tls-cert"] != "" && f["tls-key"] != "" && f["auth"] == "true"
	if !secured && f["insecure"] != "true" {
		t.Errorf("%s: neither --tls-ca/--tls-cert/--tls-key with --auth nor --insecure: the server would refuse to start", sts.Name)
	}

	// Ports: each listen flag's port is the named container port.
	for flag, names := range map[string][]string{"grpc": {"grpc"}, "http": {"http"}, "gossip": {"gossip-tcp", "gossip-udp"}} {
		addr, ok := f[flag]
		if !ok {
			t.Errorf("%s: no --%s", sts.Name, flag)
			continue
		}
		if h, _, _ := net.SplitHostPort(addr); h != "0.0.0.0" {
			t.Errorf("%s: --%s %s must bind all interfaces", sts.Name, flag, addr)
		}
		for _, n := range names {
			p, ok := containerPort(c, n)
			if !ok {
				t.Errorf("%s: no container port named %s", sts.Name, n)
				continue
			}
			if p.ContainerPort != port(t, addr) {
				t.Errorf("%s: container port %s is %d, --%s listens on %s", sts.Name, n, p.ContainerPort, flag, addr)
			}
		}
	}
	if p, _ := containerPort(c, "gossip-udp"); p.Protocol != corev1.ProtocolUDP {
		t.Errorf("%s: gossip-udp protocol %q, want UDP", sts.Name, p.Protocol)
	}
	for _, n := range []string{"grpc", "http", "gossip-tcp"} {
		if p, _ := containerPort(c, n); p.Protocol != "" && p.Protocol != corev1.ProtocolTCP {
			t.Errorf("%s: %s protocol %q, want TCP", sts.Name, n, p.Protocol)
		}
	}

	// Identity from the downward API.
	env := map[string]string{}
	for _, e := range c.Env {
		if e.ValueFrom != nil && e.ValueFrom.FieldRef != nil {
			env[e.Name] = e.ValueFrom.FieldRef.FieldPath
		}
	}
	if env["POD_NAME"] != "metadata.name" || env["POD_NAMESPACE"] != "metadata.namespace" {
		t.Errorf("%s: POD_NAME and POD_NAMESPACE must come from the downward API, have %v", sts.Name, env)
	}
	if f["id"] != "$(POD_NAME)" {
		t.Errorf("%s: --id %q, want $(POD_NAME)", sts.Name, f["id"])
	}
	if want := podDNS("$(POD_NAME)", headless.Name) + ":" + strconv.Itoa(int(port(t, f["grpc"]))); f["advertise"] != want {
		t.Errorf("%s: --advertise %q, want %q", sts.Name, f["advertise"], want)
	}
	if _, ok := f["gossip-advertise"]; ok {
		t.Errorf("%s: --gossip-advertise is not needed: the --advertise host resolves to the pod", sts.Name)
	}
	if sts.Spec.ServiceName != headless.Name {
		t.Errorf("%s: serviceName %q, want the headless Service %q", sts.Name, sts.Spec.ServiceName, headless.Name)
	}

	// Data on a per-pod volume.
	var mounted bool
	for _, vm := range c.VolumeMounts {
		if vm.MountPath != f["data"] {
			continue
		}
		for _, vct := range sts.Spec.VolumeClaimTemplates {
			if vct.Name == vm.Name {
				mounted = true
			}
		}
	}
	if !mounted {
		t.Errorf("%s: --data %q is not a volumeClaimTemplate's mount", sts.Name, f["data"])
	}

	// Probes: HTTP on the named port (the image has no shell).
	probes := map[string]*corev1.Probe{"startup": c.StartupProbe, "readiness": c.ReadinessProbe, "liveness": c.LivenessProbe}
	wantPath := map[string]string{"startup": "/healthz", "readiness": "/readyz", "liveness": "/healthz"}
	for kind, p := range probes {
		if p == nil {
			t.Errorf("%s: no %s probe", sts.Name, kind)
			continue
		}
		if p.Exec != nil || p.HTTPGet == nil {
			t.Errorf("%s: the %s probe must be httpGet", sts.Name, kind)
			continue
		}
		if p.HTTPGet.Port.Type != intstr.String || p.HTTPGet.Port.StrVal != "http" {
			t.Errorf("%s: the %s probe uses port %s, want the named port http", sts.Name, kind, p.HTTPGet.Port.String())
		}
		if p.HTTPGet.Path != wantPath[kind] {
			t.Errorf("%s: the %s probe path %q, want %q", sts.Name, kind, p.HTTPGet.Path, wantPath[kind])
		}
	}
	if l := c.LivenessProbe; l != nil {
		if window := withDefault(l.FailureThreshold, 3) * withDefault(l.PeriodSeconds, 10); window < 60 {
			t.Errorf("%s: liveness gives up after %d s; a long election must not restart a node (>= 60 s)", sts.Name, window)
		}
	}
	if s := c.StartupProbe; s != nil {
		if window := withDefault(s.FailureThreshold, 3) * withDefault(s.PeriodSeconds, 10); window < 90 {
			t.Errorf("%s: startup gives up after %d s; resolving and joining take up to 60 s", sts.Name, window)
		}
	}

	// Scheduling and resources.
	if a := spec.Affinity; a == nil || a.PodAntiAffinity == nil ||
		(len(a.PodAntiAffinity.PreferredDuringSchedulingIgnoredDuringExecution) == 0 && len(a.PodAntiAffinity.RequiredDuringSchedulingIgnoredDuringExecution) == 0) {
		t.Errorf("%s: no pod anti-affinity", sts.Name)
	} else {
		terms := a.PodAntiAffinity.RequiredDuringSchedulingIgnoredDuringExecution
		for _, w := range a.PodAntiAffinity.PreferredDuringSchedulingIgnoredDuringExecution {
			terms = append(terms, w.PodAffinityTerm)
		}
		for _, term := range terms {
			if term.TopologyKey != "kubernetes.io/hostname" || !selects(t, term.LabelSelector, sts.Spec.Template.Labels) {
				t.Errorf("%s: anti-affinity term %+v must spread the server pods over hostnames", sts.Name, term)
			}
		}
	}
	for _, r := range []corev1.ResourceName{corev1.ResourceCPU, corev1.ResourceMemory} {
		if _, ok := c.Resources.Requests[r]; !ok {
			t.Errorf("%s: no %s request", sts.Name, r)
		}
		if _, ok := c.Resources.Limits[r]; !ok {
			t.Errorf("%s: no %s limit", sts.Name, r)
		}
	}
	if spec.TerminationGracePeriodSeconds == nil || *spec.TerminationGracePeriodSeconds < 10 {
		t.Errorf("%s: terminationGracePeriodSeconds must be set (>= 10 s)", sts.Name)
	}
	if !selects(t, sts.Spec.Selector, sts.Spec.Template.Labels) {
		t.Errorf("%s: the selector does not match the pod template", sts.Name)
	}
	return f
}

func withDefault(v, def int32) int32 {
	if v == 0 {
		return def
	}
	return v
}

func TestServerStatefulSets(t *testing.T) {
	m := load(t)
	boot, extra, headless, _ := m.need(t)
	bf := serverChecks(t, boot, headless)
	ef := serverChecks(t, extra, headless)

	// The two StatefulSets must not adopt each other's pods.
	if selects(t, boot.Spec.Selector, extra.Spec.Template.Labels) || selects(t, extra.Spec.Selector, boot.Spec.Template.Labels) {
		t.Errorf("the selectors of %s and %s overlap", boot.Name, extra.Name)
	}
	// Apart from --bootstrap/--shards and --join, both run the same server.
	strip := func(f map[string]string, keys ...string) map[string]string {
		out := map[string]string{}
		for k, v := range f {
			if !slices.Contains(keys, k) {
				out[k] = v
			}
		}
		return out
	}
	if a, b := strip(bf, "bootstrap", "shards"), strip(ef, "join"); fmt.Sprint(a) != fmt.Sprint(b) {
		t.Errorf("server flags differ:\n%s: %v\n%s: %v", boot.Name, a, extra.Name, b)
	}
	if _, ok := bf["join"]; ok {
		t.Errorf("%s: --join with --bootstrap", boot.Name)
	}
	if _, ok := ef["bootstrap"]; ok {
		t.Errorf("%s: --bootstrap on joining nodes", extra.Name)
	}
	if _, ok := ef["shards"]; ok {
		t.Errorf("%s: --shards on joining nodes (they learn it)", extra.Name)
	}
}

func TestBootstrapList(t *testing.T) {
	m := load(t)
	boot, _, headless, _ := m.need(t)
	f := flags(t, container(t, &boot.Spec.Template.Spec, "hodei").Args, "server")
	grpc := strconv.Itoa(int(port(t, f["grpc"])))
	var ids []string
	for _, p := range strings.Split(f["bootstrap"], ",") {
		id, addr, ok := strings.Cut(p, "=")
		if !ok {
			t.Fatalf("--bootstrap entry %q is not id=host:port", p)
		}
		ids = append(ids, id)
		if want := podDNS(id, headless.Name) + ":" + grpc; addr != want {
			t.Errorf("--bootstrap %s=%s, want %s", id, addr, want)
		}
	}
	var want []string
	for i := 0; i < bootstrapSize; i++ {
		want = append(want, fmt.Sprintf("%s-%d", boot.Name, i))
	}
	if !slices.Equal(ids, want) {
		t.Errorf("--bootstrap names %v, want the first %d ordinals %v", ids, bootstrapSize, want)
	}
	if boot.Spec.Replicas == nil || *boot.Spec.Replicas != bootstrapSize {
		t.Errorf("%s: replicas must be %d, the size of the --bootstrap list", boot.Name, bootstrapSize)
	}
	if boot.Spec.PodManagementPolicy != appsv1.ParallelPodManagement {
		t.Errorf("%s: podManagementPolicy %q: the bootstrap pods must start together (Parallel), none is ready before a quorum runs", boot.Name, boot.Spec.PodManagementPolicy)
	}
	if n, err := strconv.Atoi(f["shards"]); err != nil || n < 1 {
		t.Errorf("--shards %q", f["shards"])
	}
}

func TestJoinAddresses(t *testing.T) {
	m := load(t)
	boot, extra, headless, _ := m.need(t)
	f := flags(t, container(t, &extra.Spec.Template.Spec, "hodei").Args, "server")
	grpc := strconv.Itoa(int(port(t, f["grpc"])))
	members := map[string]bool{}
	for i := 0; i < bootstrapSize; i++ {
		members[podDNS(fmt.Sprintf("%s-%d", boot.Name, i), headless.Name)+":"+grpc] = true
	}
	addrs := strings.Split(f["join"], ",")
	if len(addrs) == 0 || f["join"] == "" {
		t.Fatalf("%s: no --join", extra.Name)
	}
	for _, a := range addrs {
		host, p, err := net.SplitHostPort(a)
		if err != nil {
			t.Errorf("--join %q: %v", a, err)
			continue
		}
		if p != grpc {
			t.Errorf("--join %s: port %s, want the gRPC port %s", a, p, grpc)
		}
		labelsOfHost := strings.Split(host, ".")
		if len(labelsOfHost) < 2 || labelsOfHost[1] != headless.Name {
			t.Errorf("--join %s does not name a pod of the headless Service %s", a, headless.Name)
		}
		if !members[a] {
			t.Errorf("--join %s is not one of the bootstrap members %v", a, keys(members))
		}
	}
	if len(addrs) != bootstrapSize {
		t.Errorf("--join lists %d addresses, want all %d bootstrap members (one may be down)", len(addrs), bootstrapSize)
	}
	if extra.Spec.Replicas == nil || *extra.Spec.Replicas != 0 {
		t.Errorf("%s: replicas must start at 0 (scale up with kubectl scale, README)", extra.Name)
	}
	if p := extra.Spec.PersistentVolumeClaimRetentionPolicy; p == nil || p.WhenScaled != appsv1.DeletePersistentVolumeClaimRetentionPolicyType {
		t.Errorf("%s: a removed node must not come back with its old Raft state (persistentVolumeClaimRetentionPolicy.whenScaled: Delete)", extra.Name)
	}
	if p := boot.Spec.PersistentVolumeClaimRetentionPolicy; p != nil && (p.WhenScaled == appsv1.DeletePersistentVolumeClaimRetentionPolicyType || p.WhenDeleted == appsv1.DeletePersistentVolumeClaimRetentionPolicyType) {
		t.Errorf("%s: the bootstrap voters' volumes must be retained", boot.Name)
	}
}

func keys(m map[string]bool) []string {
	var out []string
	for k := range m {
		out = append(out, k)
	}
	sort.Strings(out)
	return out
}

func TestServices(t *testing.T) {
	m := load(t)
	boot, extra, headless, client := m.need(t)
	c := container(t, &boot.Spec.Template.Spec, "hodei")

	if headless.Spec.ClusterIP != corev1.ClusterIPNone {
		t.Errorf("%s: clusterIP %q, want None (headless)", headless.Name, headless.Spec.ClusterIP)
	}
	if !headless.Spec.PublishNotReadyAddresses {
		t.Errorf("%s: publishNotReadyAddresses must be true: peers resolve each other before any is ready", headless.Name)
	}
	if client.Spec.ClusterIP == corev1.ClusterIPNone || client.Spec.PublishNotReadyAddresses {
		t.Errorf("%s: the client Service must be a ClusterIP over ready pods only", client.Name)
	}
	for _, svc := range []*corev1.Service{headless, client} {
		for _, sts := range []*appsv1.StatefulSet{boot, extra} {
			if !serviceSelects(svc, sts.Spec.Template.Labels) {
				t.Errorf("Service %s does not select the pods of %s", svc.Name, sts.Name)
			}
		}
		for _, d := range m.deployments {
			if serviceSelects(svc, d.Spec.Template.Labels) {
				t.Errorf("Service %s selects the pods of Deployment %s", svc.Name, d.Name)
			}
		}
		for _, sp := range svc.Spec.Ports {
			if sp.TargetPort.Type != intstr.String {
				t.Errorf("%s: port %s targets %s, want a container port name", svc.Name, sp.Name, sp.TargetPort.String())
				continue
			}
			cp, ok := containerPort(c, sp.TargetPort.StrVal)
			if !ok {
				t.Errorf("%s: port %s targets %q, no such container port", svc.Name, sp.Name, sp.TargetPort.StrVal)
				continue
			}
			if sp.Port != cp.ContainerPort || withDefaultProto(sp.Protocol) != withDefaultProto(cp.Protocol) {
				t.Errorf("%s: port %s is %d/%s, the container's %s is %d/%s", svc.Name, sp.Name, sp.Port, sp.Protocol, cp.Name, cp.ContainerPort, cp.Protocol)
			}
		}
	}
	has := func(svc *corev1.Service, name string) bool {
		return slices.ContainsFunc(svc.Spec.Ports, func(p corev1.ServicePort) bool { return p.Name == name })
	}
	for _, n := range []string{"grpc", "gossip-tcp", "gossip-udp"} {
		if !has(headless, n) {
			t.Errorf("%s: no port %s", headless.Name, n)
		}
	}
	if !has(client, "grpc") {
		t.Errorf("%s: no grpc port", client.Name)
	}
}

func withDefaultProto(p corev1.Protocol) corev1.Protocol {
	if p == "" {
		return corev1.ProtocolTCP
	}
	return p
}

// available is how many of n selected pods a budget keeps available.
func available(t *testing.T, pdb *policyv1.PodDisruptionBudget, n int) int {
	t.Helper()
	switch {
	case pdb.Spec.MaxUnavailable != nil && pdb.Spec.MinAvailable != nil:
		t.Fatalf("%s sets both minAvailable and maxUnavailable", pdb.Name)
	case pdb.Spec.MaxUnavailable != nil:
		v, err := intstr.GetScaledValueFromIntOrPercent(pdb.Spec.MaxUnavailable, n, true)
		if err != nil {
			t.Fatal(err)
		}
		return n - v
	case pdb.Spec.MinAvailable != nil:
		v, err := intstr.GetScaledValueFromIntOrPercent(pdb.Spec.MinAvailable, n, true)
		if err != nil {
			t.Fatal(err)
		}
		return v
	}
	t.Fatalf("%s sets neither minAvailable nor maxUnavailable", pdb.Name)
	return 0
}

func TestPodDisruptionBudgetKeepsQuorum(t *testing.T) {
	m := load(t)
	boot, extra, _, _ := m.need(t)
	if len(m.pdbs) == 0 {
		t.Fatal("no PodDisruptionBudget")
	}
	for _, pdb := range m.pdbs {
		for _, sts := range []*appsv1.StatefulSet{boot, extra} {
			if !selects(t, pdb.Spec.Selector, sts.Spec.Template.Labels) {
				t.Errorf("%s does not select the pods of %s", pdb.Name, sts.Name)
			}
		}
		for _, d := range m.deployments {
			if selects(t, pdb.Spec.Selector, d.Spec.Template.Labels) {
				t.Errorf("%s selects the pods of Deployment %s", pdb.Name, d.Name)
			}
		}
		replicas := int(*boot.Spec.Replicas + *extra.Spec.Replicas)
		// As shipped (3 voters) and scaled to 5 (README).
		for _, n := range []int{replicas, 3, 5} {
			a := available(t, pdb, n)
			if a <= n/2 {
				t.Errorf("%s keeps %d of %d voters available, not a majority (%d)", pdb.Name, a, n, n/2+1)
			}
			if a >= n {
				t.Errorf("%s keeps all %d of %d pods: no node could ever be drained", pdb.Name, a, n)
			}
		}
		if p := pdb.Spec.UnhealthyPodEvictionPolicy; p != nil && *p == policyv1.AlwaysAllow {
			t.Errorf("%s: AlwaysAllow would let a drain evict unready voters during an election", pdb.Name)
		}
	}
}

func TestWorkerDeployment(t *testing.T) {
	m := load(t)
	_, _, _, client := m.need(t)
	d, ok := m.deployments[workerName]
	if !ok {
		t.Fatalf("no Deployment %s", workerName)
	}
	if !selects(t, d.Spec.Selector, d.Spec.Template.Labels) {
		t.Errorf("%s: the selector does not match the pod template", d.Name)
	}
	spec := &d.Spec.Template.Spec
	if len(spec.Containers) != 1 {
		t.Fatalf("%s: want one container", d.Name)
	}
	c := &spec.Containers[0]
	if c.Image != image {
		t.Errorf("%s: image %q, want %q", d.Name, c.Image, image)
	}
	for _, p := range []*corev1.Probe{c.StartupProbe, c.ReadinessProbe, c.LivenessProbe} {
		if p != nil && p.Exec != nil {
			t.Errorf("%s: exec probes need a shell the image does not have", d.Name)
		}
	}
	f := flags(t, c.Args, "worker")
	grpc := client.Spec.Ports[0].Port
	for _, a := range strings.Split(f["server"], ",") {
		host, _, err := net.SplitHostPort(a)
		if err != nil {
			t.Errorf("--server %q: %v", a, err)
			continue
		}
		if host != client.Name || port(t, a) != grpc {
			t.Errorf("--server %s, want the client Service %s:%d", a, client.Name, grpc)
		}
	}
	if _, ok := c.Resources.Requests[corev1.ResourceCPU]; !ok {
		t.Errorf("%s: no cpu request", d.Name)
	}
	if _, ok := c.Resources.Limits[corev1.ResourceMemory]; !ok {
		t.Errorf("%s: no memory limit", d.Name)
	}
	// Running jobs get the drain timeout (30 s by default) after SIGTERM.
	if g := spec.TerminationGracePeriodSeconds; g == nil || *g <= 30 {
		t.Errorf("%s: terminationGracePeriodSeconds must exceed the worker's 30 s drain timeout", d.Name)
	}
}
