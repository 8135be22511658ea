package devnode

import (
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// openFiles is how many files this process has open.
func openFiles(t *testing.T) int {
	t.Helper()
	ents, err := os.ReadDir("/proc/self/fd")
	if err != nil {
		t.Fatal(err)
	}
	return len(ents)
}

// TestContainerLogHoldsNoFile: a log keeps no file open between writes (the listener is a
// Pod's only open file), appends across writes and Pods' restarts, and still rotates.
func TestContainerLogHoldsNoFile(t *testing.T) {
	dir := t.TempDir()
	before := openFiles(t)
	logs := make([]*containerLog, 300)
	for i := range logs {
		logs[i] = newContainerLog(filepath.Join(dir, fmt.Sprintf("log%d", i)))
		logs[i].printf("line %d", 1)
	}
	for _, l := range logs {
		l.printf("line %d", 2)
	}
	if open := openFiles(t) - before; open > 10 {
		t.Fatalf("%d more files open after writing 300 logs, want none held", open)
	}
	// A new writer of the same file (an adopted Pod) appends.
	again := newContainerLog(logs[0].path)
	again.printf("line %d", 3)
	b, err := os.ReadFile(logs[0].path)
	if err != nil {
		t.Fatal(err)
	}
	lines := strings.Split(strings.TrimSpace(string(b)), "\n")
	if len(lines) != 3 || !strings.HasSuffix(lines[0], " stdout F line 1") || !strings.HasSuffix(lines[2], " stdout F line 3") {
		t.Fatalf("log holds %q, want lines 1, 2, 3 in CRI format", lines)
	}
	again.close()
	again.printf("dropped")
	if b2, _ := os.ReadFile(logs[0].path); len(b2) != len(b) {
		t.Fatal("a write after close reached the file")
	}

	// Rotation: past logMaxBytes the file moves to log.1 and a new one starts.
	big := newContainerLog(filepath.Join(dir, "big"))
	chunk := strings.Repeat("x", logMaxLine)
	for range logMaxBytes/logMaxLine + 2 {
		big.printf("%s", chunk)
	}
	old, err := os.Stat(big.path + ".1")
	if err != nil || old.Size() < logMaxBytes {
		t.Fatalf("rotated log: %v, %v; want one of at least %d bytes", old, err, logMaxBytes)
	}
	cur, err := os.Stat(big.path)
	if err != nil || cur.Size() == 0 || cur.Size() >= logMaxBytes {
		t.Fatalf("current log after rotation: %v, %v", cur, err)
	}
}
