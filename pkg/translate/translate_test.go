package translate

import (
	"errors"
	"reflect"
	"regexp"
	"strings"
	"testing"

	corev1 "k8s.io/api/core/v1"
	apiextensionsv1 "k8s.io/apiextensions-apiserver/pkg/apis/apiextensions/v1"
	"k8s.io/apimachinery/pkg/api/resource"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/intstr"
	"k8s.io/apimachinery/pkg/util/validation"

	"boilerhouse.dev/pkg/api/v1alpha1"
)

func validSpec() v1alpha1.WorkloadSpec {
	return v1alpha1.WorkloadSpec{
		Version:   "1",
		Image:     v1alpha1.ImageSpec{Ref: "example.com/agent:1"},
		Resources: v1alpha1.ResourcesSpec{VCPUs: 2, MemoryMb: 512, DiskGb: 4},
	}
}

func workload(name string, mutate func(*v1alpha1.WorkloadSpec)) *v1alpha1.BoilerhouseWorkload {
	s := validSpec()
	if mutate != nil {
		mutate(&s)
	}
	return &v1alpha1.BoilerhouseWorkload{ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: "boilerhouse"}, Spec: s}
}

func env(raw string) *apiextensionsv1.JSON { return &apiextensionsv1.JSON{Raw: []byte(raw)} }

