package localkube

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
)

// renice sets the nice value of every thread of this process's children that run etcd or
// kube-apiserver from dir. On Linux nice belongs to each thread; threads created
// later inherit it from the thread that creates them, so two passes catch the ones that
// appear meanwhile.
func renice(dir string, nice int) error {
	bins, err := controlPlaneBins(dir, "etcd", "kube-apiserver")
	if err != nil {
		return err
	}
	for range 2 {
		pids, err := children(bins)
		if err != nil {
			return err
		}
		if len(pids) == 0 {
			return errors.New("localkube: renice: no control plane process found")
		}
		for _, pid := range pids {
			tasks, err := os.ReadDir(fmt.Sprintf("/proc/%d/task", pid))
			if err != nil {
				return fmt.Errorf("localkube: renice %d: %w", pid, err)
			}
			for _, t := range tasks {
				tid, err := strconv.Atoi(t.Name())
				if err != nil {
					continue
				}
				if err := syscall.Setpriority(syscall.PRIO_PROCESS, tid, nice); err != nil && !errors.Is(err, syscall.ESRCH) {
					return fmt.Errorf("localkube: renice thread %d of %d: %w", tid, pid, err)
				}
			}
		}
	}
	return nil
}

// signalAPIServer sends sig to the kube-apiserver from dir that this process runs.
func signalAPIServer(dir string, sig syscall.Signal) error {
	bins, err := controlPlaneBins(dir, "kube-apiserver")
	if err != nil {
		return err
	}
	pids, err := children(bins)
	if err != nil {
		return err
	}
	if len(pids) != 1 {
		return fmt.Errorf("localkube: %d kube-apiserver processes found, want 1", len(pids))
	}
	return syscall.Kill(pids[0], sig)
}

// controlPlaneBins is the set of executables that the named binaries from dir run as.
func controlPlaneBins(dir string, names ...string) (map[string]bool, error) {
	bins := map[string]bool{}
	for _, b := range names {
		// A link to a system etcd runs as its target.
		path, err := filepath.EvalSymlinks(filepath.Join(dir, b))
		if err != nil {
			return nil, err
		}
		bins[path] = true
	}
	return bins, nil
}

// children lists the processes whose parent is this process and whose executable is one of bins.
func children(bins map[string]bool) ([]int, error) {
	ents, err := os.ReadDir("/proc")
	if err != nil {
		return nil, err
	}
	var pids []int
	for _, e := range ents {
		pid, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		exe, err := os.Readlink(fmt.Sprintf("/proc/%d/exe", pid))
		if err != nil || !bins[exe] {
			continue
		}
		if ppid, err := parentOf(pid); err == nil && ppid == os.Getpid() {
			pids = append(pids, pid)
		}
	}
	return pids, nil
}

// parentOf reads the parent pid from /proc/PID/stat ("pid (comm) state ppid ...", where comm
// may itself hold spaces and parentheses).
func parentOf(pid int) (int, error) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return 0, err
	}
	s := string(b)
	fields := strings.Fields(s[strings.LastIndexByte(s, ')')+1:])
	if len(fields) < 2 {
		return 0, fmt.Errorf("localkube: short /proc/%d/stat", pid)
	}
	return strconv.Atoi(fields[1])
}
