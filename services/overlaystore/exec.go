package overlaystore

import (
	"context"
	"errors"
	"fmt"
	"io"
	"strings"
	"sync"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/kubernetes/scheme"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/remotecommand"
	"k8s.io/streaming/pkg/httpstream"
)

// Executor runs a command in a container of a Pod, streaming stdin (nil: none) and stdout. A
// command that ran and exited non-zero is an *ExecError with its exit code.
type Executor interface {
	Exec(ctx context.Context, namespace, pod, container string, command []string, stdin io.Reader, stdout io.Writer) error
}

// ExecError is a failed exec: the command's exit code (-1 when it did not run to an exit
// status: connection, upgrade, missing container) and the end of its stderr.
type ExecError struct {
	Container string
	Command   []string
	ExitCode  int
	Stderr    string
	Err       error
}

func (e *ExecError) Error() string {
	s := fmt.Sprintf("exec %q in container %s", strings.Join(e.Command, " "), e.Container)
	if e.ExitCode >= 0 {
		s += fmt.Sprintf(": exit status %d", e.ExitCode)
	} else if e.Err != nil {
		s += ": " + e.Err.Error()
	}
	if e.Stderr != "" {
		s += ": " + strings.TrimSpace(e.Stderr)
	}
	return s
}

func (e *ExecError) Unwrap() error { return e.Err }

// KubeExecutor execs through the API server's pods/exec subresource (WebSocket, falling back
// to SPDY), as kubectl exec does.
type KubeExecutor struct {
	config *rest.Config
	client kubernetes.Interface
}

// NewKubeExecutor makes a KubeExecutor for the API server of config.
func NewKubeExecutor(config *rest.Config) (*KubeExecutor, error) {
	cs, err := kubernetes.NewForConfig(config)
	if err != nil {
		return nil, err
	}
	return &KubeExecutor{config: config, client: cs}, nil
}

// maxStderr is how much of a command's stderr an ExecError keeps.
const maxStderr = 4 << 10

// Exec implements Executor.
func (k *KubeExecutor) Exec(ctx context.Context, namespace, pod, container string, command []string, stdin io.Reader, stdout io.Writer) error {
	req := k.client.CoreV1().RESTClient().Post().Resource("pods").Namespace(namespace).Name(pod).SubResource("exec").
		VersionedParams(&corev1.PodExecOptions{
			Container: container, Command: command, Stdin: stdin != nil, Stdout: true, Stderr: true,
		}, scheme.ParameterCodec)
	fail := func(err error) error {
		return &ExecError{Container: container, Command: command, ExitCode: -1, Err: err}
	}
	ws, err := remotecommand.NewWebSocketExecutor(k.config, "GET", req.URL().String())
	if err != nil {
		return fail(err)
	}
	spdy, err := remotecommand.NewSPDYExecutor(k.config, "POST", req.URL())
	if err != nil {
		return fail(err)
	}
	exec, err := remotecommand.NewFallbackExecutor(ws, spdy, func(err error) bool {
		return httpstream.IsUpgradeFailure(err) || httpstream.IsHTTPSProxyError(err)
	})
	if err != nil {
		return fail(err)
	}
	stderr := &tailBuffer{max: maxStderr}
	if stdout == nil {
		stdout = io.Discard
	}
	err = exec.StreamWithContext(ctx, remotecommand.StreamOptions{Stdin: stdin, Stdout: stdout, Stderr: stderr})
	if err == nil {
		return nil
	}
	e := &ExecError{Container: container, Command: command, ExitCode: -1, Stderr: stderr.String(), Err: err}
	var exit interface{ ExitStatus() int }
	if errors.As(err, &exit) {
		e.ExitCode = exit.ExitStatus()
	}
	if ctx.Err() != nil {
		e.Err = fmt.Errorf("%w (%v)", ctx.Err(), err)
	}
	return e
}

// tailBuffer keeps the last max bytes written to it.
type tailBuffer struct {
	mu  sync.Mutex
	buf []byte
	max int
}

func (b *tailBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	b.buf = append(b.buf, p...)
	if len(b.buf) > b.max {
		b.buf = append(b.buf[:0], b.buf[len(b.buf)-b.max:]...)
	}
	return len(p), nil
}

func (b *tailBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return string(b.buf)
}
