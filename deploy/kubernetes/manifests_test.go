// Package kubernetes_test renders the kustomization in this directory with kubectl and checks
// the result offline against the Kubernetes API types and against the worker's own flags.
package kubernetes_test

import (
	"bytes"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"sort"
	"strings"
	"testing"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	policyv1 "k8s.io/api/policy/v1"
	"k8s.io/apimachinery/pkg/util/intstr"
	kjson "sigs.k8s.io/json"
	"sigs.k8s.io/yaml"
)

// rendered is the output of kubectl kustomize, decoded strictly into API types.
type rendered struct {
	deployment     *appsv1.Deployment
	service        *corev1.Service
	configMaps     map[string]*corev1.ConfigMap
	serviceAccount *corev1.ServiceAccount
	pdb            *policyv1.PodDisruptionBudget
}

// render runs kubectl kustomize on this directory. Without kubectl the test fails in CI
// (CI=true) and says why it cannot run elsewhere.
func render(t *testing.T) []byte {
	t.Helper()
	return renderDir(t, ".")
}

// renderDir runs kubectl kustomize on dir.
func renderDir(t *testing.T, dir string) []byte {
	t.Helper()
	kubectl, err := exec.LookPath("kubectl")
	if err != nil {
		if os.Getenv("CI") == "true" {
			t.Fatal("kubectl is not installed; CI must render the manifests")
		}
		t.Skip("kubectl is not installed: cannot render the manifests (CI fails here instead)")
	}
	var stderr bytes.Buffer
	cmd := exec.Command(kubectl, "kustomize", dir)
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("kubectl kustomize: %v\n%s", err, stderr.String())
	}
	return out
}

// decodeStrict decodes one object as the API server would refuse it: yaml.UnmarshalStrict
// refuses unknown and duplicate fields, but matches names regardless of case, as
// encoding/json does; the case-sensitive decoder of Kubernetes then refuses readinessprobe.
func decodeStrict(doc string, obj any) error {
	if err := yaml.UnmarshalStrict([]byte(doc), obj); err != nil {
		return err
	}
	js, err := yaml.YAMLToJSON([]byte(doc))
	if err != nil {
		return err
	}
	strict, err := kjson.UnmarshalStrict(js, obj)
	if err != nil {
		return err
	}
	return errors.Join(strict...)
}

// decode splits the rendered stream and decodes every object strictly into its API type:
// an unknown field (a typo such as readinessprobe) or an unexpected kind fails.
func decode(t *testing.T, out []byte) rendered {
	t.Helper()
	r := rendered{configMaps: map[string]*corev1.ConfigMap{}}
	for _, doc := range regexp.MustCompile(`(?m)^---\s*$`).Split(string(out), -1) {
		if strings.TrimSpace(doc) == "" {
			continue
		}
		var meta struct {
			APIVersion string `json:"apiVersion"`
			Kind       string `json:"kind"`
		}
		if err := yaml.Unmarshal([]byte(doc), &meta); err != nil {
			t.Fatal(err)
		}
		var obj any
		switch meta.APIVersion + " " + meta.Kind {
		case "apps/v1 Deployment":
			if r.deployment != nil {
				t.Fatal("more than one Deployment")
			}
			r.deployment = &appsv1.Deployment{}
			obj = r.deployment
		case "v1 Service":
			r.service = &corev1.Service{}
			obj = r.service
		case "v1 ServiceAccount":
			r.serviceAccount = &corev1.ServiceAccount{}
			obj = r.serviceAccount
		case "policy/v1 PodDisruptionBudget":
			r.pdb = &policyv1.PodDisruptionBudget{}
			obj = r.pdb
		case "v1 ConfigMap":
			cm := &corev1.ConfigMap{}
			if err := decodeStrict(doc, cm); err != nil {
				t.Fatalf("ConfigMap: %v", err)
			}
			r.configMaps[cm.Name] = cm
			continue
		default:
			t.Fatalf("unexpected object %s %s in the rendered manifests", meta.APIVersion, meta.Kind)
		}
		if err := decodeStrict(doc, obj); err != nil {
			t.Fatalf("%s: %v", meta.Kind, err)
		}
	}
	if r.deployment == nil || r.service == nil || r.serviceAccount == nil || r.pdb == nil || len(r.configMaps) != 1 {
		t.Fatalf("want a Deployment, a Service, a ServiceAccount, a PodDisruptionBudget and one ConfigMap; got %+v", r)
	}
	return r
}

