package devnode

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"strings"
	"sync"
	"syscall"
	"time"

	corev1 "k8s.io/api/core/v1"
)

// Container logs are files in the CRI log format the kubelet reads, one entry a line:
//
//	2026-01-02T15:04:05.123456789Z stdout F the text
//
// (F: a full line; P: part of a line that went on in the next entry). The demo servers write
// their start and stop lines and one line per request; init containers' stdout and stderr go
// there as they are written.

const (
	// logMaxBytes is the size at which a log file is rotated to log.1 (which is replaced).
	logMaxBytes = 8 << 20
	// logMaxLine is the longest text kept in one entry; longer lines are split (P entries).
	logMaxLine = 16 << 10
	// logFollowPoll is how often a followed log is checked for new entries.
	logFollowPoll = 100 * time.Millisecond
)

// containerLog appends entries to one container's log file; writes after close are dropped.
// The file is opened for each write and closed after it: a Pod that serves a port keeps its
// listener open already, and a log held open too would make two files per Pod (10,000 Pods
// would pass a 20,000 open-file limit).
type containerLog struct {
	path string

	mu     sync.Mutex
	size   int64 // the file's size; -1 until read
	closed bool
}

func newContainerLog(path string) *containerLog { return &containerLog{path: path, size: -1} }

// printf writes one full stdout line.
func (l *containerLog) printf(format string, args ...any) {
	l.entry("stdout", false, []byte(fmt.Sprintf(format, args...)))
}

// entry appends one entry (more than one if text is longer than logMaxLine).
func (l *containerLog) entry(stream string, partial bool, text []byte) {
	for len(text) > logMaxLine {
		l.entry(stream, true, text[:logMaxLine])
		text = text[logMaxLine:]
	}
	tag := "F"
	if partial {
		tag = "P"
	}
	var b bytes.Buffer
	b.Grow(len(text) + 48)
	b.WriteString(time.Now().UTC().Format(time.RFC3339Nano))
	b.WriteByte(' ')
	b.WriteString(stream)
	b.WriteByte(' ')
	b.WriteString(tag)
	b.WriteByte(' ')
	b.Write(bytes.ReplaceAll(text, []byte{'\n'}, []byte{' '}))
	b.WriteByte('\n')

	l.mu.Lock()
	defer l.mu.Unlock()
	if l.closed {
		return
	}
	if l.size < 0 { // an adopted Pod's log goes on where it was
		fi, err := os.Stat(l.path)
		switch {
		case err == nil:
			l.size = fi.Size()
		case errors.Is(err, os.ErrNotExist):
			l.size = 0
		default:
			return
		}
	}
	if l.size >= logMaxBytes {
		_ = os.Rename(l.path, l.path+".1")
		l.size = 0
	}
	f, err := os.OpenFile(l.path, os.O_WRONLY|os.O_CREATE|os.O_APPEND, 0o644)
	if err != nil {
		return // the Pod's directory is gone (being deleted)
	}
	n, _ := f.Write(b.Bytes())
	_ = f.Close()
	l.size += int64(n)
}

// touch creates the log file if it does not exist yet.
func (l *containerLog) touch() {
	f, err := os.OpenFile(l.path, os.O_WRONLY|os.O_CREATE|os.O_APPEND, 0o644)
	if err == nil {
		_ = f.Close()
	}
}

func (l *containerLog) close() {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.closed = true
}

// streamWriter returns a writer that turns a process's output stream into entries, a line
// each. Close writes what is left of an unfinished last line.
func (l *containerLog) streamWriter(stream string) *logStreamWriter {
	return &logStreamWriter{l: l, stream: stream}
}

type logStreamWriter struct {
	l      *containerLog
	stream string
	buf    []byte
}

