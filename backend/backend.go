// Package backend picks a kernels backend by name: "cpu" (pure Go, every
// platform), "cpu-f64" (the CPU backend summing every quantized matmul in
// float64: slower on AVX2 and AVX-512, agrees with the generic kernels to the
// last bit), "cpu-f32" and "cpu-int24" (the CPU backend's 4-bit matmuls
// summing in f32, or on inputs quantized to 24 bits, whichever is not its
// default on this CPU: about as exact either way), "cpu-int8" (the CPU
// backend with int8 activations in its quantized matmuls: faster, slightly
// less exact), "cuda" (NVIDIA through the driver API, linux), "metal" (Apple
// Silicon), "metal-emulated" (the Metal kernels run on the CPU, for
// debugging), or "auto": the fastest one available here, else the CPU.
package backend

import (
	"fmt"
	"sort"
	"strings"

	"github.com/gemmoe/gemmoe/kernels"
	"github.com/gemmoe/gemmoe/kernels/cpu"
)

// opener makes a backend; it returns an error when the backend cannot run here.
type opener func() (kernels.Backend, error)

var (
	openers = map[string]opener{
		"cpu": func() (kernels.Backend, error) { return cpu.New(), nil },
		// int8 activations: ~2× faster quantized matmuls on x86, ~0.25% higher
		// perplexity on the demo model (kernels/cpu: WithInt8Activations).
		"cpu-int8": func() (kernels.Backend, error) { return cpu.New(cpu.WithInt8Activations(true)), nil },
		// float64 sums in the 4- and 8-bit matmuls (kernels/cpu: WithFloat64Sums).
		"cpu-f64": func() (kernels.Backend, error) { return cpu.New(cpu.WithFloat64Sums(true)), nil },
		// The 4-bit matmuls on f32 sums or on int24 activations (the x86
		// default: AVX-512 f32, AVX2 int24; kernels/cpu: WithInt24Activations).
		"cpu-f32":   func() (kernels.Backend, error) { return cpu.New(cpu.WithInt24Activations(false)), nil },
		"cpu-int24": func() (kernels.Backend, error) { return cpu.New(cpu.WithInt24Activations(true)), nil },
	}
	// autoOrder lists the backends "auto" tries, best first.
	autoOrder []string
)

// register adds a backend; auto says whether "auto" may pick it (before the CPU).
func register(name string, open opener, auto bool) {
	openers[name] = open
	if auto {
		autoOrder = append(autoOrder, name)
	}
}

// Names lists the backend names Open accepts.
func Names() []string {
	names := []string{"auto"}
	for n := range openers {
		names = append(names, n)
	}
	sort.Strings(names[1:])
	return names
}

// Open returns the backend called name. For "auto" it also returns, in
// note, which faster backends were passed over (empty when none were).
func Open(name string) (b kernels.Backend, note string, err error) {
	if name == "" || name == "auto" {
		var skipped []string
		for _, n := range autoOrder {
			b, err := openers[n]()
			if err == nil {
				return b, "", nil
			}
			skipped = append(skipped, n)
		}
		note = ""
		if len(skipped) > 0 {
			note = fmt.Sprintf("using cpu: %s not available here (-backend %s says why)",
				strings.Join(skipped, " and "), skipped[0])
		}
		return cpu.New(), note, nil
	}
	open, ok := openers[name]
	if !ok {
		return nil, "", fmt.Errorf("unknown backend %q (have %s)", name, strings.Join(Names(), ", "))
	}
	b, err = open()
	if err != nil {
		return nil, "", fmt.Errorf("backend %s: %w", name, err)
	}
	return b, "", nil
}
