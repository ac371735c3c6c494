//go:build unix

package metal

import (
	"bufio"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"

	"golang.org/x/sys/unix"
)

// emulator runs dispatches in a runner process. Device memory is files
// mapped by both processes (in /dev/shm where it has room, else the
// temporary directory) and unlinked once mapped, so a dispatch sends only its
// description through the runner's stdin and nothing is left behind.
type emulator struct {
	mu     sync.Mutex
	cmd    *exec.Cmd
	stdin  io.WriteCloser
	out    *bufio.Reader
	stderr *tailBuffer
	dirs   []string // where buffer files are made, in order of preference
	nextID int64
	mems   map[*emuMem]bool
	broken error
}

// emuMem is a buffer file mapped into this process and the runner.
type emuMem struct {
	e    *emulator
	id   int64
	n    int64
	data []byte // the mapping (at least one byte)
}

func (m *emuMem) Bytes() []byte { return m.data[:m.n] }
func (m *emuMem) Len() int64    { return m.n }

// tailBuffer keeps the last bytes written to it (the runner's stderr).
type tailBuffer struct {
	mu  sync.Mutex
	buf []byte
}

func (t *tailBuffer) Write(p []byte) (int, error) {
	t.mu.Lock()
	defer t.mu.Unlock()
	t.buf = append(t.buf, p...)
	if len(t.buf) > 16384 {
		t.buf = append([]byte(nil), t.buf[len(t.buf)-16384:]...)
	}
	return len(p), nil
}

func (t *tailBuffer) String() string {
	t.mu.Lock()
	defer t.mu.Unlock()
	return string(t.buf)
}

func startEmulator(bin string) (*emulator, error) {
	e := &emulator{mems: map[*emuMem]bool{}, stderr: &tailBuffer{}}
	if fi, err := os.Stat("/dev/shm"); err == nil && fi.IsDir() && unix.Access("/dev/shm", unix.W_OK) == nil {
		e.dirs = append(e.dirs, "/dev/shm")
	}
	e.dirs = append(e.dirs, os.TempDir())
	e.cmd = exec.Command(bin)
	e.cmd.Stderr = e.stderr
	e.cmd.Env = append(os.Environ(), "ASAN_OPTIONS=detect_leaks=0:abort_on_error=0")
	var err error
	if e.stdin, err = e.cmd.StdinPipe(); err != nil {
		return nil, fmt.Errorf("metal-emulated: %w", err)
	}
	stdout, err := e.cmd.StdoutPipe()
	if err != nil {
		return nil, fmt.Errorf("metal-emulated: %w", err)
	}
	e.out = bufio.NewReader(stdout)
	if err := e.cmd.Start(); err != nil {
		return nil, fmt.Errorf("metal-emulated: starting the runner: %w", err)
	}
	return e, nil
}

// bufferFile creates a file of size bytes with its space reserved (so a full
// file system gives an error here, not a SIGBUS when the mapping is
// written), trying each buffer directory in turn.
func (e *emulator) bufferFile(id, size int64) (*os.File, error) {
	var errs []error
	for _, dir := range e.dirs {
		path := filepath.Join(dir, fmt.Sprintf("gemmoe-metal-emu-%d-%d", os.Getpid(), id))
		f, err := os.OpenFile(path, os.O_RDWR|os.O_CREATE|os.O_EXCL, 0o600)
		if err != nil {
			errs = append(errs, err)
			continue
		}
		if err = reserve(f, size); err == nil {
			return f, nil
		}
		f.Close()
		os.Remove(path)
		errs = append(errs, fmt.Errorf("%s: reserving %d bytes: %w", path, size, err))
	}
	return nil, fmt.Errorf("metal-emulated: no room for a %d-byte buffer: %v", size, errors.Join(errs...))
}

func (e *emulator) Name() string { return "metal-emulated" }

// call sends one command and returns the text after "ok" (e.mu held).
func (e *emulator) call(cmd string) (string, error) {
	if e.broken != nil {
		return "", e.broken
	}
	if _, err := io.WriteString(e.stdin, cmd+"\n"); err != nil {
		return "", e.fail(err)
	}
	line, err := e.out.ReadString('\n')
	if err != nil {
		return "", e.fail(err)
	}
	line = strings.TrimRight(line, "\n")
	switch {
	case line == "ok" || strings.HasPrefix(line, "ok "):
		return strings.TrimPrefix(strings.TrimPrefix(line, "ok"), " "), nil
	case strings.HasPrefix(line, "err "):
		return "", fmt.Errorf("%s", strings.TrimPrefix(line, "err "))
	}
	return "", e.fail(fmt.Errorf("unexpected reply %q", line))
}

// fail marks the runner dead, with its stderr (a sanitizer report) in the error.
func (e *emulator) fail(err error) error {
	_ = e.cmd.Process.Kill()
	_ = e.cmd.Wait()
	msg := strings.TrimSpace(e.stderr.String())
	if len(msg) > 6000 {
		msg = msg[:6000] + "\n..."
	}
	e.broken = fmt.Errorf("metal-emulated: the runner died (%v)\n%s", err, msg)
	return e.broken
}

