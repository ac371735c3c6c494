//go:build unix

package metal

import (
	"bufio"
	"encoding/hex"
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
// mapped by both processes (in /dev/shm where it exists), so a dispatch
// sends only its description through the runner's stdin.
type emulator struct {
	mu     sync.Mutex
	cmd    *exec.Cmd
	stdin  io.WriteCloser
	out    *bufio.Reader
	stderr *tailBuffer
	dir    string
	nextID int64
	mems   map[*emuMem]bool
	broken error
}

// emuMem is a buffer file mapped into this process and the runner.
type emuMem struct {
	e    *emulator
	id   int64
	path string
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
	base := os.TempDir()
	if fi, err := os.Stat("/dev/shm"); err == nil && fi.IsDir() && unix.Access("/dev/shm", unix.W_OK) == nil {
		base = "/dev/shm"
	}
	dir, err := os.MkdirTemp(base, "gemmoe-metal-emu-")
	if err != nil {
		return nil, fmt.Errorf("metal-emulated: buffer directory: %w", err)
	}
	e := &emulator{dir: dir, mems: map[*emuMem]bool{}, stderr: &tailBuffer{}}
	e.cmd = exec.Command(bin)
	e.cmd.Stderr = e.stderr
	e.cmd.Env = append(os.Environ(), "ASAN_OPTIONS=detect_leaks=0:abort_on_error=0")
	e.stdin, err = e.cmd.StdinPipe()
	if err != nil {
		os.RemoveAll(dir)
		return nil, fmt.Errorf("metal-emulated: %w", err)
	}
	stdout, err := e.cmd.StdoutPipe()
	if err != nil {
		os.RemoveAll(dir)
		return nil, fmt.Errorf("metal-emulated: %w", err)
	}
	e.out = bufio.NewReader(stdout)
	if err := e.cmd.Start(); err != nil {
		os.RemoveAll(dir)
		return nil, fmt.Errorf("metal-emulated: starting the runner: %w", err)
	}
	return e, nil
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
	m := &emuMem{e: e, id: e.nextID, n: n, path: filepath.Join(e.dir, strconv.FormatInt(e.nextID, 10))}
	size := max(n, 1)
	f, err := os.OpenFile(m.path, os.O_RDWR|os.O_CREATE|os.O_EXCL, 0o600)
	if err != nil {
		return nil, fmt.Errorf("metal-emulated: %w", err)
	}
	defer f.Close()
	if err := f.Truncate(size); err != nil {
		os.Remove(m.path)
		return nil, fmt.Errorf("metal-emulated: %w", err)
	}
	m.data, err = unix.Mmap(int(f.Fd()), 0, int(size), unix.PROT_READ|unix.PROT_WRITE, unix.MAP_SHARED)
	if err != nil {
		os.Remove(m.path)
		return nil, fmt.Errorf("metal-emulated: mapping %d bytes: %w", size, err)
	}
	if _, err := e.call(fmt.Sprintf("map %d %d %s", m.id, size, m.path)); err != nil {
		_ = unix.Munmap(m.data)
		os.Remove(m.path)
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
	os.Remove(m.path)
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
	return os.RemoveAll(e.dir)
}