func TestValidate(t *testing.T) {
	tests := []struct {
		name   string
		mutate func(*v1alpha1.WorkloadSpec)
		want   []string // problems, in order; nil means valid
	}{
		{"valid", nil, nil},
		{"valid full", func(s *v1alpha1.WorkloadSpec) {
			s.Entrypoint = &v1alpha1.EntrypointSpec{Cmd: "/bin/app", Workdir: "/work", Env: env(`{"A":"1"}`)}
			s.Filesystem = &v1alpha1.FilesystemSpec{OverlayDirs: []string{"/data", "/home/user"}}
			s.Network = &v1alpha1.NetworkSpec{Expose: []v1alpha1.ExposeSpec{{Guest: 8080}, {Guest: 9090}},
				Credentials: []v1alpha1.CredentialSpec{{Domain: "api.example.com", Headers: []v1alpha1.HeaderEntry{
					{Name: "A", Value: "x"},
					{Name: "B", ValueFrom: &v1alpha1.HeaderValueSource{SecretKeyRef: v1alpha1.SecretKeyRef{Name: "s", Key: "k"}}},
				}}}}
		}, nil},
		{"no image", func(s *v1alpha1.WorkloadSpec) { s.Image = v1alpha1.ImageSpec{} },
			[]string{"either image.ref or image.dockerfile must be set"}},
		{"both images", func(s *v1alpha1.WorkloadSpec) { s.Image.Dockerfile = "Dockerfile" },
			[]string{"image.ref and image.dockerfile are mutually exclusive"}},
		{"dockerfile", func(s *v1alpha1.WorkloadSpec) { s.Image = v1alpha1.ImageSpec{Dockerfile: "x/Dockerfile"} },
			[]string{"image.dockerfile is not supported: build and push the image, then set image.ref"}},
		{"zero resources", func(s *v1alpha1.WorkloadSpec) { s.Resources = v1alpha1.ResourcesSpec{} },
			[]string{"resources.vcpus must be > 0", "resources.memoryMb must be > 0"}},
		{"negative disk", func(s *v1alpha1.WorkloadSpec) { s.Resources.DiskGb = -1 },
			[]string{"resources.diskGb must be >= 0"}},
		{"env not an object", func(s *v1alpha1.WorkloadSpec) { s.Entrypoint = &v1alpha1.EntrypointSpec{Env: env(`["A"]`)} },
			[]string{"entrypoint.env must be an object of string values"}},
		{"env non-string values", func(s *v1alpha1.WorkloadSpec) {
			s.Entrypoint = &v1alpha1.EntrypointSpec{Env: env(`{"B":1,"A":{"x":1},"C":"ok"}`)}
		}, []string{`entrypoint.env["A"] must be a string, got {"x":1}`, `entrypoint.env["B"] must be a string, got 1`}},
		{"env bad name", func(s *v1alpha1.WorkloadSpec) {
			s.Entrypoint = &v1alpha1.EntrypointSpec{Env: env(`{"":"x","A=B":"y"}`)}
		},
			[]string{"entrypoint.env has an empty variable name", `entrypoint.env variable name "A=B" must not contain '='`}},
		{"env null", func(s *v1alpha1.WorkloadSpec) { s.Entrypoint = &v1alpha1.EntrypointSpec{Env: env(`null`)} }, nil},
		{"relative workdir", func(s *v1alpha1.WorkloadSpec) { s.Entrypoint = &v1alpha1.EntrypointSpec{Workdir: "work"} },
			[]string{`entrypoint.workdir "work" must be an absolute path`}},
		{"overlay dirs", func(s *v1alpha1.WorkloadSpec) {
			s.Filesystem = &v1alpha1.FilesystemSpec{OverlayDirs: []string{"data", "/a/../b", "/x/", "/", "/ok", "/ok"}}
		}, []string{
			`filesystem.overlayDirs[0] "data" must be an absolute path`,
			`filesystem.overlayDirs[1] "/a/../b" must be a clean path ("/b")`,
			`filesystem.overlayDirs[2] "/x/" must be a clean path ("/x")`,
			`filesystem.overlayDirs[3] must not be the root directory`,
			`filesystem.overlayDirs[5] "/ok" is listed twice`,
		}},
		{"headers", func(s *v1alpha1.WorkloadSpec) {
			s.Network = &v1alpha1.NetworkSpec{Credentials: []v1alpha1.CredentialSpec{{Domain: "d", Headers: []v1alpha1.HeaderEntry{
				{Name: "Both", Value: "x", ValueFrom: &v1alpha1.HeaderValueSource{}},
				{Name: "Neither"},
			}}}}
		}, []string{
			"network.credentials[0].headers[0] (Both): value and valueFrom are mutually exclusive",
			"network.credentials[0].headers[1] (Neither): one of value or valueFrom must be set",
		}},
		{"ports", func(s *v1alpha1.WorkloadSpec) {
			s.Network = &v1alpha1.NetworkSpec{Expose: []v1alpha1.ExposeSpec{{Guest: 80}, {Guest: 80}, {Guest: 0}, {Guest: 70000}}}
		}, []string{
			"network.expose[1].guest 80 is exposed twice",
			"network.expose[2].guest 0 must be between 1 and 65535",
			"network.expose[3].guest 70000 must be between 1 and 65535",
		}},
		{"empty exec probe", func(s *v1alpha1.WorkloadSpec) { s.Health = &v1alpha1.HealthSpec{Exec: &v1alpha1.ExecHealth{}} },
			[]string{"health.exec.command must not be empty"}},
		{"everything at once", func(s *v1alpha1.WorkloadSpec) {
			s.Image = v1alpha1.ImageSpec{}
			s.Resources.VCPUs = 0
			s.Entrypoint = &v1alpha1.EntrypointSpec{Env: env(`"x"`)}
		}, []string{"either image.ref or image.dockerfile must be set", "resources.vcpus must be > 0", "entrypoint.env must be an object of string values"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			s := validSpec()
			if tt.mutate != nil {
				tt.mutate(&s)
			}
			err := Validate(s)
			if tt.want == nil {
				if err != nil {
					t.Fatalf("Validate = %v, want nil", err)
				}
				return
			}
			var se *SpecError
			if !errors.As(err, &se) || !errors.Is(err, ErrInvalidSpec) {
				t.Fatalf("Validate = %#v, want *SpecError", err)
			}
			if !reflect.DeepEqual(se.Problems, tt.want) {
				t.Errorf("problems:\n got  %q\n want %q", se.Problems, tt.want)
			}
			if got, want := err.Error(), strings.Join(tt.want, "; "); got != want {
				t.Errorf("Error() = %q, want %q", got, want)
			}
		})
	}
}

func TestDecodeEnv(t *testing.T) {
	tests := []struct {
		raw     *apiextensionsv1.JSON
		want    map[string]string
		wantErr bool
	}{
		{nil, map[string]string{}, false},
		{env(`{}`), map[string]string{}, false},
		{env(`{"B":"2","A":"1"}`), map[string]string{"A": "1", "B": "2"}, false},
		{env(`{"A":null}`), nil, true},
		{env(`{"A":true}`), nil, true},
		{env(`42`), nil, true},
		{env(`{`), nil, true},
	}
	for _, tt := range tests {
		got, err := DecodeEnv(tt.raw)
		if (err != nil) != tt.wantErr {
			t.Errorf("DecodeEnv(%v) err = %v, wantErr %v", tt.raw, err, tt.wantErr)
			continue
		}
		if err != nil && !errors.Is(err, ErrInvalidSpec) {
			t.Errorf("DecodeEnv(%v) err = %v, not ErrInvalidSpec", tt.raw, err)
		}
		if !tt.wantErr && !reflect.DeepEqual(got, tt.want) {
			t.Errorf("DecodeEnv(%v) = %v, want %v", tt.raw, got, tt.want)
		}
	}
}