// runCLI is what `kustomer-worker run` takes: its flags and the environment variables bound
// to them, read from its --help (the CLI's own model, so a flag of another subcommand does
// not count), and the variables it reads directly (KUSTOMER_API_KEY, NATS_PASSWORD,
// NATS_TOKEN: secrets that have no flag), found as getenv("...") in its source.
type runCLI struct {
	flags map[string]bool
	env   map[string]bool
}

func readRunCLI(t *testing.T) runCLI {
	t.Helper()
	var stderr bytes.Buffer
	cmd := exec.Command("go", "run", "../../cmd/kustomer-worker", "run", "--help")
	cmd.Stderr = &stderr
	help, err := cmd.Output()
	if err != nil {
		t.Fatalf("kustomer-worker run --help: %v\n%s", err, stderr.String())
	}
	cli := runCLI{flags: map[string]bool{}, env: map[string]bool{}}
	for _, m := range regexp.MustCompile(`(?m)^\s+(?:-\w, )?--([a-z0-9-]+)`).FindAllStringSubmatch(string(help), -1) {
		cli.flags[m[1]] = true
	}
	// A flag's variables close its help: ($NAME), or ($NAME, $OLDER_NAME) with an alias.
	for _, list := range regexp.MustCompile(`\(\$[A-Z0-9_]+(?:,\s+\$[A-Z0-9_]+)*\)`).FindAllString(string(help), -1) {
		for _, m := range regexp.MustCompile(`\$([A-Z0-9_]+)`).FindAllStringSubmatch(list, -1) {
			cli.env[m[1]] = true
		}
	}
	files, err := filepath.Glob("../../cmd/kustomer-worker/*.go")
	if err != nil || len(files) == 0 {
		t.Fatalf("no worker sources: %v", err)
	}
	for _, f := range files {
		if strings.HasSuffix(f, "_test.go") {
			continue
		}
		data, err := os.ReadFile(f)
		if err != nil {
			t.Fatal(err)
		}
		for _, m := range regexp.MustCompile(`getenv\("([A-Z0-9_]+)"\)`).FindAllStringSubmatch(string(data), -1) {
			cli.env[m[1]] = true
		}
	}
	// The parsing must have found the flags and variables the manifests rely on.
	for _, f := range []string{"nats-url", "api-key-file", "http-addr", "shutdown-timeout", "pinned-ttl", "backfill-subject"} {
		if !cli.flags[f] {
			t.Fatalf("--%s not found in kustomer-worker run --help:\n%s", f, help)
		}
	}
	for _, v := range []string{"NATS_URL", "WORKER_PINNED_TTL", "NATS_PASSWORD"} {
		if !cli.env[v] {
			t.Fatalf("%s not found in kustomer-worker run --help or its getenv calls", v)
		}
	}
	return cli
}

