package devnode

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"syscall"

	"golang.org/x/sys/unix"
	"k8s.io/cri-streaming/pkg/streaming/remotecommand"
)

// The sandbox runs the real processes of the dev node (exec sessions and init containers) so
// that they see their container's filesystem and nothing else of the host.
//
// The node starts its own executable again (/proc/self/exe, which works for the devnode command
// and for test binaries alike) in new mount, PID, UTS and IPC namespaces, with the sandbox spec
// in the sandboxEnv environment variable. This package's init function notices the variable
// before anything else runs and, on the main thread:
//   - makes every mount private and clones, as detached mounts, the host's /usr, /bin, /sbin,
//     /lib* and /etc (read-only), a few /dev nodes and the container's volumes (a subPath is
//     resolved beneath its volume's directory);
//   - mounts a fresh /proc in the container's root directory (on disk, under the node's state
//     dir; only the sandbox's processes are in it), pivots into that directory and detaches the
//     host root, so nothing the container left in its own files (a symlink) can point a mount
//     back at the host;
//   - makes /proc/sys read-only, masks kcore and the like, mounts a minimal /dev (tmpfs, null,
//     zero, full, random, urandom, tty, devpts, shm), recreates symlinks like /bin -> usr/bin,
//     creates /tmp and attaches the clones at their paths;
//   - sets the hostname to the Pod's name, drops capabilities from the bounding set (keeping a
//     container runtime's harmless defaults, less what the container drops), sets no_new_privs,
//     switches to runAsUser/runAsGroup if the container names them, changes to the working
//     directory and execs the command, which becomes PID 1 of its namespace.
//
// Set-up errors go back to the parent through a close-on-exec pipe (fd 3), so the parent tells
// "could not start" apart from the command's own exit code. Killing the command (PID 1) kills
// everything it started, since its PID namespace ends with it. The network is the host's (Pod
// IPs are host loopback addresses anyway). A node that does not run as root adds a user
// namespace mapping root to its own user; runAsUser is then not honoured (one user is mapped).

const (
	// sandboxEnv carries the JSON sandboxSpec to the re-executed binary.
	sandboxEnv = "BOILERHOUSE_DEVNODE_SANDBOX"
	// sandboxStatusFD is the child's end of the set-up status pipe.
	sandboxStatusFD = 3
	// sandboxSetupExit is the exit code of a sandbox whose set-up failed.
	sandboxSetupExit = 125
	// oldRoot is where the host root stays reachable during set-up.
	oldRoot = "/.oldroot"
	// defaultPath is the PATH of a process whose container sets none.
	defaultPath = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
)

// hostSystemPaths are bound read-only from the host into every sandbox.
var hostSystemPaths = []string{"/usr", "/bin", "/sbin", "/lib", "/lib32", "/lib64", "/libx32", "/etc"}

// sandboxSpec describes one sandboxed process.
type sandboxSpec struct {
	// Root is the host directory that becomes "/" (the container's own filesystem).
	Root string `json:"root"`
	// Mounts are bound over Root after the system paths, in order.
	Mounts []sandboxMount `json:"mounts,omitempty"`
	// Hostname is the UTS hostname (the Pod's name).
	Hostname string `json:"hostname,omitempty"`
	// WorkingDir is the working directory (default "/"); created if missing.
	WorkingDir string `json:"workingDir,omitempty"`
	// Args is the command and its arguments; Args[0] is looked up in the sandbox's PATH.
	Args []string `json:"args"`
	// Env is the complete environment of the command.
	Env []string `json:"env,omitempty"`
	// UID and GID, if set, are switched to before the exec; Groups are the supplementary groups.
	UID    *uint32  `json:"uid,omitempty"`
	GID    *uint32  `json:"gid,omitempty"`
	Groups []uint32 `json:"groups,omitempty"`
	// Caps are the capabilities left in the bounding set (numbers, see capNames).
	Caps []int `json:"caps"`
	// ReadOnlyRoot remounts the root directory read-only (volumes stay as mounted).
	ReadOnlyRoot bool `json:"readOnlyRoot,omitempty"`
}