func TestPodHardenedDefaults(t *testing.T) {
	pod, err := Pod(workload("agent", nil), Options{Namespace: "boilerhouse", InstanceID: "agent-c-0123456789ab", TenantID: "org.acme"})
	if err != nil {
		t.Fatal(err)
	}
	if pod.Name != "agent-c-0123456789ab" || pod.Namespace != "boilerhouse" {
		t.Errorf("name/namespace = %s/%s", pod.Namespace, pod.Name)
	}
	if len(pod.OwnerReferences) != 0 {
		t.Errorf("owner references = %v, want none", pod.OwnerReferences)
	}
	s := pod.Spec
	if s.RestartPolicy != corev1.RestartPolicyNever {
		t.Errorf("restartPolicy = %s", s.RestartPolicy)
	}
	if s.AutomountServiceAccountToken == nil || *s.AutomountServiceAccountToken {
		t.Errorf("automountServiceAccountToken = %v, want false", s.AutomountServiceAccountToken)
	}
	if s.TerminationGracePeriodSeconds == nil || *s.TerminationGracePeriodSeconds != 3 {
		t.Errorf("terminationGracePeriodSeconds = %v, want 3", s.TerminationGracePeriodSeconds)
	}
	if s.SecurityContext == nil || s.SecurityContext.SeccompProfile == nil || s.SecurityContext.SeccompProfile.Type != corev1.SeccompProfileTypeRuntimeDefault {
		t.Errorf("pod seccomp = %+v", s.SecurityContext)
	}
	if s.SecurityContext.RunAsNonRoot == nil || !*s.SecurityContext.RunAsNonRoot {
		t.Errorf("pod runAsNonRoot = %v, want true", s.SecurityContext.RunAsNonRoot)
	}
	if len(s.Containers) != 1 {
		t.Fatalf("containers = %d, want 1", len(s.Containers))
	}
	c := s.Containers[0]
	if c.Name != "main" || c.Image != "example.com/agent:1" || c.ImagePullPolicy != corev1.PullIfNotPresent {
		t.Errorf("container = %s %s %s", c.Name, c.Image, c.ImagePullPolicy)
	}
	sc := c.SecurityContext
	if sc == nil || sc.Capabilities == nil || !reflect.DeepEqual(sc.Capabilities.Drop, []corev1.Capability{"ALL"}) {
		t.Errorf("capabilities = %+v, want drop ALL", sc)
	}
	if sc.AllowPrivilegeEscalation == nil || *sc.AllowPrivilegeEscalation {
		t.Errorf("allowPrivilegeEscalation = %v, want false", sc.AllowPrivilegeEscalation)
	}
	if sc.RunAsNonRoot == nil || !*sc.RunAsNonRoot {
		t.Errorf("container runAsNonRoot = %v, want true", sc.RunAsNonRoot)
	}
	if c.ReadinessProbe != nil || len(c.Ports) != 0 || len(c.Env) != 0 || len(s.Volumes) != 0 {
		t.Errorf("unexpected probe/ports/env/volumes: %+v %+v %+v %+v", c.ReadinessProbe, c.Ports, c.Env, s.Volumes)
	}

	root, err := Pod(workload("agent", func(s *v1alpha1.WorkloadSpec) { s.Security = &v1alpha1.SecuritySpec{AllowRoot: true} }),
		Options{Namespace: "ns", InstanceID: "agent-p-abcdefghij", Pool: "p"})
	if err != nil {
		t.Fatal(err)
	}
	if *root.Spec.SecurityContext.RunAsNonRoot || *root.Spec.Containers[0].SecurityContext.RunAsNonRoot {
		t.Errorf("allowRoot: runAsNonRoot still true")
	}
}

