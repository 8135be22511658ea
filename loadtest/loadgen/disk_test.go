package loadgen

import (
	"context"
	"strings"
	"testing"
	"time"
)

func TestFsyncProbe(t *testing.T) {
	p := StartFsyncProbe(context.Background(), t.TempDir(), 5*time.Millisecond)
	time.Sleep(200 * time.Millisecond)
	var b strings.Builder
	if err := p.Stop(&b); err != nil {
		t.Fatal(err)
	}
	if len(p.lat) < 5 || !strings.Contains(b.String(), "p99") {
		t.Fatalf("%d samples, line %q", len(p.lat), b.String())
	}
}

func TestFsyncProbeMissingDir(t *testing.T) {
	p := StartFsyncProbe(context.Background(), t.TempDir()+"/missing", time.Millisecond)
	if err := p.Stop(&strings.Builder{}); err == nil {
		t.Fatal("no error for a missing directory")
	}
}
