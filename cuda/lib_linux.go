//go:build linux

package cuda

import (
	"bufio"
	"fmt"
	"os"
	"path/filepath"
	"runtime"
	"sort"
	"strings"

	"github.com/ebitengine/purego"
)

// searchDirs lists the directories tried after the dynamic loader's own path,
// in order: CUDA_HOME and CUDA_PATH, the usual toolkit and driver locations,
// and the lib folders of pip's nvidia-* wheels.
func searchDirs() []string {
	var dirs []string
	for _, env := range []string{"CUDA_HOME", "CUDA_PATH"} {
		if v := os.Getenv(env); v != "" {
			dirs = append(dirs, filepath.Join(v, "lib64"), filepath.Join(v, "lib"))
		}
	}
	dirs = append(dirs, "/usr/local/cuda/lib64", "/usr/local/cuda/lib")
	if m, _ := filepath.Glob("/usr/local/cuda-*/lib64"); len(m) > 0 {
		sort.Sort(sort.Reverse(sort.StringSlice(m))) // newest toolkit first
		dirs = append(dirs, m...)
	}
	arch := "x86_64"
	if runtime.GOARCH == "arm64" {
		arch = "aarch64"
	}
	dirs = append(dirs,
		"/usr/lib/"+arch+"-linux-gnu", "/usr/local/nvidia/lib64", "/usr/local/nvidia/lib",
		"/usr/lib64", "/usr/lib", "/lib/"+arch+"-linux-gnu")
	for _, pat := range []string{
		"/usr/local/lib/python3*/dist-packages/nvidia/cu13/lib",
		"/usr/local/lib/python3*/site-packages/nvidia/cu13/lib",
		"/usr/lib/python3*/dist-packages/nvidia/cu13/lib",
		"/usr/local/lib/python3*/dist-packages/nvidia/cuda_nvrtc/lib",
		"/usr/local/lib/python3*/site-packages/nvidia/cuda_nvrtc/lib",
	} {
		if m, _ := filepath.Glob(pat); len(m) > 0 {
			dirs = append(dirs, m...)
		}
	}
	return dirs
}

// dlopenFirst tries each name through the loader's path, then in each search
// directory (exact names, then globs such as libnvrtc.so.*), and returns the
// handle with the path it came from.
func dlopenFirst(what string, names, globs []string) (uintptr, string, error) {
	const mode = purego.RTLD_NOW | purego.RTLD_GLOBAL
	var tried []string
	for _, n := range names {
		if h, err := purego.Dlopen(n, mode); err == nil {
			return h, resolvedPath(n), nil
		} else {
			tried = append(tried, fmt.Sprintf("%s (%v)", n, err))
		}
	}
	for _, d := range searchDirs() {
		cands := make([]string, 0, len(names)+4)
		for _, n := range names {
			cands = append(cands, filepath.Join(d, n))
		}
		for _, g := range globs {
			m, _ := filepath.Glob(filepath.Join(d, g))
			sort.Sort(sort.Reverse(sort.StringSlice(m)))
			cands = append(cands, m...)
		}
		for _, p := range cands {
			if _, err := os.Stat(p); err != nil {
				continue
			}
			if h, err := purego.Dlopen(p, mode); err == nil {
				return h, p, nil
			} else {
				tried = append(tried, fmt.Sprintf("%s (%v)", p, err))
			}
		}
	}
	return 0, "", fmt.Errorf("cuda: cannot load %s: tried %s", what, strings.Join(tried, "; "))
}

// resolvedPath finds the file a library loaded by soname came from, through
// /proc/self/maps; it returns "loader path: NAME" when it cannot tell.
func resolvedPath(soname string) string {
	f, err := os.Open("/proc/self/maps")
	if err != nil {
		return "loader path: " + soname
	}
	defer f.Close()
	base := soname
	if i := strings.Index(base, ".so"); i > 0 {
		base = base[:i] + ".so"
	}
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		line := sc.Text()
		i := strings.IndexByte(line, '/')
		if i < 0 {
			continue
		}
		p := line[i:]
		if strings.HasPrefix(filepath.Base(p), base) {
			return p
		}
	}
	return "loader path: " + soname
}

func dlsym(h uintptr, name string) uintptr {
	p, err := purego.Dlsym(h, name)
	if err != nil {
		return 0
	}
	return p
}

func openLibraries() (*driver, error) {
	h, path, err := dlopenFirst("the CUDA driver (libcuda.so.1; is the NVIDIA driver installed?)",
		[]string{"libcuda.so.1", "libcuda.so"}, nil)
	if err != nil {
		return nil, err
	}
	d := &driver{libs: Libraries{Driver: path}}
	if err := d.bindDriver(func(name string) uintptr { return dlsym(h, name) }); err != nil {
		return nil, err
	}
	nh, npath, nerr := dlopenFirst("NVRTC (libnvrtc.so; install the CUDA toolkit or set CUDA_HOME)",
		[]string{"libnvrtc.so.13", "libnvrtc.so.12", "libnvrtc.so"}, []string{"libnvrtc.so.*"})
	if nerr != nil {
		d.nvrtcErr = nerr
	} else {
		d.libs.NVRTC = npath
		// NVRTC dlopens its builtins library by soname; a toolkit outside the
		// loader's path (CUDA_HOME, a pip wheel) needs it loaded first.
		if m, _ := filepath.Glob(filepath.Join(filepath.Dir(npath), "libnvrtc-builtins.so*")); len(m) > 0 {
			sort.Sort(sort.Reverse(sort.StringSlice(m)))
			for _, p := range m {
				if _, err := purego.Dlopen(p, purego.RTLD_NOW|purego.RTLD_GLOBAL); err == nil {
					break
				}
			}
		}
		if err := d.bindNVRTC(func(name string) uintptr { return dlsym(nh, name) }); err != nil {
			d.nvrtcErr = err
		}
	}
	return d, nil
}