func TestPodResources(t *testing.T) {
	tests := []struct {
		name      string
		res       v1alpha1.ResourcesSpec
		cpu, mem  string
		ephemeral string // "" means unset
	}{
		{"with disk", v1alpha1.ResourcesSpec{VCPUs: 2, MemoryMb: 512, DiskGb: 4}, "2", "512Mi", "4Gi"},
		{"no disk", v1alpha1.ResourcesSpec{VCPUs: 1, MemoryMb: 1536}, "1", "1536Mi", ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			w := workload("agent", func(s *v1alpha1.WorkloadSpec) {
				s.Resources = tt.res
				s.Filesystem = &v1alpha1.FilesystemSpec{OverlayDirs: []string{"/data"}}
			})
			pod, err := Pod(w, Options{Namespace: "ns", InstanceID: "agent-p-abcdefghij"})
			if err != nil {
				t.Fatal(err)
			}
			r := pod.Spec.Containers[0].Resources
			if !reflect.DeepEqual(r.Requests, r.Limits) {
				t.Errorf("requests %v != limits %v", r.Requests, r.Limits)
			}
			check := func(name corev1.ResourceName, want string) {
				q, ok := r.Limits[name]
				if want == "" {
					if ok {
						t.Errorf("%s = %s, want unset", name, q.String())
					}
					return
				}
				if !ok || q.Cmp(resource.MustParse(want)) != 0 {
					t.Errorf("%s = %s, want %s", name, q.String(), want)
				}
			}
			check(corev1.ResourceCPU, tt.cpu)
			check(corev1.ResourceMemory, tt.mem)
			check(corev1.ResourceEphemeralStorage, tt.ephemeral)
			if cpu := r.Limits[corev1.ResourceCPU]; cpu.MilliValue() != int64(tt.res.VCPUs)*1000 {
				t.Errorf("cpu = %dm, want %dm", cpu.MilliValue(), tt.res.VCPUs*1000)
			}
			sl := pod.Spec.Volumes[0].EmptyDir.SizeLimit
			if tt.ephemeral == "" {
				if sl != nil {
					t.Errorf("overlay sizeLimit = %v, want unset", sl)
				}
			} else if sl == nil || sl.Cmp(resource.MustParse(tt.ephemeral)) != 0 {
				t.Errorf("overlay sizeLimit = %v, want %s", sl, tt.ephemeral)
			}
		})
	}
}

func TestPodEntrypointPortsOverlays(t *testing.T) {
	w := workload("agent", func(s *v1alpha1.WorkloadSpec) {
		s.Entrypoint = &v1alpha1.EntrypointSpec{Cmd: "/bin/agent", Args: []string{"--serve", "x"}, Workdir: "/srv",
			Env: env(`{"ZED":"z","ALPHA":"a","MID":""}`)}
		s.Network = &v1alpha1.NetworkSpec{Expose: []v1alpha1.ExposeSpec{{Guest: 8080}, {Guest: 9000}}}
		s.Filesystem = &v1alpha1.FilesystemSpec{OverlayDirs: []string{"/data", "/home/agent"}}
	})
	pod, err := Pod(w, Options{Namespace: "ns", InstanceID: "agent-p-abcdefghij"})
	if err != nil {
		t.Fatal(err)
	}
	c := pod.Spec.Containers[0]
	if !reflect.DeepEqual(c.Command, []string{"/bin/agent"}) || !reflect.DeepEqual(c.Args, []string{"--serve", "x"}) || c.WorkingDir != "/srv" {
		t.Errorf("command %q args %q workdir %q", c.Command, c.Args, c.WorkingDir)
	}
	wantEnv := []corev1.EnvVar{{Name: "ALPHA", Value: "a"}, {Name: "MID", Value: ""}, {Name: "ZED", Value: "z"}}
	if !reflect.DeepEqual(c.Env, wantEnv) {
		t.Errorf("env = %v, want %v (sorted by key)", c.Env, wantEnv)
	}
	wantPorts := []corev1.ContainerPort{{ContainerPort: 8080, Protocol: corev1.ProtocolTCP}, {ContainerPort: 9000, Protocol: corev1.ProtocolTCP}}
	if !reflect.DeepEqual(c.Ports, wantPorts) {
		t.Errorf("ports = %v", c.Ports)
	}
	wantMounts := []corev1.VolumeMount{{Name: "overlay-0", MountPath: "/data"}, {Name: "overlay-1", MountPath: "/home/agent"}}
	if !reflect.DeepEqual(c.VolumeMounts, wantMounts) {
		t.Errorf("mounts = %v", c.VolumeMounts)
	}
	if len(pod.Spec.Volumes) != 3 || pod.Spec.Volumes[0].Name != "overlay-0" || pod.Spec.Volumes[1].Name != "overlay-1" ||
		pod.Spec.Volumes[2].Name != "bh-control" ||
		pod.Spec.Volumes[0].EmptyDir == nil || pod.Spec.Volumes[1].EmptyDir == nil || pod.Spec.Volumes[2].EmptyDir == nil {
		t.Errorf("volumes = %+v", pod.Spec.Volumes)
	}
}