// sandboxMount binds a host directory (a volume's), or SubPath inside it, at Target.
type sandboxMount struct {
	Source   string `json:"source"`
	SubPath  string `json:"subPath,omitempty"`
	Target   string `json:"target"`
	ReadOnly bool   `json:"readOnly,omitempty"`
}

func init() {
	raw, ok := os.LookupEnv(sandboxEnv)
	if !ok {
		return
	}
	// init runs on the main goroutine, locked to the main thread; keep it so, since the
	// capability bounding set is per thread and the exec happens from this one.
	runtime.LockOSThread()
	err := sandboxInit(raw)
	status := os.NewFile(sandboxStatusFD, "sandbox-status")
	_, _ = status.WriteString(err.Error())
	os.Exit(sandboxSetupExit)
}

// sandboxInit builds the sandbox and execs the command; it returns only on failure.
//
// Everything the sandbox needs from the host is cloned as a detached mount (open_tree) while the
// host root is still there; then the process pivots into the container's root and detaches the
// host root before it touches any path the container controls, so no symlink a container left
// in its own root or volumes can lead a mount out of it. Only then are the clones attached.
func sandboxInit(raw string) error {
	var s sandboxSpec
	if err := json.Unmarshal([]byte(raw), &s); err != nil {
		return fmt.Errorf("sandbox spec: %w", err)
	}
	if len(s.Args) == 0 {
		return errors.New("sandbox: no command")
	}
	_ = os.Unsetenv(sandboxEnv)
	unix.CloseOnExec(sandboxStatusFD)
	if err := unix.Mount("", "/", "", unix.MS_REC|unix.MS_PRIVATE, ""); err != nil {
		return fmt.Errorf("sandbox: making mounts private: %w", err)
	}

	// 1. Clone what comes from the host.
	var attach []treeMount
	var links []symlinkSpec
	for _, p := range hostSystemPaths {
		fi, err := os.Lstat(p)
		switch {
		case err != nil:
			continue // not on this host
		case fi.Mode()&os.ModeSymlink != 0:
			target, err := os.Readlink(p)
			if err != nil {
				return fmt.Errorf("sandbox: %s: %w", p, err)
			}
			links = append(links, symlinkSpec{path: p, target: target})
		case fi.IsDir():
			t, err := cloneTree(unix.AT_FDCWD, p, p, true)
			if err != nil {
				return err
			}
			attach = append(attach, t)
		}
	}
	var devices []treeMount
	for _, d := range []string{"null", "zero", "full", "random", "urandom", "tty"} {
		if _, err := os.Stat("/dev/" + d); err != nil {
			continue
		}
		t, err := cloneTree(unix.AT_FDCWD, "/dev/"+d, "/dev/"+d, false)
		if err != nil {
			return err
		}
		devices = append(devices, t)
	}
	var masks []treeMount
	for _, p := range maskedProcPaths {
		t, err := cloneTree(unix.AT_FDCWD, "/dev/null", p, false)
		if err != nil {
			return err
		}
		masks = append(masks, t)
	}
	for _, m := range s.Mounts {
		t, err := cloneVolume(m)
		if err != nil {
			return err
		}
		attach = append(attach, t)
	}

	// 2. Into the container's root; the host root goes.
	if err := unix.Mount(s.Root, s.Root, "", unix.MS_BIND|unix.MS_REC, ""); err != nil {
		return fmt.Errorf("sandbox: binding root %s: %w", s.Root, err)
	}
	if err := unix.Chdir(s.Root); err != nil {
		return fmt.Errorf("sandbox: %w", err)
	}
	// /proc is mounted while the host's is still visible: in a user namespace (a node not run
	// as root) the kernel allows a new proc mount only then.
	if err := mountProc(); err != nil {
		return err
	}
	if fi, err := os.Lstat("." + oldRoot); err == nil && !fi.IsDir() {
		_ = os.Remove("." + oldRoot)
	}
	if err := os.Mkdir("."+oldRoot, 0o700); err != nil && !errors.Is(err, os.ErrExist) {
		return fmt.Errorf("sandbox: %w", err)
	}
	if err := unix.PivotRoot(".", "."+oldRoot); err != nil {
		return fmt.Errorf("sandbox: pivot_root: %w", err)
	}
	if err := unix.Chdir("/"); err != nil {
		return fmt.Errorf("sandbox: %w", err)
	}
	if err := unix.Unmount(oldRoot, unix.MNT_DETACH); err != nil {
		return fmt.Errorf("sandbox: detaching the host root: %w", err)
	}
	_ = os.Remove(oldRoot)

	// 3. Only the container's own files are reachable by path now: build its view.
	if err := setupProc(masks); err != nil {
		return err
	}
	if err := setupDev(devices); err != nil {
		return err
	}
	for _, l := range links {
		if cur, err := os.Readlink(l.path); err == nil && cur == l.target {
			continue
		}
		_ = os.RemoveAll(l.path)
		if err := os.Symlink(l.target, l.path); err != nil {
			return fmt.Errorf("sandbox: %s: %w", l.path, err)
		}
	}
	if err := ensureDir("/tmp", 0o1777); err != nil {
		return fmt.Errorf("sandbox: /tmp: %w", err)
	}
	for _, t := range attach {
		if err := t.attach(); err != nil {
			return err
		}
	}
	if s.ReadOnlyRoot {
		if err := unix.MountSetattr(unix.AT_FDCWD, "/", 0, &unix.MountAttr{Attr_set: unix.MOUNT_ATTR_RDONLY}); err != nil {
			return fmt.Errorf("sandbox: read-only root: %w", err)
		}
	}
	if s.Hostname != "" {
		if err := unix.Sethostname([]byte(s.Hostname)); err != nil {
			return fmt.Errorf("sandbox: hostname: %w", err)
		}
	}
	wd := s.WorkingDir
	if wd == "" {
		wd = "/"
	}
	_ = os.MkdirAll(wd, 0o755)
	if err := unix.Chdir(wd); err != nil {
		return fmt.Errorf("sandbox: working directory %s: %w", wd, err)
	}
	path, err := lookPath(s.Args[0], s.Env)
	if err != nil {
		return err
	}
	if err := dropBoundingCaps(s.Caps); err != nil {
		return err
	}
	if err := unix.Prctl(unix.PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0); err != nil {
		return fmt.Errorf("sandbox: no_new_privs: %w", err)
	}
	if s.GID != nil || s.UID != nil {
		groups := make([]int, len(s.Groups))
		for i, g := range s.Groups {
			groups[i] = int(g)
		}
		if err := unix.Setgroups(groups); err != nil {
			return fmt.Errorf("sandbox: setgroups: %w", err)
		}
	}
	if s.GID != nil {
		if err := unix.Setresgid(int(*s.GID), int(*s.GID), int(*s.GID)); err != nil {
			return fmt.Errorf("sandbox: setgid: %w", err)
		}
	}
	if s.UID != nil {
		if err := unix.Setresuid(int(*s.UID), int(*s.UID), int(*s.UID)); err != nil {
			return fmt.Errorf("sandbox: setuid: %w", err)
		}
	}
	err = syscall.Exec(path, s.Args, s.Env)
	return fmt.Errorf("exec %q: %w", s.Args[0], err)
}

