package devnode

import (
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path"
	"path/filepath"
	"strings"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/types"
)

// Pod filesystems live under Config.StateDir:
//
//	pods/<uid>/pod.json                  namespace, name and UID, for people and logs
//	pods/<uid>/volumes/<volume>/         one directory per Pod volume (emptyDir semantics)
//	pods/<uid>/containers/<name>/rootfs/ the container's own root directory
//	pods/<uid>/containers/<name>/log     its log (CRI log format); log.1 is the rotated one
//
// A Pod's directory lives as long as the Pod: it survives node restarts and is removed when the
// Pod is deleted (or, at start-up, when its Pod is gone).

// podMeta is what pods/<uid>/pod.json holds.
type podMeta struct {
	Namespace string    `json:"namespace"`
	Name      string    `json:"name"`
	UID       types.UID `json:"uid"`
}

// validName reports whether s may be used as one path element (UIDs, volume and container
// names are validated by the API server; this is a second line of defence).
func validName(s string) bool {
	return s != "" && s != "." && s != ".." && !strings.ContainsAny(s, "/\x00")
}

func (n *Node) podsDir() string { return filepath.Join(n.cfg.StateDir, "pods") }

func (n *Node) podDir(uid types.UID) string { return filepath.Join(n.podsDir(), string(uid)) }

func (n *Node) volumeDir(uid types.UID, volume string) string {
	return filepath.Join(n.podDir(uid), "volumes", volume)
}

func (n *Node) containerDir(uid types.UID, container string) string {
	return filepath.Join(n.podDir(uid), "containers", container)
}

func (n *Node) containerLogPath(uid types.UID, container string) string {
	return filepath.Join(n.containerDir(uid, container), "log")
}

// preparePodFS creates the Pod's directories; existing ones (a restarted node) are kept as
// they are.
func (n *Node) preparePodFS(pod *corev1.Pod) error {
	if !validName(string(pod.UID)) {
		return fmt.Errorf("pod UID %q is not usable as a directory name", pod.UID)
	}
	dir := n.podDir(pod.UID)
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return err
	}
	meta := filepath.Join(dir, "pod.json")
	if _, err := os.Stat(meta); err != nil {
		b, _ := json.Marshal(podMeta{Namespace: pod.Namespace, Name: pod.Name, UID: pod.UID})
		if err := os.WriteFile(meta, append(b, '\n'), 0o644); err != nil {
			return err
		}
	}
	for _, v := range pod.Spec.Volumes {
		if !validName(v.Name) {
			return fmt.Errorf("volume name %q", v.Name)
		}
		// Every volume is an empty directory here (emptyDir); other sources (configMap,
		// secret, hostPath, ...) are not materialised, and never is a host path.
		vd := n.volumeDir(pod.UID, v.Name)
		if _, err := os.Stat(vd); err == nil {
			continue
		}
		if err := os.MkdirAll(filepath.Dir(vd), 0o755); err != nil {
			return err
		}
		if err := os.Mkdir(vd, 0o777); err != nil && !errors.Is(err, os.ErrExist) {
			return err
		}
		if err := os.Chmod(vd, 0o777); err != nil { // as the kubelet's emptyDir: any user may write
			return err
		}
	}
	for _, c := range allContainers(pod) {
		if !validName(c.Name) {
			return fmt.Errorf("container name %q", c.Name)
		}
		if err := os.MkdirAll(filepath.Join(n.containerDir(pod.UID, c.Name), "rootfs"), 0o755); err != nil {
			return err
		}
	}
	return nil
}

// removePodFS removes a Pod's directories.
func (n *Node) removePodFS(uid types.UID) {
	if !validName(string(uid)) {
		return
	}
	if err := os.RemoveAll(n.podDir(uid)); err != nil {
		n.log.Warn("removing pod directory", "uid", uid, "err", err)
	}
}

// collectPodDirs removes the directories of Pods that are not in keep (run at start-up, after
// the cache has synced and before any Pod is started).
func (n *Node) collectPodDirs(keep map[types.UID]bool) {
	entries, err := os.ReadDir(n.podsDir())
	if err != nil {
		return
	}
	for _, e := range entries {
		uid := types.UID(e.Name())
		if keep[uid] || !e.IsDir() {
			continue
		}
		var meta podMeta
		if b, err := os.ReadFile(filepath.Join(n.podsDir(), e.Name(), "pod.json")); err == nil {
			_ = json.Unmarshal(b, &meta)
		}
		n.log.Info("removing the directory of a pod that is gone", "uid", uid, "pod", meta.Namespace+"/"+meta.Name)
		n.removePodFS(uid)
	}
}

// allContainers returns the Pod's init containers, then its containers.
func allContainers(pod *corev1.Pod) []*corev1.Container {
	out := make([]*corev1.Container, 0, len(pod.Spec.InitContainers)+len(pod.Spec.Containers))
	for i := range pod.Spec.InitContainers {
		out = append(out, &pod.Spec.InitContainers[i])
	}
	for i := range pod.Spec.Containers {
		out = append(out, &pod.Spec.Containers[i])
	}
	return out
}

// findContainer returns the named container (init or not) and whether it is an init container.
func findContainer(pod *corev1.Pod, name string) (*corev1.Container, bool) {
	for i := range pod.Spec.InitContainers {
		if pod.Spec.InitContainers[i].Name == name {
			return &pod.Spec.InitContainers[i], true
		}
	}
	for i := range pod.Spec.Containers {
		if pod.Spec.Containers[i].Name == name {
			return &pod.Spec.Containers[i], false
		}
	}
	return nil, false
}