func TestPodReadinessProbe(t *testing.T) {
	tests := []struct {
		name   string
		health *v1alpha1.HealthSpec
		want   *corev1.Probe
	}{
		{"none", nil, nil},
		{"no handler", &v1alpha1.HealthSpec{IntervalSeconds: 5}, nil},
		{"http", &v1alpha1.HealthSpec{IntervalSeconds: 2, UnhealthyThreshold: 4, HTTPGet: &v1alpha1.HTTPGetHealth{Path: "/health", Port: 8080}},
			&corev1.Probe{PeriodSeconds: 2, FailureThreshold: 4, ProbeHandler: corev1.ProbeHandler{
				HTTPGet: &corev1.HTTPGetAction{Path: "/health", Port: intstr.FromInt32(8080), Scheme: corev1.URISchemeHTTP}}}},
		{"http default path", &v1alpha1.HealthSpec{HTTPGet: &v1alpha1.HTTPGetHealth{Port: 80}},
			&corev1.Probe{ProbeHandler: corev1.ProbeHandler{
				HTTPGet: &corev1.HTTPGetAction{Path: "/", Port: intstr.FromInt32(80), Scheme: corev1.URISchemeHTTP}}}},
		{"exec", &v1alpha1.HealthSpec{IntervalSeconds: 3, Exec: &v1alpha1.ExecHealth{Command: []string{"test", "-f", "/ok"}}},
			&corev1.Probe{PeriodSeconds: 3, ProbeHandler: corev1.ProbeHandler{Exec: &corev1.ExecAction{Command: []string{"test", "-f", "/ok"}}}}},
		{"http wins over exec", &v1alpha1.HealthSpec{HTTPGet: &v1alpha1.HTTPGetHealth{Path: "/h", Port: 1}, Exec: &v1alpha1.ExecHealth{Command: []string{"x"}}},
			&corev1.Probe{ProbeHandler: corev1.ProbeHandler{
				HTTPGet: &corev1.HTTPGetAction{Path: "/h", Port: intstr.FromInt32(1), Scheme: corev1.URISchemeHTTP}}}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			pod, err := Pod(workload("agent", func(s *v1alpha1.WorkloadSpec) { s.Health = tt.health }),
				Options{Namespace: "ns", InstanceID: "agent-p-abcdefghij"})
			if err != nil {
				t.Fatal(err)
			}
			if got := pod.Spec.Containers[0].ReadinessProbe; !reflect.DeepEqual(got, tt.want) {
				t.Errorf("probe = %+v, want %+v", got, tt.want)
			}
		})
	}
}

func TestPodLabels(t *testing.T) {
	tests := []struct {
		name string
		opts Options
		want map[string]string
	}{
		{"cold tenant", Options{Namespace: "ns", InstanceID: "agent-c-0123456789ab", TenantID: "org.acme"}, map[string]string{
			v1alpha1.LabelManaged: "true", v1alpha1.LabelWorkload: "agent", v1alpha1.LabelInstance: "agent-c-0123456789ab",
			v1alpha1.LabelTenant: "org.acme",
		}},
		{"pool", Options{Namespace: "ns", InstanceID: "agent-p-abcdefghij", Pool: "agent-pool"}, map[string]string{
			v1alpha1.LabelManaged: "true", v1alpha1.LabelWorkload: "agent", v1alpha1.LabelInstance: "agent-p-abcdefghij",
			v1alpha1.LabelPool: "agent-pool", v1alpha1.LabelPoolStatus: v1alpha1.PoolStatusWarming,
		}},
		{"bare", Options{Namespace: "ns", InstanceID: "agent-x"}, map[string]string{
			v1alpha1.LabelManaged: "true", v1alpha1.LabelWorkload: "agent", v1alpha1.LabelInstance: "agent-x",
		}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			pod, err := Pod(workload("agent", nil), tt.opts)
			if err != nil {
				t.Fatal(err)
			}
			if !reflect.DeepEqual(pod.Labels, tt.want) {
				t.Errorf("labels = %v, want %v", pod.Labels, tt.want)
			}
		})
	}
}