func TestManifestsRenderToValidObjects(t *testing.T) {
	r := decode(t, render(t))
	cli := readRunCLI(t)
	d := r.deployment
	pod := d.Spec.Template.Spec
	if len(pod.Containers) != 1 {
		t.Fatalf("%d containers, want 1", len(pod.Containers))
	}
	c := pod.Containers[0]

	t.Run("two replicas: an active one and a standby", func(t *testing.T) {
		if d.Spec.Replicas == nil || *d.Spec.Replicas != 2 {
			t.Errorf("replicas = %v, want 2", d.Spec.Replicas)
		}
		if r.pdb.Spec.MinAvailable == nil || r.pdb.Spec.MinAvailable.IntValue() != 1 {
			t.Errorf("PodDisruptionBudget minAvailable = %v, want 1", r.pdb.Spec.MinAvailable)
		}
	})

	t.Run("every flag and variable is one the worker has", func(t *testing.T) {
		if len(c.Args) == 0 || c.Args[0] != "run" {
			t.Fatalf("args = %q, want the run command first", c.Args)
		}
		for _, a := range c.Args[1:] {
			name, _, _ := strings.Cut(strings.TrimPrefix(a, "--"), "=")
			if !strings.HasPrefix(a, "--") || !cli.flags[name] {
				t.Errorf("argument %q is not a flag of kustomer-worker run", a)
			}
		}
		var vars []string
		for _, cm := range r.configMaps {
			for k := range cm.Data {
				vars = append(vars, k)
			}
		}
		for _, e := range c.Env {
			if e.Name != "GOMEMLIMIT" { // read by the Go runtime
				vars = append(vars, e.Name)
			}
		}
		sort.Strings(vars)
		for _, v := range vars {
			if !cli.env[v] {
				t.Errorf("environment variable %s is not read by kustomer-worker run", v)
			}
		}
	})

	t.Run("NATS is external: --nats-url from the settings, never empty", func(t *testing.T) {
		if !slices.Contains(c.Args, "--nats-url=$(NATS_URL)") {
			t.Errorf("args %q do not give --nats-url=$(NATS_URL)", c.Args)
		}
		if len(c.EnvFrom) != 1 || c.EnvFrom[0].ConfigMapRef == nil {
			t.Fatalf("envFrom = %+v, want the settings ConfigMap", c.EnvFrom)
		}
		cm, ok := r.configMaps[c.EnvFrom[0].ConfigMapRef.Name]
		if !ok {
			t.Fatalf("envFrom names ConfigMap %s, which is not rendered", c.EnvFrom[0].ConfigMapRef.Name)
		}
		if u := cm.Data["NATS_URL"]; !strings.HasPrefix(u, "nats://") && !strings.HasPrefix(u, "tls://") {
			t.Errorf("NATS_URL = %q; an empty one would start the embedded server", u)
		}
		for _, e := range c.Env {
			if e.Name == "GOMEMLIMIT" {
				continue
			}
			if e.ValueFrom == nil || e.ValueFrom.SecretKeyRef == nil || e.ValueFrom.SecretKeyRef.Name != "kustomer-worker-nats" {
				t.Errorf("env %s does not come from the Secret kustomer-worker-nats", e.Name)
			}
		}
	})

	t.Run("the API key is a file from a Secret", func(t *testing.T) {
		const flag = "--api-key-file="
		var keyFile string
		for _, a := range c.Args {
			if p, ok := strings.CutPrefix(a, flag); ok {
				keyFile = p
			}
		}
		var mount *corev1.VolumeMount
		for i, m := range c.VolumeMounts {
			if strings.HasPrefix(keyFile, m.MountPath+"/") {
				mount = &c.VolumeMounts[i]
			}
		}
		if keyFile == "" || mount == nil || !mount.ReadOnly {
			t.Fatalf("--api-key-file %q is not in a read-only mount", keyFile)
		}
		for _, v := range pod.Volumes {
			if v.Name == mount.Name {
				if v.Secret == nil || v.Secret.SecretName != "kustomer-worker-api-key" ||
					(v.Secret.Optional != nil && *v.Secret.Optional) || filepath.Base(keyFile) != "api-key" {
					t.Errorf("volume %s = %+v, want the required Secret kustomer-worker-api-key with key api-key", v.Name, v.VolumeSource)
				}
				return
			}
		}
		t.Errorf("no volume %s", mount.Name)
	})

	t.Run("probes and metrics use the worker's endpoints", func(t *testing.T) {
		if !slices.Contains(c.Args, "--http-addr=0.0.0.0:9464") {
			t.Errorf("args %q do not serve HTTP on 0.0.0.0:9464", c.Args)
		}
		if len(c.Ports) != 1 || c.Ports[0].Name != "metrics" || c.Ports[0].ContainerPort != 9464 {
			t.Errorf("ports = %+v, want metrics 9464", c.Ports)
		}
		probe := func(what string, p *corev1.Probe, path string) {
			if p == nil || p.HTTPGet == nil || p.HTTPGet.Path != path || p.HTTPGet.Port != intstr.FromString("metrics") {
				t.Errorf("%s probe = %+v, want GET %s on the metrics port", what, p, path)
			}
		}
		if c.StartupProbe != nil {
			t.Errorf("startup probe %+v: /healthz answers from the first second, so it adds nothing", c.StartupProbe)
		}
		probe("liveness", c.LivenessProbe, "/healthz")
		probe("readiness", c.ReadinessProbe, "/readyz")
		s := r.service.Spec
		if len(s.Ports) != 1 || s.Ports[0].TargetPort != intstr.FromString("metrics") || s.Ports[0].Port != 9464 {
			t.Errorf("service ports = %+v", s.Ports)
		}
		for k, v := range s.Selector {
			if d.Spec.Template.Labels[k] != v {
				t.Errorf("service selector %s=%s does not match the pods' labels %v", k, v, d.Spec.Template.Labels)
			}
		}
	})

	t.Run("it runs as non-root on a read-only root file system", func(t *testing.T) {
		psc, sc := pod.SecurityContext, c.SecurityContext
		if psc == nil || psc.RunAsNonRoot == nil || !*psc.RunAsNonRoot || psc.RunAsUser == nil || *psc.RunAsUser == 0 {
			t.Errorf("pod securityContext = %+v, want runAsNonRoot and a non-zero user", psc)
		}
		if sc == nil || sc.ReadOnlyRootFilesystem == nil || !*sc.ReadOnlyRootFilesystem ||
			sc.AllowPrivilegeEscalation == nil || *sc.AllowPrivilegeEscalation ||
			sc.Capabilities == nil || !slices.Contains(sc.Capabilities.Drop, "ALL") {
			t.Errorf("container securityContext = %+v, want a read-only root, no privilege escalation, all capabilities dropped", sc)
		}
		if pod.AutomountServiceAccountToken == nil || *pod.AutomountServiceAccountToken {
			t.Error("the pod mounts a service account token it never uses")
		}
	})

	t.Run("resources are requested", func(t *testing.T) {
		req := c.Resources.Requests
		if req.Cpu().IsZero() || req.Memory().IsZero() || c.Resources.Limits.Memory().IsZero() {
			t.Errorf("resources = %+v, want cpu and memory requests and a memory limit", c.Resources)
		}
	})

	t.Run("a stop has time to drain", func(t *testing.T) {
		if pod.TerminationGracePeriodSeconds == nil || *pod.TerminationGracePeriodSeconds <= 30 ||
			!slices.Contains(c.Args, "--shutdown-timeout=30s") {
			t.Errorf("terminationGracePeriodSeconds = %v, args %q: want more than --shutdown-timeout=30s",
				pod.TerminationGracePeriodSeconds, c.Args)
		}
	})
}