// maskedProcPaths are hidden behind /dev/null, as container runtimes do.
var maskedProcPaths = []string{"/proc/kcore", "/proc/sysrq-trigger", "/proc/kmsg", "/proc/keys", "/proc/timer_list"}

type symlinkSpec struct{ path, target string }

// treeMount is a detached clone of a host file or directory tree, to be attached at target.
type treeMount struct {
	fd     int
	dir    bool
	target string
}

// cloneTree clones the mount tree at path (relative to dirfd; "" for dirfd itself), read-only
// if asked.
func cloneTree(dirfd int, path, target string, readOnly bool) (treeMount, error) {
	flags := uint(unix.OPEN_TREE_CLONE | unix.OPEN_TREE_CLOEXEC | unix.AT_RECURSIVE)
	if path == "" {
		flags |= unix.AT_EMPTY_PATH
	}
	fd, err := unix.OpenTree(dirfd, path, flags)
	if err != nil {
		return treeMount{}, fmt.Errorf("sandbox: cloning %s: %w", target, err)
	}
	if readOnly {
		err := unix.MountSetattr(fd, "", unix.AT_EMPTY_PATH|unix.AT_RECURSIVE, &unix.MountAttr{Attr_set: unix.MOUNT_ATTR_RDONLY})
		if err != nil {
			return treeMount{}, fmt.Errorf("sandbox: read-only %s: %w", target, err)
		}
	}
	var st unix.Stat_t
	if err := unix.Fstat(fd, &st); err != nil {
		return treeMount{}, fmt.Errorf("sandbox: %s: %w", target, err)
	}
	return treeMount{fd: fd, dir: st.Mode&unix.S_IFMT == unix.S_IFDIR, target: target}, nil
}