func TestPodErrors(t *testing.T) {
	tests := []struct {
		name string
		w    *v1alpha1.BoilerhouseWorkload
		opts Options
		want string
	}{
		{"invalid spec", workload("agent", func(s *v1alpha1.WorkloadSpec) { s.Entrypoint = &v1alpha1.EntrypointSpec{Env: env(`{"A":1}`)} }),
			Options{Namespace: "ns", InstanceID: "agent-x"}, `entrypoint.env["A"] must be a string, got 1`},
		{"no namespace", workload("agent", nil), Options{InstanceID: "agent-x"}, "namespace must be set"},
		{"bad instance id", workload("agent", nil), Options{Namespace: "ns", InstanceID: "Agent_X"}, `instance id "Agent_X"`},
		{"bad tenant", workload("agent", nil), Options{Namespace: "ns", InstanceID: "agent-x", TenantID: "a b"}, `tenant id "a b"`},
		{"bad pool", workload("agent", nil), Options{Namespace: "ns", InstanceID: "agent-x", Pool: strings.Repeat("p", 64)}, "pool name"},
		{"nil workload", nil, Options{Namespace: "ns", InstanceID: "agent-x"}, "no workload"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			pod, err := Pod(tt.w, tt.opts)
			if err == nil {
				t.Fatalf("Pod = %v, want error", pod.Name)
			}
			if !errors.Is(err, ErrInvalidSpec) || !strings.Contains(err.Error(), tt.want) {
				t.Errorf("err = %v, want *SpecError containing %q", err, tt.want)
			}
		})
	}
}

var (
	poolIDRe  = regexp.MustCompile(`^(.{1,40})-p-[a-z2-7]{10}$`)
	claimIDRe = regexp.MustCompile(`^(.{1,40})-c-[0-9a-f]{12}$`)
)

func TestInstanceIDs(t *testing.T) {
	long := strings.Repeat("w", 63)
	edge := strings.Repeat("a", 39) + "-" + strings.Repeat("b", 23) // cut ends in '-'
	for _, w := range []string{"a", "my-agent", long, edge, "x1-2-3"} {
		pid := PoolInstanceID(w)
		m := poolIDRe.FindStringSubmatch(pid)
		if m == nil {
			t.Errorf("PoolInstanceID(%q) = %q, want <workload cut to 40>-p-<10 base32>", w, pid)
		} else if want := w[:min(len(w), 40)]; m[1] != want {
			t.Errorf("PoolInstanceID(%q) prefix = %q, want %q", w, m[1], want)
		}
		cid := ClaimInstanceID(w, "claim-1")
		if !claimIDRe.MatchString(cid) {
			t.Errorf("ClaimInstanceID(%q) = %q", w, cid)
		}
		for _, id := range []string{pid, cid} {
			if len(id) > 63 {
				t.Errorf("%q is %d characters", id, len(id))
			}
			if errs := validation.IsDNS1123Label(id); len(errs) > 0 {
				t.Errorf("%q is not a DNS-1123 label: %v", id, errs)
			}
			if errs := validation.IsValidLabelValue(id); len(errs) > 0 {
				t.Errorf("%q is not a label value: %v", id, errs)
			}
		}
	}
	if a, b := ClaimInstanceID("w", "c1"), ClaimInstanceID("w", "c1"); a != b {
		t.Error("ClaimInstanceID is not deterministic")
	}
	if ClaimInstanceID("w", "c1") == ClaimInstanceID("w", "c2") {
		t.Error("ClaimInstanceID ignores the claim id")
	}
	seen := map[string]bool{}
	for range 10000 {
		id := PoolInstanceID("w")
		if seen[id] {
			t.Fatalf("PoolInstanceID repeated %q", id)
		}
		seen[id] = true
	}
}

// TestClaimInstanceIDKnown pins the hash so that ids stay stable across releases (a retried boot
// after an upgrade must still find its Pod). printf c1 | sha256sum = d0f631ca1ddb...
func TestClaimInstanceIDKnown(t *testing.T) {
	if got, want := ClaimInstanceID("my-agent", "c1"), "my-agent-c-d0f631ca1ddb"; got != want {
		t.Errorf("ClaimInstanceID(my-agent, c1) = %q, want %q", got, want)
	}
	long := strings.Repeat("w", 50)
	if got, want := ClaimInstanceID(long, "c1"), strings.Repeat("w", 40)+"-c-d0f631ca1ddb"; got != want {
		t.Errorf("ClaimInstanceID(long, c1) = %q, want %q", got, want)
	}
}