func (e *emulator) Alloc(n int64) (Memory, error) {
	if n < 0 {
		return nil, fmt.Errorf("metal-emulated: allocating %d bytes", n)
	}
	e.mu.Lock()
	defer e.mu.Unlock()
	if e.broken != nil {
		return nil, e.broken
	}
	e.nextID++
	m := &emuMem{e: e, id: e.nextID, n: n}
	size := max(n, 1)
	f, err := e.bufferFile(m.id, size)
	if err != nil {
		return nil, err
	}
	// Once both processes map the file, its name is not needed.
	defer os.Remove(f.Name())
	defer f.Close()
	m.data, err = unix.Mmap(int(f.Fd()), 0, int(size), unix.PROT_READ|unix.PROT_WRITE, unix.MAP_SHARED)
	if err != nil {
		return nil, fmt.Errorf("metal-emulated: mapping %d bytes: %w", size, err)
	}
	if _, err := e.call(fmt.Sprintf("map %d %d %s", m.id, size, f.Name())); err != nil {
		_ = unix.Munmap(m.data)
		return nil, fmt.Errorf("metal-emulated: %w", err)
	}
	e.mems[m] = true
	return m, nil
}

func (e *emulator) Wrap(data []byte) (Memory, error) {
	m, err := e.Alloc(int64(len(data)))
	if err != nil {
		return nil, err
	}
	copy(m.Bytes(), data)
	return m, nil
}

func (e *emulator) Free(mem Memory) {
	m, ok := mem.(*emuMem)
	if !ok || m.e != e {
		return
	}
	e.mu.Lock()
	defer e.mu.Unlock()
	if !e.mems[m] {
		return
	}
	delete(e.mems, m)
	if e.broken == nil {
		_, _ = e.call(fmt.Sprintf("unmap %d", m.id))
	}
	_ = unix.Munmap(m.data)
	m.data = nil
}

// command returns the runner command of d.
func (e *emulator) command(d *Dispatch) (string, error) {
	var b strings.Builder
	fmt.Fprintf(&b, "run %s %d %d %d %d %d %d", d.Kernel, d.Groups[0], d.Groups[1], d.Groups[2], d.Threads[0], d.Threads[1], d.Threads[2])
	cs := d.Consts.Values()
	fmt.Fprintf(&b, " %d", len(cs))
	for _, c := range cs {
		fmt.Fprintf(&b, " %d %d", c.Index, c.Value)
	}
	fmt.Fprintf(&b, " %d", len(d.Args))
	for i, a := range d.Args {
		if a.Mem == nil {
			if len(a.Bytes) == 0 {
				return "", fmt.Errorf("argument %d is empty", i)
			}
			b.WriteString(" i " + hex.EncodeToString(a.Bytes))
			continue
		}
		m, ok := a.Mem.(*emuMem)
		if !ok || m.e != e || !e.mems[m] {
			return "", fmt.Errorf("argument %d is not live memory of this emulator", i)
		}
		if a.Offset < 0 || a.Len < 0 || a.Offset+a.Len > m.n {
			return "", fmt.Errorf("argument %d: range [%d, +%d) outside its %d-byte buffer", i, a.Offset, a.Len, m.n)
		}
		fmt.Fprintf(&b, " b %d %d %d", m.id, a.Offset, a.Len)
	}
	return b.String(), nil
}

func (e *emulator) Run(d *Dispatch) error {
	e.mu.Lock()
	defer e.mu.Unlock()
	cmd, err := e.command(d)
	if err != nil {
		return fmt.Errorf("metal-emulated: %s: %w", d, err)
	}
	if _, err := e.call(cmd); err != nil {
		if e.broken != nil {
			return fmt.Errorf("metal-emulated: %s: %w", d, err)
		}
		return fmt.Errorf("metal-emulated: %s: %v", d, err)
	}
	return nil
}

// kernels returns the runner's kernels and their buffer counts.
func (e *emulator) kernels() (map[string]int, error) {
	e.mu.Lock()
	defer e.mu.Unlock()
	s, err := e.call("list")
	if err != nil {
		return nil, err
	}
	out := map[string]int{}
	for _, f := range strings.Fields(s) {
		name, n, ok := strings.Cut(f, ":")
		if !ok {
			continue
		}
		out[name], _ = strconv.Atoi(n)
	}
	return out, nil
}

// setReverse makes the runner run threads and threadgroups last to first.
func (e *emulator) setReverse(rev bool) error {
	e.mu.Lock()
	defer e.mu.Unlock()
	o := "forward"
	if rev {
		o = "reverse"
	}
	_, err := e.call("order " + o)
	return err
}

func (e *emulator) Sync() error {
	e.mu.Lock()
	defer e.mu.Unlock()
	return e.broken
}

func (e *emulator) Close() error {
	e.mu.Lock()
	defer e.mu.Unlock()
	if e.broken == nil {
		_, _ = e.call("quit")
		_ = e.stdin.Close()
		_ = e.cmd.Wait()
		e.broken = fmt.Errorf("metal-emulated: closed")
	}
	for m := range e.mems {
		_ = unix.Munmap(m.data)
		m.data = nil
	}
	e.mems = map[*emuMem]bool{}
	return nil
}