func (w *logStreamWriter) Write(p []byte) (int, error) {
	w.buf = append(w.buf, p...)
	for {
		i := bytes.IndexByte(w.buf, '\n')
		if i < 0 {
			break
		}
		w.l.entry(w.stream, false, w.buf[:i])
		w.buf = w.buf[i+1:]
	}
	for len(w.buf) >= logMaxLine {
		w.l.entry(w.stream, true, w.buf[:logMaxLine])
		w.buf = w.buf[logMaxLine:]
	}
	if len(w.buf) == 0 {
		w.buf = nil
	}
	return len(p), nil
}

func (w *logStreamWriter) Close() error {
	if len(w.buf) > 0 {
		w.l.entry(w.stream, false, w.buf)
		w.buf = nil
	}
	return nil
}

// logEntry is one parsed line of a log file.
type logEntry struct {
	ts      time.Time
	stream  string
	partial bool
	text    []byte
}

func parseLogEntry(line []byte) (logEntry, bool) {
	ts, rest, ok := bytes.Cut(line, []byte{' '})
	if !ok {
		return logEntry{}, false
	}
	t, err := time.Parse(time.RFC3339Nano, string(ts))
	if err != nil {
		return logEntry{}, false
	}
	stream, rest, ok := bytes.Cut(rest, []byte{' '})
	if !ok {
		return logEntry{}, false
	}
	tag, text, _ := bytes.Cut(rest, []byte{' '})
	return logEntry{ts: t, stream: string(stream), partial: string(tag) == "P", text: text}, true
}

// logWriter writes entries to a client as PodLogOptions ask (stream, since, timestamps,
// limitBytes), flushing after each batch.
type logWriter struct {
	w       io.Writer
	flush   func()
	opts    *corev1.PodLogOptions
	since   time.Time
	written int64
}

// errLogLimit ends a log stream once limitBytes have been written.
var errLogLimit = errors.New("log limit reached")

func (lw *logWriter) want(e *logEntry) bool {
	if s := lw.opts.Stream; s != nil && *s != corev1.LogStreamAll && !strings.EqualFold(*s, e.stream) {
		return false
	}
	return lw.since.IsZero() || !e.ts.Before(lw.since)
}

func (lw *logWriter) write(e *logEntry) error {
	var b []byte
	if lw.opts.Timestamps {
		b = append(b, e.ts.Format(time.RFC3339Nano)...)
		b = append(b, ' ')
	}
	b = append(b, e.text...)
	if !e.partial {
		b = append(b, '\n')
	}
	if l := lw.opts.LimitBytes; l != nil {
		left := *l - lw.written
		if left <= 0 {
			return errLogLimit
		}
		if int64(len(b)) > left {
			b = b[:left]
		}
	}
	n, err := lw.w.Write(b)
	lw.written += int64(n)
	if err != nil {
		return err
	}
	if l := lw.opts.LimitBytes; l != nil && lw.written >= *l {
		return errLogLimit
	}
	return nil
}

// readLogEntries parses every entry of the files, in order; missing files are skipped.
func readLogEntries(paths ...string) ([]logEntry, error) {
	var out []logEntry
	for _, p := range paths {
		b, err := os.ReadFile(p)
		if errors.Is(err, os.ErrNotExist) {
			continue
		}
		if err != nil {
			return nil, err
		}
		for len(b) > 0 {
			line, rest, ok := bytes.Cut(b, []byte{'\n'})
			if !ok {
				break // a line still being written
			}
			b = rest
			if e, ok := parseLogEntry(line); ok {
				out = append(out, e)
			}
		}
	}
	return out, nil
}