// cloneVolume clones a volume's directory, or the sub path inside it, which is resolved without
// ever leaving the volume's directory (symlinks included).
func cloneVolume(m sandboxMount) (treeMount, error) {
	if m.SubPath == "" {
		return cloneTree(unix.AT_FDCWD, m.Source, m.Target, m.ReadOnly)
	}
	dir, err := unix.Open(m.Source, unix.O_PATH|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
	if err != nil {
		return treeMount{}, fmt.Errorf("sandbox: volume for %s: %w", m.Target, err)
	}
	defer unix.Close(dir)
	fd, err := unix.Openat2(dir, m.SubPath, &unix.OpenHow{
		Flags:   unix.O_PATH | unix.O_CLOEXEC,
		Resolve: unix.RESOLVE_BENEATH | unix.RESOLVE_NO_MAGICLINKS,
	})
	if err != nil {
		return treeMount{}, fmt.Errorf("sandbox: subPath %q for %s: %w", m.SubPath, m.Target, err)
	}
	defer unix.Close(fd)
	return cloneTree(fd, "", m.Target, m.ReadOnly)
}

// attach puts the clone at its target, creating the mount point.
func (t treeMount) attach() error {
	if t.dir {
		if err := ensureDir(t.target, 0o755); err != nil {
			return fmt.Errorf("sandbox: mount point %s: %w", t.target, err)
		}
	} else {
		if err := ensureDir(filepath.Dir(t.target), 0o755); err != nil {
			return fmt.Errorf("sandbox: mount point %s: %w", t.target, err)
		}
		if fi, err := os.Lstat(t.target); err != nil || !fi.Mode().IsRegular() {
			_ = os.RemoveAll(t.target)
			if err := os.WriteFile(t.target, nil, 0o644); err != nil {
				return fmt.Errorf("sandbox: mount point %s: %w", t.target, err)
			}
		}
	}
	if err := unix.MoveMount(t.fd, "", unix.AT_FDCWD, t.target, unix.MOVE_MOUNT_F_EMPTY_PATH); err != nil {
		return fmt.Errorf("sandbox: mounting %s: %w", t.target, err)
	}
	_ = unix.Close(t.fd)
	return nil
}

// ensureDir makes dir (and parents) a directory unless it is one; whatever else is in its way (a
// file, a symlink) is removed. A new dir gets mode (umask bypassed).
func ensureDir(dir string, mode os.FileMode) error {
	fi, err := os.Lstat(dir)
	if err == nil {
		if fi.IsDir() {
			return nil
		}
		if err := os.Remove(dir); err != nil {
			return err
		}
	}
	if parent := filepath.Dir(dir); parent != dir {
		if err := ensureDir(parent, 0o755); err != nil {
			return err
		}
	}
	if err := os.Mkdir(dir, mode); err != nil && !errors.Is(err, os.ErrExist) {
		return err
	}
	return os.Chmod(dir, mode)
}

// mountProc mounts a proc for the sandbox's PID namespace at proc in the working directory (the
// container's root), through a file descriptor so that nothing can swap the mount point.
func mountProc() error {
	if err := ensureDir("proc", 0o555); err != nil {
		return fmt.Errorf("sandbox: /proc: %w", err)
	}
	fd, err := unix.Open("proc", unix.O_PATH|unix.O_NOFOLLOW|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
	if err != nil {
		return fmt.Errorf("sandbox: /proc: %w", err)
	}
	defer unix.Close(fd)
	target := "/proc/self/fd/" + strconv.Itoa(fd)
	if err := unix.Mount("proc", target, "proc", unix.MS_NOSUID|unix.MS_NODEV|unix.MS_NOEXEC, ""); err != nil {
		return fmt.Errorf("sandbox: mounting /proc: %w", err)
	}
	return nil
}

// setupProc makes /proc/sys read-only and masks a few kernel interfaces, as container runtimes
// do (proc itself is mounted by mountProc).
func setupProc(masks []treeMount) error {
	if err := unix.Mount("/proc/sys", "/proc/sys", "", unix.MS_BIND|unix.MS_REC, ""); err != nil {
		return fmt.Errorf("sandbox: /proc/sys: %w", err)
	}
	if err := unix.MountSetattr(unix.AT_FDCWD, "/proc/sys", unix.AT_RECURSIVE, &unix.MountAttr{Attr_set: unix.MOUNT_ATTR_RDONLY}); err != nil {
		return fmt.Errorf("sandbox: read-only /proc/sys: %w", err)
	}
	for _, m := range masks {
		if _, err := os.Stat(m.target); err != nil {
			_ = unix.Close(m.fd)
			continue
		}
		if err := unix.MoveMount(m.fd, "", unix.AT_FDCWD, m.target, unix.MOVE_MOUNT_F_EMPTY_PATH); err != nil {
			return fmt.Errorf("sandbox: masking %s: %w", m.target, err)
		}
		_ = unix.Close(m.fd)
	}
	return nil
}

func setupDev(devices []treeMount) error {
	if err := ensureDir("/dev", 0o755); err != nil {
		return fmt.Errorf("sandbox: /dev: %w", err)
	}
	if err := unix.Mount("tmpfs", "/dev", "tmpfs", unix.MS_NOSUID|unix.MS_NOEXEC, "mode=755,size=1024k"); err != nil {
		return fmt.Errorf("sandbox: mounting /dev: %w", err)
	}
	for _, d := range devices {
		if err := d.attach(); err != nil {
			return err
		}
	}
	for name, target := range map[string]string{
		"fd": "/proc/self/fd", "stdin": "/proc/self/fd/0", "stdout": "/proc/self/fd/1",
		"stderr": "/proc/self/fd/2", "ptmx": "pts/ptmx",
	} {
		if err := os.Symlink(target, "/dev/"+name); err != nil {
			return fmt.Errorf("sandbox: /dev/%s: %w", name, err)
		}
	}
	// Optional: a terminal and shared memory work without them for most commands.
	if os.Mkdir("/dev/pts", 0o755) == nil {
		_ = unix.Mount("devpts", "/dev/pts", "devpts", unix.MS_NOSUID|unix.MS_NOEXEC, "newinstance,ptmxmode=0666,mode=0620")
	}
	if os.Mkdir("/dev/shm", 0o1777) == nil {
		_ = unix.Mount("shm", "/dev/shm", "tmpfs", unix.MS_NOSUID|unix.MS_NODEV, "mode=1777,size=65536k")
	}
	return nil
}

// lookPath finds the command like a shell would, with the PATH of env (default defaultPath).
func lookPath(name string, env []string) (string, error) {
	if strings.Contains(name, "/") {
		if err := isExecutable(name); err != nil {
			return "", fmt.Errorf("exec: %q: %w", name, err)
		}
		return name, nil
	}
	path := defaultPath
	for _, kv := range env {
		if v, ok := strings.CutPrefix(kv, "PATH="); ok {
			path = v
		}
	}
	for _, dir := range filepath.SplitList(path) {
		if dir == "" {
			dir = "."
		}
		p := filepath.Join(dir, name)
		if isExecutable(p) == nil {
			return p, nil
		}
	}
	return "", fmt.Errorf("exec: %q: executable file not found in $PATH", name)
}

func isExecutable(p string) error {
	fi, err := os.Stat(p)
	if err != nil {
		return err
	}
	if fi.IsDir() || fi.Mode()&0o111 == 0 {
		return errors.New("not an executable file")
	}
	return nil
}

// dropBoundingCaps removes every capability but keep from this thread's bounding set, so the
// exec'd command (even as root) can never hold one of them.
func dropBoundingCaps(keep []int) error {
	kept := map[int]bool{}
	for _, c := range keep {
		kept[c] = true
	}
	for c := 0; c <= 63; c++ {
		if kept[c] {
			continue
		}
		if err := unix.Prctl(unix.PR_CAPBSET_DROP, uintptr(c), 0, 0, 0); err != nil {
			if errors.Is(err, unix.EINVAL) {
				break // past the kernel's last capability
			}
			return fmt.Errorf("sandbox: dropping capability %d: %w", c, err)
		}
	}
	return nil
}

// capNames are the Linux capabilities by number.
var capNames = []string{
	"CHOWN", "DAC_OVERRIDE", "DAC_READ_SEARCH", "FOWNER", "FSETID", "KILL", "SETGID", "SETUID",
	"SETPCAP", "LINUX_IMMUTABLE", "NET_BIND_SERVICE", "NET_BROADCAST", "NET_ADMIN", "NET_RAW",
	"IPC_LOCK", "IPC_OWNER", "SYS_MODULE", "SYS_RAWIO", "SYS_CHROOT", "SYS_PTRACE", "SYS_PACCT",
	"SYS_ADMIN", "SYS_BOOT", "SYS_NICE", "SYS_RESOURCE", "SYS_TIME", "SYS_TTY_CONFIG", "MKNOD",
	"LEASE", "AUDIT_WRITE", "AUDIT_CONTROL", "SETFCAP", "MAC_OVERRIDE", "MAC_ADMIN", "SYSLOG",
	"WAKE_ALARM", "BLOCK_SUSPEND", "AUDIT_READ", "PERFMON", "BPF", "CHECKPOINT_RESTORE",
}

// defaultCaps are what a sandboxed process keeps unless its container drops them: a container
// runtime's defaults without MKNOD (block devices of the host), NET_RAW (sniffing the host's
// loopback) and SYS_CHROOT.
var defaultCaps = []string{
	"CHOWN", "DAC_OVERRIDE", "FOWNER", "FSETID", "KILL", "SETGID", "SETUID", "SETPCAP",
	"NET_BIND_SERVICE", "AUDIT_WRITE", "SETFCAP",
}

// grantableCaps may be added by a container's securityContext on top of defaultCaps; anything
// else (SYS_ADMIN, DAC_READ_SEARCH, SYS_PTRACE, ...) would let a process leave the sandbox, which
// shares the host's kernel, network and users, and is ignored.
var grantableCaps = map[string]bool{
	"SYS_CHROOT": true, "SYS_NICE": true, "IPC_LOCK": true, "LEASE": true, "NET_BROADCAST": true,
	"AUDIT_READ": true,
}

// capSet computes the bounding set for a container's capabilities (drop, then add).
func capSet(drop, add []string) []int {
	set := map[string]bool{}
	for _, c := range defaultCaps {
		set[c] = true
	}
	norm := func(c string) string { return strings.TrimPrefix(strings.ToUpper(c), "CAP_") }
	for _, c := range drop {
		if norm(c) == "ALL" {
			clear(set)
			continue
		}
		delete(set, norm(c))
	}
	for _, c := range add {
		c = norm(c)
		if c == "ALL" {
			for _, d := range defaultCaps {
				set[d] = true
			}
			for g := range grantableCaps {
				set[g] = true
			}
			continue
		}
		if set[c] || grantableCaps[c] || contains(defaultCaps, c) {
			set[c] = true
		}
	}
	var out []int
	for i, name := range capNames {
		if set[name] {
			out = append(out, i)
		}
	}
	return out
}

func contains(list []string, s string) bool {
	for _, v := range list {
		if v == s {
			return true
		}
	}
	return false
}

// sandboxIO is where a sandboxed process reads and writes. Nil streams are /dev/null. With TTY
// the process gets a pseudo-terminal for stdin, stdout and stderr, and Stdout receives it all.
type sandboxIO struct {
	Stdin          io.Reader
	Stdout, Stderr io.Writer
	TTY            bool
	Resize         <-chan remotecommand.TerminalSize
}

// errSandboxSetup wraps a failure to set up the sandbox or to start the command in it.
type errSandboxSetup struct{ msg string }

func (e *errSandboxSetup) Error() string { return e.msg }

// runSandboxed runs spec's command in a new sandbox and waits for it, killing it (and all it
// started) when ctx ends. started, if set, is called once the command runs. It returns the
// command's exit status (128+signal if killed by a signal), or an *errSandboxSetup when the
// command never ran.
func runSandboxed(ctx context.Context, spec *sandboxSpec, sio sandboxIO, started func()) (int, error) {
	raw, err := json.Marshal(spec)
	if err != nil {
		return 0, err
	}
	var (
		childEnds []*os.File // closed in the parent once the child has them
		parentEnd []*os.File // closed when done
		copies    sync.WaitGroup
	)
	defer func() {
		for _, f := range childEnds {
			_ = f.Close()
		}
	}()
	statusR, statusW, err := os.Pipe()
	if err != nil {
		return 0, err
	}
	defer statusR.Close()
	childEnds = append(childEnds, statusW)

	cmd := exec.Command("/proc/self/exe")
	cmd.Args = []string{"devnode-sandbox"}
	cmd.Env = []string{sandboxEnv + "=" + string(raw)}
	cmd.ExtraFiles = []*os.File{statusW}
	cmd.SysProcAttr = &syscall.SysProcAttr{
		Cloneflags: syscall.CLONE_NEWNS | syscall.CLONE_NEWPID | syscall.CLONE_NEWUTS | syscall.CLONE_NEWIPC,
		Pdeathsig:  syscall.SIGKILL,
	}
	if uid := os.Geteuid(); uid != 0 {
		// Not root: a user namespace of its own, where the node's user is root, gives the
		// sandbox the right to mount (the kernel must allow unprivileged user namespaces).
		cmd.SysProcAttr.Cloneflags |= syscall.CLONE_NEWUSER
		cmd.SysProcAttr.UidMappings = []syscall.SysProcIDMap{{ContainerID: 0, HostID: uid, Size: 1}}
		cmd.SysProcAttr.GidMappings = []syscall.SysProcIDMap{{ContainerID: 0, HostID: os.Getegid(), Size: 1}}
	}
	// pipeTo gives the child a pipe whose output is copied to w.
	pipeTo := func(w io.Writer) (*os.File, error) {
		if w == nil {
			return nil, nil
		}
		r, cw, err := os.Pipe()
		if err != nil {
			return nil, err
		}
		childEnds = append(childEnds, cw)
		copies.Go(func() {
			_, _ = io.Copy(w, r)
			_ = r.Close()
		})
		return cw, nil
	}
	if sio.TTY {
		master, slave, err := openPTY()
		if err != nil {
			return 0, fmt.Errorf("allocating a terminal: %w", err)
		}
		childEnds = append(childEnds, slave)
		parentEnd = append(parentEnd, master)
		cmd.Stdin, cmd.Stdout, cmd.Stderr = slave, slave, slave
		cmd.SysProcAttr.Setsid, cmd.SysProcAttr.Setctty, cmd.SysProcAttr.Ctty = true, true, 0
		cmd.Env = append(cmd.Env, "TERM=xterm")
		if sio.Stdin != nil {
			go func() { _, _ = io.Copy(master, sio.Stdin) }()
		}
		if sio.Stdout != nil {
			copies.Go(func() { _, _ = io.Copy(sio.Stdout, master) })
		}
		if sio.Resize != nil {
			fd := int(master.Fd())
			done := make(chan struct{})
			defer close(done)
			go func() {
				for {
					select {
					case <-done:
						return
					case sz, ok := <-sio.Resize:
						if !ok {
							return
						}
						_ = unix.IoctlSetWinsize(fd, unix.TIOCSWINSZ, &unix.Winsize{Row: sz.Height, Col: sz.Width})
					}
				}
			}()
		}
	} else {
		if sio.Stdin != nil {
			r, w, err := os.Pipe()
			if err != nil {
				return 0, err
			}
			childEnds = append(childEnds, r)
			cmd.Stdin = r
			// Not waited for: it ends when the caller's stream ends, which may be after the
			// command exits (a client that never closes stdin).
			go func() {
				_, _ = io.Copy(w, sio.Stdin)
				_ = w.Close()
			}()
		}
		out, err := pipeTo(sio.Stdout)
		if err != nil {
			return 0, err
		}
		if out != nil {
			cmd.Stdout = out
		}
		errOut, err := pipeTo(sio.Stderr)
		if err != nil {
			return 0, err
		}
		if errOut != nil {
			cmd.Stderr = errOut
		}
	}
	defer func() {
		for _, f := range parentEnd {
			_ = f.Close()
		}
	}()
	if err := cmd.Start(); err != nil {
		return 0, &errSandboxSetup{msg: "starting the sandbox: " + err.Error()}
	}
	stopKill := context.AfterFunc(ctx, func() { _ = cmd.Process.Kill() })
	defer stopKill()
	for _, f := range childEnds {
		_ = f.Close()
	}
	childEnds = nil
	// EOF without a message: the command was exec'd (the pipe is close-on-exec).
	msg, _ := io.ReadAll(statusR)
	if len(msg) == 0 && started != nil {
		started()
	}
	werr := cmd.Wait()
	copies.Wait()
	if len(msg) > 0 {
		return 0, &errSandboxSetup{msg: string(msg)}
	}
	if werr != nil {
		var ee *exec.ExitError
		if !errors.As(werr, &ee) {
			return 0, werr
		}
	}
	ws, _ := cmd.ProcessState.Sys().(syscall.WaitStatus)
	if ws.Signaled() {
		return 128 + int(ws.Signal()), nil
	}
	return ws.ExitStatus(), nil
}

// openPTY allocates a pseudo-terminal pair.
func openPTY() (master, slave *os.File, err error) {
	master, err = os.OpenFile("/dev/ptmx", os.O_RDWR|syscall.O_NOCTTY, 0)
	if err != nil {
		return nil, nil, err
	}
	fd := int(master.Fd())
	if err := unix.IoctlSetPointerInt(fd, unix.TIOCSPTLCK, 0); err != nil {
		master.Close()
		return nil, nil, err
	}
	n, err := unix.IoctlGetUint32(fd, unix.TIOCGPTN)
	if err != nil {
		master.Close()
		return nil, nil, err
	}
	slave, err = os.OpenFile(fmt.Sprintf("/dev/pts/%d", n), os.O_RDWR|syscall.O_NOCTTY, 0)
	if err != nil {
		master.Close()
		return nil, nil, err
	}
	return master, slave, nil
}