func TestPodAnnotations(t *testing.T) {
	tests := []struct {
		name        string
		annotations map[string]string
		want        map[string]string
		wantErr     string
	}{
		{"none", nil, nil, ""},
		{"other annotations are not copied", map[string]string{"a.example/x": "1"}, nil, ""},
		{"copied", map[string]string{AnnotationPodAnnotations: `{"devnode.boilerhouse.dev/behavior":"fail","x":"y"}`},
			map[string]string{"devnode.boilerhouse.dev/behavior": "fail", "x": "y"}, ""},
		{"empty object", map[string]string{AnnotationPodAnnotations: `{}`}, nil, ""},
		{"not json", map[string]string{AnnotationPodAnnotations: `fail`}, nil, "must be a JSON object of strings"},
		{"not strings", map[string]string{AnnotationPodAnnotations: `{"a":1}`}, nil, "must be a JSON object of strings"},
		{"bad key", map[string]string{AnnotationPodAnnotations: `{"a b":"1"}`}, nil, `key "a b"`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			w := workload("agent", nil)
			w.Annotations = tt.annotations
			pod, err := Pod(w, Options{Namespace: "ns", InstanceID: "agent-x"})
			if tt.wantErr != "" {
				if err == nil || !errors.Is(err, ErrInvalidSpec) || !strings.Contains(err.Error(), tt.wantErr) {
					t.Fatalf("err = %v, want one containing %q", err, tt.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if !reflect.DeepEqual(pod.Annotations, tt.want) {
				t.Errorf("annotations = %v, want %v", pod.Annotations, tt.want)
			}
		})
	}
}

func TestPodOverlayHelper(t *testing.T) {
	helperRes := corev1.ResourceList{corev1.ResourceCPU: resource.MustParse("10m"), corev1.ResourceMemory: resource.MustParse("16Mi")}
	twoDirs := func(s *v1alpha1.WorkloadSpec) {
		s.Filesystem = &v1alpha1.FilesystemSpec{OverlayDirs: []string{"/data", "/home/agent"}}
	}
	wantMounts := []corev1.VolumeMount{
		{Name: "overlay-0", MountPath: "/overlay/0"},
		{Name: "overlay-1", MountPath: "/overlay/1"},
		{Name: "bh-control", MountPath: "/bh"},
	}
	tests := []struct {
		name       string
		mutate     func(*v1alpha1.WorkloadSpec)
		opts       Options
		wantHelper bool
		wantInit   bool
		wantImage  string
		wantErr    string
	}{
		{"no overlay dirs", nil, Options{}, false, false, "", ""},
		{"empty overlay dirs", func(s *v1alpha1.WorkloadSpec) { s.Filesystem = &v1alpha1.FilesystemSpec{} }, Options{}, false, false, "", ""},
		{"helper, default image", twoDirs, Options{}, true, false, "busybox:1.36", ""},
		{"helper, own image", twoDirs, Options{HelperImage: "registry.local/busybox:1"}, true, false, "registry.local/busybox:1", ""},
		{"restore", twoDirs, Options{Restore: true}, true, true, "busybox:1.36", ""},
		{"restore, allowRoot workload", func(s *v1alpha1.WorkloadSpec) {
			twoDirs(s)
			s.Security = &v1alpha1.SecuritySpec{AllowRoot: true}
		}, Options{Restore: true, TenantID: "org.acme"}, true, true, "busybox:1.36", ""},
		{"restore without overlay dirs", nil, Options{Restore: true}, false, false, "", "a restore was asked for but the workload has no overlay directories"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			opts := tt.opts
			opts.Namespace, opts.InstanceID = "ns", "agent-c-0123456789ab"
			pod, err := Pod(workload("agent", tt.mutate), opts)
			if tt.wantErr != "" {
				if !errors.Is(err, ErrInvalidSpec) || !strings.Contains(err.Error(), tt.wantErr) {
					t.Fatalf("err = %v, want %q", err, tt.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			s := pod.Spec
			if !tt.wantHelper {
				if len(s.Containers) != 1 || len(s.InitContainers) != 0 || len(s.Volumes) != 0 || s.SecurityContext.FSGroup != nil {
					t.Fatalf("containers %d, init %d, volumes %v, fsGroup %v: want main only", len(s.Containers), len(s.InitContainers), s.Volumes, s.SecurityContext.FSGroup)
				}
				return
			}
			if len(s.Containers) != 2 || s.Containers[0].Name != "main" || s.Containers[1].Name != "overlay" {
				t.Fatalf("containers = %v, want main and overlay", containerNames(s.Containers))
			}
			var checks []corev1.Container
			checks = append(checks, s.Containers[1])
			if tt.wantInit {
				if len(s.InitContainers) != 1 || s.InitContainers[0].Name != "overlay-restore" {
					t.Fatalf("init containers = %v, want overlay-restore", containerNames(s.InitContainers))
				}
				if want := []string{"sh", "-c", "trap 'exit 143' TERM; until [ -e /bh/restored ]; do sleep 0.1; done"}; !reflect.DeepEqual(s.InitContainers[0].Command, want) {
					t.Errorf("init command = %q, want %q", s.InitContainers[0].Command, want)
				}
				checks = append(checks, s.InitContainers[0])
			} else if len(s.InitContainers) != 0 {
				t.Fatalf("init containers = %v, want none", containerNames(s.InitContainers))
			}
			if want := []string{"sh", "-c", "trap 'exit 0' TERM; while :; do sleep 3600 & wait; done"}; !reflect.DeepEqual(s.Containers[1].Command, want) {
				t.Errorf("helper command = %q", s.Containers[1].Command)
			}
			for _, c := range checks {
				if c.Image != tt.wantImage || c.ImagePullPolicy != corev1.PullIfNotPresent {
					t.Errorf("%s image %q %s, want %q IfNotPresent", c.Name, c.Image, c.ImagePullPolicy, tt.wantImage)
				}
				if !reflect.DeepEqual(c.VolumeMounts, wantMounts) {
					t.Errorf("%s mounts = %v, want %v", c.Name, c.VolumeMounts, wantMounts)
				}
				if !reflect.DeepEqual(c.Resources.Requests, helperRes) || !reflect.DeepEqual(c.Resources.Limits, helperRes) {
					t.Errorf("%s resources = %+v, want requests = limits = 10m/16Mi", c.Name, c.Resources)
				}
				sc := c.SecurityContext
				if sc == nil || sc.Capabilities == nil || !reflect.DeepEqual(sc.Capabilities.Drop, []corev1.Capability{"ALL"}) || len(sc.Capabilities.Add) != 0 {
					t.Fatalf("%s capabilities = %+v", c.Name, sc)
				}
				if sc.AllowPrivilegeEscalation == nil || *sc.AllowPrivilegeEscalation || sc.Privileged != nil {
					t.Errorf("%s allowPrivilegeEscalation = %v", c.Name, sc.AllowPrivilegeEscalation)
				}
				if sc.RunAsNonRoot == nil || !*sc.RunAsNonRoot || sc.RunAsUser == nil || *sc.RunAsUser != 65534 || sc.RunAsGroup == nil || *sc.RunAsGroup != 65534 {
					t.Errorf("%s runAsNonRoot %v user %v group %v, want true 65534 65534", c.Name, sc.RunAsNonRoot, sc.RunAsUser, sc.RunAsGroup)
				}
				if sc.ReadOnlyRootFilesystem == nil || !*sc.ReadOnlyRootFilesystem {
					t.Errorf("%s readOnlyRootFilesystem = %v, want true", c.Name, sc.ReadOnlyRootFilesystem)
				}
				if c.ReadinessProbe != nil || len(c.Ports) != 0 || len(c.Env) != 0 {
					t.Errorf("%s has probe/ports/env", c.Name)
				}
			}
			// main mounts the overlay volumes at the dirs and not the control volume.
			wantMain := []corev1.VolumeMount{{Name: "overlay-0", MountPath: "/data"}, {Name: "overlay-1", MountPath: "/home/agent"}}
			if !reflect.DeepEqual(s.Containers[0].VolumeMounts, wantMain) {
				t.Errorf("main mounts = %v, want %v", s.Containers[0].VolumeMounts, wantMain)
			}
			if len(s.Volumes) != 3 || s.Volumes[2].Name != "bh-control" || s.Volumes[2].EmptyDir == nil ||
				s.Volumes[2].EmptyDir.SizeLimit == nil || s.Volumes[2].EmptyDir.SizeLimit.Cmp(resource.MustParse("1Mi")) != 0 {
				t.Errorf("volumes = %+v", s.Volumes)
			}
			if g := s.SecurityContext.FSGroup; g == nil || *g != 65534 {
				t.Errorf("fsGroup = %v, want 65534", g)
			}
			// The Pod stays Guaranteed: every container has requests == limits.
			for _, c := range append(append([]corev1.Container(nil), s.Containers...), s.InitContainers...) {
				if !reflect.DeepEqual(c.Resources.Requests, c.Resources.Limits) {
					t.Errorf("%s requests != limits", c.Name)
				}
			}
		})
	}
}

func containerNames(cs []corev1.Container) []string {
	var out []string
	for _, c := range cs {
		out = append(out, c.Name)
	}
	return out
}