// The monitoring component renders with the base (deploy/overlays/monitoring), and its
// PrometheusRule carries exactly the rules of deploy/prometheus/rules.yml, which promtool
// tests: regenerate it when the rules change.
func TestMonitoringComponent(t *testing.T) {
	out := renderDir(t, filepath.Join("..", "overlays", "monitoring"))
	kinds := map[string]string{}
	for _, doc := range strings.Split(string(out), "\n---\n") {
		var obj struct {
			Kind string         `json:"kind"`
			Spec map[string]any `json:"spec"`
		}
		if err := yaml.Unmarshal([]byte(doc), &obj); err != nil {
			t.Fatal(err)
		}
		kinds[obj.Kind] = doc
	}
	for _, k := range []string{"Deployment", "Service", "ServiceMonitor", "PrometheusRule"} {
		if kinds[k] == "" {
			t.Errorf("the monitoring overlay renders no %s", k)
		}
	}
	var rule struct {
		Spec any `json:"spec"`
	}
	if err := yaml.Unmarshal([]byte(kinds["PrometheusRule"]), &rule); err != nil {
		t.Fatal(err)
	}
	b, err := os.ReadFile(filepath.Join("..", "prometheus", "rules.yml"))
	if err != nil {
		t.Fatal(err)
	}
	var rules any
	if err := yaml.Unmarshal(b, &rules); err != nil {
		t.Fatal(err)
	}
	got, _ := yaml.Marshal(rule.Spec)
	want, _ := yaml.Marshal(rules)
	if !bytes.Equal(got, want) {
		t.Errorf("components/monitoring/prometheusrule.yaml's spec differs from deploy/prometheus/rules.yml: regenerate it")
	}
}

// The image rolls out: a pinned tag or digest, not latest.
func TestImageIsPinned(t *testing.T) {
	r := decode(t, render(t))
	c := r.deployment.Spec.Template.Spec.Containers[0]
	if strings.HasSuffix(c.Image, ":latest") || !strings.ContainsAny(c.Image, ":@") {
		t.Errorf("image %q: want a version tag or a digest, so that a new one rolls the pods", c.Image)
	}
	var memlimit bool
	for _, e := range c.Env {
		if e.Name == "GOMEMLIMIT" && e.ValueFrom != nil && e.ValueFrom.ResourceFieldRef != nil &&
			e.ValueFrom.ResourceFieldRef.Resource == "limits.memory" {
			memlimit = true
		}
	}
	if !memlimit {
		t.Error("GOMEMLIMIT is not taken from the container's memory limit")
	}
}
