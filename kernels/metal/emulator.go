package metal

import (
	"bytes"
	"crypto/sha256"
	"embed"
	"encoding/hex"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
)

// The emulator's C++ side: the MSL shim header, the fiber scheduler and
// command loop, and the kernels with planted bugs that the tests run.
//
//go:embed emu/emu.h emu/runner.cpp emu/planted.metal
var emuFS embed.FS

// ErrNoCompiler is wrapped by NewEmulated's error when no C++ compiler is
// found (tests skip on it).
var ErrNoCompiler = errors.New("metal-emulated: no C++ compiler (g++) found")

// EmulatorOption configures NewEmulated.
type EmulatorOption func(*emuConfig)

type emuConfig struct {
	compiler string
	cacheDir string
	asan     bool
	source   string // replaces Source() (tests plant bugs with it)
}

// WithCompiler sets the C++ compiler (default: $CXX, else g++).
func WithCompiler(path string) EmulatorOption { return func(c *emuConfig) { c.compiler = path } }

// WithCacheDir sets the directory where built runners are cached (default:
// gemmoe/metal-emu under os.UserCacheDir, else under os.TempDir).
func WithCacheDir(dir string) EmulatorOption { return func(c *emuConfig) { c.cacheDir = dir } }

// WithAddressSanitizer builds the runner with -fsanitize=address: buffer
// arguments are then copied to heap blocks of exactly their bound length, so
// a kernel reading or writing outside a tensor is reported.
func WithAddressSanitizer() EmulatorOption { return func(c *emuConfig) { c.asan = true } }

// withSource replaces the kernel source (tests plant bugs with it).
func withSource(src string) EmulatorOption { return func(c *emuConfig) { c.source = src } }

// emuFlags returns the compiler flags of a runner build.
func emuFlags(asan bool) []string {
	f := []string{"-std=c++17", "-Wno-attributes", "-fno-strict-aliasing", "-pthread"}
	if asan {
		return append(f, "-O1", "-g", "-fsanitize=address", "-fno-omit-frame-pointer")
	}
	return append(f, "-O2")
}

// emuSource returns the C++ translation unit of the kernels: the MSL source
// followed by the planted kernels.
func emuSource(cfg emuConfig) (string, error) {
	planted, err := emuFS.ReadFile("emu/planted.metal")
	if err != nil {
		return "", err
	}
	src := cfg.source
	if src == "" {
		src = Source()
	}
	return src + "#line 1 \"emu/planted.metal\"\n" + string(planted), nil
}

var (
	buildMu    sync.Mutex
	buildCache = map[string]string{}
)

// buildRunner builds (or finds in the cache) the runner for cfg and returns
// its path. The cache key is the hash of every input: sources, generated
// glue, compiler identity and flags.
func buildRunner(cfg emuConfig) (string, error) {
	cxx := cfg.compiler
	if cxx == "" {
		cxx = os.Getenv("CXX")
	}
	if cxx == "" {
		cxx = "g++"
	}
	path, err := exec.LookPath(cxx)
	if err != nil {
		return "", fmt.Errorf("%w: %v", ErrNoCompiler, err)
	}
	ver, err := exec.Command(path, "--version").Output()
	if err != nil {
		return "", fmt.Errorf("%w: %s --version: %v", ErrNoCompiler, path, err)
	}
	src, err := emuSource(cfg)
	if err != nil {
		return "", err
	}
	kernels, err := parseKernels(src)
	if err != nil {
		return "", fmt.Errorf("metal-emulated: reading the kernel signatures: %w", err)
	}
	glue := genGlue(kernels, parseFunctionConstants(src))
	shim, _ := emuFS.ReadFile("emu/emu.h")
	runner, _ := emuFS.ReadFile("emu/runner.cpp")
	flags := emuFlags(cfg.asan)
	files := map[string][]byte{
		"emu.h":         shim,
		"metal_stdlib":  []byte("#include \"emu.h\"\n"),
		"runner.cpp":    runner,
		"kernels.metal": []byte(src),
		"glue.cpp":      []byte(glue),
	}
	h := sha256.New()
	fmt.Fprintf(h, "gemmoe-metal-emu v1\n%s\n%s\n%s\n", path, bytes.TrimSpace(ver), strings.Join(flags, " "))
	for _, n := range []string{"emu.h", "metal_stdlib", "runner.cpp", "kernels.metal", "glue.cpp"} {
		fmt.Fprintf(h, "%s %d\n", n, len(files[n]))
		h.Write(files[n])
	}
	key := hex.EncodeToString(h.Sum(nil))[:20]

	buildMu.Lock()
	defer buildMu.Unlock()
	if p, ok := buildCache[key]; ok {
		return p, nil
	}
	root := cfg.cacheDir
	if root == "" {
		if d, err := os.UserCacheDir(); err == nil {
			root = filepath.Join(d, "gemmoe", "metal-emu")
		} else {
			root = filepath.Join(os.TempDir(), "gemmoe-metal-emu")
		}
	}
	dir := filepath.Join(root, key)
	bin := filepath.Join(dir, "runner")
	if fi, err := os.Stat(bin); err == nil && fi.Mode().IsRegular() {
		buildCache[key] = bin
		return bin, nil
	}
	if err := os.MkdirAll(root, 0o755); err != nil {
		return "", fmt.Errorf("metal-emulated: cache directory: %w", err)
	}
	tmp, err := os.MkdirTemp(root, "build-")
	if err != nil {
		return "", fmt.Errorf("metal-emulated: cache directory: %w", err)
	}
	defer os.RemoveAll(tmp)
	for n, data := range files {
		if err := os.WriteFile(filepath.Join(tmp, n), data, 0o644); err != nil {
			return "", fmt.Errorf("metal-emulated: %w", err)
		}
	}
	args := append(append([]string{}, flags...), "-I", tmp, "-o", filepath.Join(tmp, "runner"),
		filepath.Join(tmp, "glue.cpp"), filepath.Join(tmp, "runner.cpp"))
	cmd := exec.Command(path, args...)
	out, err := cmd.CombinedOutput()
	if err != nil {
		msg := string(out)
		if len(msg) > 6000 {
			msg = msg[:6000] + "\n..."
		}
		return "", fmt.Errorf("metal-emulated: building the runner (%s %s): %v\n%s", path, strings.Join(flags, " "), err, msg)
	}
	if err := os.Rename(tmp, dir); err != nil {
		// Another process may have built the same runner meanwhile.
		if fi, serr := os.Stat(bin); serr != nil || !fi.Mode().IsRegular() {
			return "", fmt.Errorf("metal-emulated: caching the runner: %w", err)
		}
	}
	buildCache[key] = bin
	return bin, nil
}

// NewEmulated returns a Backend whose dispatches run on the CPU: the
// unmodified MSL kernels compiled as C++17 with a shim header (built at first
// use and cached), one fiber per GPU thread so SIMD-group collectives and
// barriers synchronize as on the GPU, divergent ones reported as errors.
// It is slow; it exists to test the kernels and the dispatch code without a
// Mac. It needs a C++ compiler (errors wrap ErrNoCompiler otherwise).
func NewEmulated(opts ...EmulatorOption) (*Backend, error) {
	var cfg emuConfig
	for _, o := range opts {
		o(&cfg)
	}
	bin, err := buildRunner(cfg)
	if err != nil {
		return nil, err
	}
	e, err := startEmulator(bin)
	if err != nil {
		return nil, err
	}
	return newBackend(e), nil
}
