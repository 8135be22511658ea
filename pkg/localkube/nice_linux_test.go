package localkube

import (
	"context"
	"fmt"
	"os"
	"strconv"
	"strings"
	"testing"
)

// TestNice starts a real control plane, renices it and reads every thread's nice value back.
func TestNice(t *testing.T) {
	p, err := Start(context.Background(), Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer p.Stop()
	if err := p.Renice(7); err != nil {
		t.Fatal(err)
	}
	assets, err := AssetsDir()
	if err != nil {
		t.Fatal(err)
	}
	bins, err := controlPlaneBins(assets, "etcd", "kube-apiserver")
	if err != nil {
		t.Fatal(err)
	}
	pids, err := children(bins)
	if err != nil {
		t.Fatal(err)
	}
	if len(pids) != 2 {
		t.Fatalf("found %d control plane processes, want etcd and kube-apiserver", len(pids))
	}
	for _, pid := range pids {
		tasks, err := os.ReadDir(fmt.Sprintf("/proc/%d/task", pid))
		if err != nil {
			t.Fatal(err)
		}
		for _, task := range tasks {
			b, err := os.ReadFile(fmt.Sprintf("/proc/%d/task/%s/stat", pid, task.Name()))
			if err != nil {
				continue // the thread ended
			}
			s := string(b)
			// Field 19 is nice; fields after "(comm)" start at field 3.
			f := strings.Fields(s[strings.LastIndexByte(s, ')')+1:])
			if nice, _ := strconv.Atoi(f[16]); nice != 7 {
				t.Errorf("process %d thread %s: nice %d, want 7", pid, task.Name(), nice)
			}
		}
	}
}