// mountSource is the host directory behind a volume mount: the volume's directory, and the
// subPath inside it (cleaned, created if missing; "" for none).
func (n *Node) mountSource(pod *corev1.Pod, m *corev1.VolumeMount) (dir, sub string, err error) {
	found := false
	for _, v := range pod.Spec.Volumes {
		if v.Name == m.Name {
			found = true
			break
		}
	}
	if !found || !validName(m.Name) {
		return "", "", fmt.Errorf("volume mount %q: no such volume", m.Name)
	}
	dir = n.volumeDir(pod.UID, m.Name)
	if m.SubPathExpr != "" {
		return "", "", fmt.Errorf("volume mount %q: subPathExpr is not supported by the dev node", m.Name)
	}
	if m.SubPath == "" {
		return dir, "", nil
	}
	sub = path.Clean(m.SubPath)
	if path.IsAbs(sub) || sub == ".." || strings.HasPrefix(sub, "../") {
		return "", "", fmt.Errorf("volume mount %q: subPath %q leaves the volume", m.Name, m.SubPath)
	}
	if sub == "." {
		return dir, "", nil
	}
	root, err := os.OpenRoot(dir)
	if err != nil {
		return "", "", err
	}
	defer root.Close()
	if err := root.MkdirAll(sub, 0o777); err != nil {
		return "", "", fmt.Errorf("volume mount %q: subPath %q: %w", m.Name, m.SubPath, err)
	}
	return dir, sub, nil
}

// sandboxFor describes a process of container c running args: its root, its volume mounts, the
// Pod's name as hostname, its working directory, environment, user and capabilities.
func (n *Node) sandboxFor(pod *corev1.Pod, c *corev1.Container, args []string) (*sandboxSpec, error) {
	if len(args) == 0 {
		return nil, errors.New("no command")
	}
	spec := &sandboxSpec{
		Root:       filepath.Join(n.containerDir(pod.UID, c.Name), "rootfs"),
		Hostname:   pod.Name,
		WorkingDir: c.WorkingDir,
		Args:       args,
	}
	if _, err := os.Stat(spec.Root); err != nil {
		return nil, fmt.Errorf("container %s has no filesystem: %w", c.Name, err)
	}
	for i := range c.VolumeMounts {
		m := &c.VolumeMounts[i]
		src, sub, err := n.mountSource(pod, m)
		if err != nil {
			return nil, err
		}
		target := path.Clean(m.MountPath)
		if !path.IsAbs(target) || target == "/" {
			return nil, fmt.Errorf("volume mount %q: mountPath %q", m.Name, m.MountPath)
		}
		spec.Mounts = append(spec.Mounts, sandboxMount{Source: src, SubPath: sub, Target: target, ReadOnly: m.ReadOnly})
	}
	// Environment: literal values only (valueFrom would need the API), then the defaults.
	env := map[string]bool{}
	for _, e := range c.Env {
		if e.ValueFrom != nil || strings.ContainsAny(e.Name, "=\x00") {
			continue
		}
		spec.Env = append(spec.Env, e.Name+"="+e.Value)
		env[e.Name] = true
	}
	for k, v := range map[string]string{"PATH": defaultPath, "HOSTNAME": pod.Name, "HOME": "/root"} {
		if !env[k] {
			spec.Env = append(spec.Env, k+"="+v)
		}
	}
	// User, group and capabilities: the container's securityContext over the Pod's. Without
	// runAsUser the process runs as the dev node's user (there is no image to say otherwise).
	spec.UID, spec.GID = runAs(pod, c)
	if psc := pod.Spec.SecurityContext; psc != nil && os.Geteuid() == 0 {
		for _, g := range psc.SupplementalGroups {
			spec.Groups = append(spec.Groups, uint32(g))
		}
		if psc.FSGroup != nil {
			spec.Groups = append(spec.Groups, uint32(*psc.FSGroup))
		}
	}
	var drop, add []string
	if sc := c.SecurityContext; sc != nil {
		if sc.Capabilities != nil {
			for _, d := range sc.Capabilities.Drop {
				drop = append(drop, string(d))
			}
			for _, a := range sc.Capabilities.Add {
				add = append(add, string(a))
			}
		}
		spec.ReadOnlyRoot = sc.ReadOnlyRootFilesystem != nil && *sc.ReadOnlyRootFilesystem
	}
	spec.Caps = capSet(drop, add)
	if os.Geteuid() != 0 {
		// An unprivileged node's sandbox maps only its own user (as root): no one to switch to.
		spec.UID, spec.GID, spec.Groups = nil, nil, nil
	}
	return spec, nil
}

// runAs returns the user and group a container's processes run as (container securityContext
// over the Pod's); nil user: the dev node's own. A user without a group gets group 0.
func runAs(pod *corev1.Pod, c *corev1.Container) (uid, gid *uint32) {
	if psc := pod.Spec.SecurityContext; psc != nil {
		uid, gid = uidPtr(psc.RunAsUser), uidPtr(psc.RunAsGroup)
	}
	if sc := c.SecurityContext; sc != nil {
		if sc.RunAsUser != nil {
			uid = uidPtr(sc.RunAsUser)
		}
		if sc.RunAsGroup != nil {
			gid = uidPtr(sc.RunAsGroup)
		}
	}
	if uid != nil && gid == nil {
		gid = new(uint32(0))
	}
	return uid, gid
}

func uidPtr(v *int64) *uint32 {
	if v == nil || *v < 0 || *v > 1<<32-2 {
		return nil
	}
	return new(uint32(*v))
}

// containerCommand is what a container runs: command then args (no image to supply defaults).
func containerCommand(c *corev1.Container) []string {
	return append(append([]string(nil), c.Command...), c.Args...)
}
