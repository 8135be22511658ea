package overlaystore

import (
	"bytes"
	"context"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"k8s.io/client-go/rest"
	"k8s.io/cri-streaming/pkg/streaming/remotecommand"
)

// catExecutor answers every exec by copying stdin to stdout.
type catExecutor struct{}

func (catExecutor) ExecInContainer(_ context.Context, _, _, _ string, _ []string, in io.Reader, out, _ io.WriteCloser, _ bool, _ <-chan remotecommand.TerminalSize, _ time.Duration) error {
	_, err := io.Copy(out, in)
	return err
}

// An API server (or a proxy in front of it) that refuses the WebSocket upgrade still gets the
// exec, over SPDY: the executor falls back when client-go reports an upgrade failure.
func TestExecFallsBackToSPDY(t *testing.T) {
	var refused, served atomic.Int32
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if !strings.HasSuffix(r.URL.Path, "/namespaces/ns/pods/p/exec") {
			http.NotFound(w, r)
			return
		}
		if strings.EqualFold(r.Header.Get("Upgrade"), "websocket") {
			refused.Add(1)
			http.Error(w, "websocket upgrades are not allowed here", http.StatusForbidden)
			return
		}
		// As the API server would: its exec options ("true") become the kubelet's streams.
		q := r.URL.Query()
		opts := &remotecommand.Options{Stdin: q.Get("stdin") == "true", Stdout: q.Get("stdout") == "true", Stderr: q.Get("stderr") == "true"}
		served.Add(1)
		remotecommand.ServeExec(w, r, catExecutor{}, "p", "uid", "c", q["command"], opts,
			time.Minute, remotecommand.DefaultStreamCreationTimeout, remotecommand.SupportedStreamingProtocols)
	}))
	defer srv.Close()

	ex, err := NewKubeExecutor(&rest.Config{Host: srv.URL})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	var out bytes.Buffer
	if err := ex.Exec(ctx, "ns", "p", "c", []string{"cat"}, strings.NewReader("overlay bytes"), &out); err != nil {
		t.Fatalf("exec: %v", err)
	}
	if out.String() != "overlay bytes" {
		t.Errorf("stdout %q, want the stdin back", out.String())
	}
	if refused.Load() != 1 || served.Load() != 1 {
		t.Errorf("websocket attempts %d, SPDY execs %d; want 1 and 1", refused.Load(), served.Load())
	}
}
