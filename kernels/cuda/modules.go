package cuda

import (
	"crypto/sha256"
	"embed"
	"encoding/hex"
	"fmt"
	"os"
	"path/filepath"
	"strings"

	"github.com/gemmoe/gemmoe/cuda"
)

//go:embed src/*.cu src/*.cuh
var sources embed.FS

// moduleSpec names a compiled unit: a source file and its defines.
type moduleSpec struct {
	file    string
	defines []string
}

var moduleSpecs = map[string]moduleSpec{
	"elementwise":    {"elementwise.cu", nil},
	"matmul":         {"matmul.cu", nil},
	"attention_f32":  {"attention.cu", []string{"CACHE_T=float"}},
	"attention_bf16": {"attention.cu", []string{"CACHE_T=bf16_t"}},
	"attention_f16":  {"attention.cu", []string{"CACHE_T=f16_t"}},
	"attention_tc":   {"attention_tc.cu", nil},
	"select":         {"select.cu", nil},
}

// module returns the loaded module, compiling it with NVRTC (or reading the
// cubin from the disk cache) on first use. The context must be bound.
func (b *Backend) module(name string) (*cuda.Module, error) {
	if m, ok := b.mods[name]; ok {
		return m, nil
	}
	spec, ok := moduleSpecs[name]
	if !ok {
		return nil, fmt.Errorf("cuda: no kernel module %q", name)
	}
	common, err := sources.ReadFile("src/common.cuh")
	if err != nil {
		return nil, err
	}
	body, err := sources.ReadFile("src/" + spec.file)
	if err != nil {
		return nil, err
	}
	src := string(common) + "\n#line 1 \"" + spec.file + "\"\n" + string(body)
	opts := []string{"--gpu-architecture=" + b.props.Arch(), "--std=c++17"}
	for _, d := range spec.defines {
		opts = append(opts, "-D"+d)
	}
	opts = append(opts, fmt.Sprintf("-DPDL_MODE=%d", b.pdlMode))
	nvMajor, nvMinor, _ := cuda.NVRTCVersion()
	h := sha256.New()
	fmt.Fprintf(h, "%s\x00%s\x00driver %d\x00nvrtc %d.%d\x00", src, strings.Join(opts, " "), b.props.DriverVersion, nvMajor, nvMinor)
	key := hex.EncodeToString(h.Sum(nil))[:24]
	var path string
	if b.cacheDir != "" {
		path = filepath.Join(b.cacheDir, name+"-"+b.props.Arch()+"-"+key+".cubin")
	}
	var image []byte
	if path != "" {
		if img, err := os.ReadFile(path); err == nil && len(img) > 0 {
			image = img
			b.cacheHits++
		}
	}
	if image == nil {
		img, log, err := cuda.Compile(src, spec.file, opts)
		if err != nil {
			return nil, fmt.Errorf("cuda: building kernels %s for %s: %w", name, b.props.Arch(), err)
		}
		_ = log
		image = img
		b.compiles++
		if path != "" {
			writeCache(path, image) // best effort: a read-only cache only costs start time
		}
	}
	m, err := cuda.LoadModule(image)
	if err != nil && path != "" {
		os.Remove(path) // a stale or corrupt cache entry: rebuild once
		img, _, cerr := cuda.Compile(src, spec.file, opts)
		if cerr != nil {
			return nil, fmt.Errorf("cuda: building kernels %s: %w", name, cerr)
		}
		b.compiles++
		writeCache(path, img)
		m, err = cuda.LoadModule(img)
	}
	if err != nil {
		return nil, fmt.Errorf("cuda: loading kernels %s: %w", name, err)
	}
	b.mods[name] = m
	return m, nil
}

func writeCache(path string, image []byte) {
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		return
	}
	tmp, err := os.CreateTemp(filepath.Dir(path), ".cubin-*")
	if err != nil {
		return
	}
	_, werr := tmp.Write(image)
	cerr := tmp.Close()
	if werr != nil || cerr != nil {
		os.Remove(tmp.Name())
		return
	}
	if err := os.Rename(tmp.Name(), path); err != nil {
		os.Remove(tmp.Name())
	}
}

type fnKey struct{ mod, name string }

// fn returns kernel name of module mod.
func (b *Backend) fn(mod, name string) (*cuda.Function, error) {
	key := fnKey{mod, name}
	if f, ok := b.fns[key]; ok {
		return f, nil
	}
	m, err := b.module(mod)
	if err != nil {
		return nil, err
	}
	f, err := m.Function(name)
	if err != nil {
		return nil, err
	}
	b.fns[key] = f
	return f, nil
}

// DefaultCacheDir returns os.UserCacheDir()/gemmoe/cuda, or "" if there is
// no user cache directory.
func DefaultCacheDir() string {
	d, err := os.UserCacheDir()
	if err != nil {
		return ""
	}
	return filepath.Join(d, "gemmoe", "cuda")
}
