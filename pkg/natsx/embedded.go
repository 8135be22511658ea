package natsx

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"strings"
	"sync"
	"time"

	"github.com/nats-io/nats-server/v2/server"
)

// ReadyTimeout is how long [StartEmbedded] waits for the server to accept
// connections.
const ReadyTimeout = 10 * time.Second

// EmbeddedOptions configures an in-process nats-server with JetStream.
type EmbeddedOptions struct {
	// StoreDir is the JetStream storage directory. Required. Starting a new
	// server on the same directory recovers every stream and bucket in it.
	StoreDir string
	// Host to listen on; default 127.0.0.1.
	Host string
	// Port to listen on; 0 or -1 picks a random free port. The dev stack uses
	// 4222.
	Port int
	// ServerName names the server (shown in monitoring and logs); default
	// "boilerhouse-embedded".
	ServerName string
	// SyncAlways makes JetStream fsync every write before acknowledging it,
	// for every file-backed stream on the server. Without it, writes reach the
	// OS before the ack but are fsynced only every 2 minutes, so a power loss
	// or kernel crash can lose acknowledged writes. It is server-wide because
	// nats-server offers no per-stream fsync setting (see the package doc).
	// The dev stack sets it; the cost is one fsync per KV write, measured by
	// BenchmarkKVUpdate.
	SyncAlways bool
	// Logger receives the server's log lines; nil discards them.
	Logger *slog.Logger
}

// StartEmbedded starts a nats-server in this process with JetStream enabled
// on opts.StoreDir and waits until it accepts connections. On any failure the
// server is shut down and an error is returned. Stop it with [Shutdown].
func StartEmbedded(opts EmbeddedOptions) (*server.Server, error) {
	if opts.StoreDir == "" {
		return nil, errors.New("natsx: embedded NATS server: StoreDir is required")
	}
	host := opts.Host
	if host == "" {
		host = "127.0.0.1"
	}
	port := opts.Port
	if port == 0 {
		port = server.RANDOM_PORT
	}
	name := opts.ServerName
	if name == "" {
		name = "boilerhouse-embedded"
	}

	sopts := &server.Options{
		ServerName: name,
		Host:       host,
		Port:       port,
		JetStream:  true,
		StoreDir:   opts.StoreDir,
		SyncAlways: opts.SyncAlways,
		NoSigs:     true,
		// Logging goes through our own logger, set below; NoLog would stop
		// us from recording why the server failed to start.
		NoLog: false,
	}
	s, err := server.NewServer(sopts)
	if err != nil {
		return nil, fmt.Errorf("natsx: embedded NATS server: %w", err)
	}
	logger := &serverLogger{log: opts.Logger}
	debug := opts.Logger != nil && opts.Logger.Enabled(context.Background(), slog.LevelDebug)
	s.SetLogger(logger, debug, false)

	// Start returns once the listeners are set up; it enables JetStream
	// synchronously, so a JetStream failure is visible right after it.
	s.Start()
	fail := func(what string) (*server.Server, error) {
		s.Shutdown()
		s.WaitForShutdown()
		if reason := logger.lastFailure(); reason != "" {
			return nil, fmt.Errorf("natsx: embedded NATS server %q on %s:%d: %s: %s", name, host, port, what, reason)
		}
		return nil, fmt.Errorf("natsx: embedded NATS server %q on %s:%d: %s", name, host, port, what)
	}
	// A listener failure (port in use, bad host) is reported through Fatalf
	// during Start; fail now rather than after ReadyTimeout.
	if logger.fatalSeen() {
		return fail("failed to start")
	}
	if !s.JetStreamEnabled() {
		return fail(fmt.Sprintf("JetStream did not start on store dir %q", opts.StoreDir))
	}
	if !s.ReadyForConnections(ReadyTimeout) {
		return fail(fmt.Sprintf("not ready for connections within %s", ReadyTimeout))
	}
	return s, nil
}

// Shutdown stops s and waits until it has shut down. A nil s is a no-op.
func Shutdown(s *server.Server) {
	if s == nil {
		return
	}
	s.Shutdown()
	s.WaitForShutdown()
}

// serverLogger adapts nats-server's Logger interface to slog and remembers
// the last fatal or error line, so that a failed start can say why.
type serverLogger struct {
	log *slog.Logger

	mu      sync.Mutex
	fatal   string
	lastErr string
}

func (l *serverLogger) fatalSeen() bool {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.fatal != ""
}

func (l *serverLogger) lastFailure() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.fatal != "" {
		return l.fatal
	}
	return l.lastErr
}

func (l *serverLogger) emit(level slog.Level, format string, v []any) string {
	msg := strings.TrimSpace(fmt.Sprintf(format, v...))
	if l.log != nil {
		l.log.Log(context.Background(), level, msg, slog.String("component", "nats-server"))
	}
	return msg
}

func (l *serverLogger) Noticef(format string, v ...any) { l.emit(slog.LevelInfo, format, v) }
func (l *serverLogger) Warnf(format string, v ...any)   { l.emit(slog.LevelWarn, format, v) }
func (l *serverLogger) Debugf(format string, v ...any)  { l.emit(slog.LevelDebug, format, v) }
func (l *serverLogger) Tracef(format string, v ...any)  { l.emit(slog.LevelDebug-4, format, v) }

func (l *serverLogger) Errorf(format string, v ...any) {
	msg := l.emit(slog.LevelError, format, v)
	l.mu.Lock()
	l.lastErr = msg
	l.mu.Unlock()
}

// Fatalf logs at error level and never exits the process; StartEmbedded turns
// the failure into an error.
func (l *serverLogger) Fatalf(format string, v ...any) {
	msg := l.emit(slog.LevelError, format, v)
	l.mu.Lock()
	l.fatal = msg
	l.mu.Unlock()
}