// streamLog writes a container's log to w: the wanted entries (the last tailLines lines), then,
// if opts.Follow, new entries as they come until ctx ends or finished reports true.
func streamLog(ctx context.Context, w io.Writer, flush func(), path string, opts *corev1.PodLogOptions, finished func() bool) error {
	lw := &logWriter{w: w, flush: flush, opts: opts}
	if opts.SinceSeconds != nil {
		lw.since = time.Now().Add(-time.Duration(*opts.SinceSeconds) * time.Second)
	} else if opts.SinceTime != nil {
		lw.since = opts.SinceTime.Time
	}
	// The current file's identity and size as read, so following picks up where this left.
	f, err := os.Open(path)
	var ino uint64
	var offset int64
	var entries []logEntry
	if err == nil {
		fi, serr := f.Stat()
		_ = f.Close()
		if serr != nil {
			return serr
		}
		ino = inode(fi)
		prev, err := readLogEntries(path + ".1")
		if err != nil {
			return err
		}
		b, err := readFileAt(path, 0)
		if err != nil {
			return err
		}
		complete := bytes.LastIndexByte(b, '\n') + 1
		offset = int64(complete)
		cur, _ := parseEntries(b[:complete])
		entries = append(prev, cur...)
	} else if !errors.Is(err, os.ErrNotExist) {
		return err
	}
	wanted := entries[:0:0]
	for i := range entries {
		if lw.want(&entries[i]) {
			wanted = append(wanted, entries[i])
		}
	}
	if t := opts.TailLines; t != nil {
		wanted = tailEntries(wanted, int(*t))
	}
	for i := range wanted {
		if err := lw.write(&wanted[i]); err != nil {
			return ignoreLimit(err)
		}
	}
	flush()
	if !opts.Follow {
		return nil
	}
	tick := time.NewTicker(logFollowPoll)
	defer tick.Stop()
	for {
		done := finished()
		// Pick up what was appended, or start over on a rotated (replaced) file.
		if fi, err := os.Stat(path); err == nil {
			if inode(fi) != ino || fi.Size() < offset {
				ino, offset = inode(fi), 0
			}
			b, err := readFileAt(path, offset)
			if err != nil {
				return err
			}
			complete := bytes.LastIndexByte(b, '\n') + 1
			offset += int64(complete)
			news, _ := parseEntries(b[:complete])
			for i := range news {
				if !lw.want(&news[i]) {
					continue
				}
				if err := lw.write(&news[i]); err != nil {
					return ignoreLimit(err)
				}
			}
			if len(news) > 0 {
				flush()
			}
		}
		if done {
			return nil
		}
		select {
		case <-ctx.Done():
			return nil
		case <-tick.C:
		}
	}
}

func ignoreLimit(err error) error {
	if errors.Is(err, errLogLimit) {
		return nil
	}
	return err
}

func parseEntries(b []byte) ([]logEntry, error) {
	var out []logEntry
	sc := bufio.NewScanner(bytes.NewReader(b))
	sc.Buffer(make([]byte, 0, 64<<10), 4*logMaxLine)
	for sc.Scan() {
		if e, ok := parseLogEntry(sc.Bytes()); ok {
			e.text = bytes.Clone(e.text)
			out = append(out, e)
		}
	}
	return out, sc.Err()
}

// tailEntries keeps the entries of the last n lines (a line is its P entries and its F entry).
func tailEntries(entries []logEntry, n int) []logEntry {
	if n < 0 {
		return entries
	}
	lines := 0
	for i := len(entries) - 1; i >= 0; i-- {
		if !entries[i].partial {
			if lines == n {
				return entries[i+1:]
			}
			lines++
		}
	}
	return entries
}

func readFileAt(path string, offset int64) ([]byte, error) {
	f, err := os.Open(path)
	if err != nil {
		if errors.Is(err, os.ErrNotExist) {
			return nil, nil
		}
		return nil, err
	}
	defer f.Close()
	if _, err := f.Seek(offset, io.SeekStart); err != nil {
		return nil, err
	}
	return io.ReadAll(f)
}

func inode(fi os.FileInfo) uint64 {
	if st, ok := fi.Sys().(*syscall.Stat_t); ok {
		return st.Ino
	}
	return 0
}

// flusher returns a func flushing w if it can.
func flusher(w http.ResponseWriter) func() {
	if f, ok := w.(http.Flusher); ok {
		return f.Flush
	}
	return func() {}
}
