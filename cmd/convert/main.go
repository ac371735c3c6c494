// Command convert turns a Hugging Face bf16 Gemma 4 checkpoint into an MLX
// affine-quantized one, as `mlx_lm.convert -q` does:
//
//	go run ./cmd/convert -model HF_DIR -out OUT_DIR [-bits 4] [-group-size 64] \
//	    [-recipe gemma4|uniform] [-override 'REGEX=BITS:GROUP' ...] [-dtype bf16]
//
// The output has MLX names (language_model.model.layers.N...), the fused
// experts.gate_up_proj [E, 2I, H] split into experts.switch_glu.gate_proj and
// up_proj (gate rows first) and experts.down_proj renamed
// experts.switch_glu.down_proj; each quantized module has a uint32 .weight
// [..., out, in·bits/32] and .scales/.biases [..., out, in/group] in -dtype.
//
// The gemma4 recipe (default) is mlx-lm's: router.proj at 8 bits in groups of
// 64, every other linear layer and the embedding at -bits/-group-size, norms,
// router.scale, router.per_expert_scale and layer_scalar dense. A matrix whose
// input width is not a multiple of its group stays dense (mlx-lm does the
// same; for Gemma 4 26B-A4B that is the 2112- and 704-wide down projections
// at group 128). -override flags, applied in order after the recipe (the last
// match wins), set a module's bits and group or keep it dense; the regex is
// matched against MLX module paths such as
// language_model.model.layers.3.experts.switch_glu.down_proj:
//
//	-override 'experts\.switch_glu\.down_proj$=6:64' -override 'embed_tokens$=8'
//	-override 'layers\.0\.self_attn=dense'
//
// config.json is the input's with "quantization" and "quantization_config"
// blocks (the defaults, "mode": "affine", and an entry for every module not at
// the defaults); the safetensors metadata is {"format": "mlx"}; tokenizer and
// generation files are copied. Vision and audio towers are left out (the
// runtime is text-only). Output over -shard-size is split into
// model-0000K-of-0000N.safetensors with model.safetensors.index.json.
//
// Tensors are converted in row chunks on all cores and written at their
// precomputed offsets, so memory stays at a few megabytes per core however
// large the model. The levels are rounded from the stored (bf16) scale and
// bias by default, which reproduces the project's fixtures bit for bit;
// -rounding mlx gives mx.quantize's CPU output exactly (levels from the
// float32 scale and bias) and -rounding mlx-metal its Metal kernel's.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"os/signal"
	"strconv"
	"strings"

	"github.com/gemmoe/gemmoe/dtype"
	"github.com/gemmoe/gemmoe/quant"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt)
	defer stop()
	if err := run(ctx, os.Args[1:], os.Stderr); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return
		}
		fmt.Fprintln(os.Stderr, "convert:", err)
		os.Exit(1)
	}
}

// run parses args, converts and prints the summary to log.
func run(ctx context.Context, args []string, log io.Writer) error {
	o, err := parseFlags(args, log)
	if err != nil {
		return err
	}
	res, err := convert(ctx, o)
	if err != nil {
		return err
	}
	if o.log != nil {
		res.summary(o.log, o)
	}
	return nil
}

func parseFlags(args []string, log io.Writer) (*options, error) {
	o := &options{log: log}
	fs := flag.NewFlagSet("convert", flag.ContinueOnError)
	fs.SetOutput(log)
	fs.Usage = func() {
		fmt.Fprint(fs.Output(), `usage: convert -model HF_DIR -out OUT_DIR [flags]

Converts a Hugging Face bf16 Gemma 4 checkpoint to an MLX affine-quantized
one (like mlx_lm.convert -q). Module paths for -override are MLX names, e.g.
language_model.model.layers.3.experts.switch_glu.down_proj.

`)
		fs.PrintDefaults()
	}
	fs.StringVar(&o.model, "model", "", "Hugging Face checkpoint directory (config.json, *.safetensors)")
	fs.StringVar(&o.out, "out", "", "output directory")
	fs.IntVar(&o.bits, "bits", 4, "default bits per weight: 2, 3, 4, 5, 6 or 8")
	fs.IntVar(&o.group, "group-size", 64, "default group size: 32, 64 or 128")
	fs.StringVar(&o.recipe, "recipe", recipeGemma4, "gemma4 (router.proj 8-bit g64, like mlx-lm) or uniform (everything at -bits)")
	var overrides []string
	fs.Func("override", "'REGEX=BITS:GROUP', 'REGEX=BITS' or 'REGEX=dense' for matching module paths (repeatable; the last match wins)", func(s string) error {
		overrides = append(overrides, s)
		return nil
	})
	dt := fs.String("dtype", "bf16", "type of the dense tensors, scales and biases: bf16, f16 or f32")
	shardSize := fs.String("shard-size", "5GiB", "largest output file before sharding (e.g. 5GiB, 500MB, 2000000000)")
	rounding := fs.String("rounding", "stored", "level rounding: stored (nearest level under the stored scale and bias), mlx (mx.quantize on the CPU), mlx-metal (mx.quantize on a Mac GPU)")
	fs.BoolVar(&o.force, "force", false, "replace a checkpoint already in -out")
	fs.IntVar(&o.workers, "j", 0, "worker goroutines (0: GOMAXPROCS)")
	quiet := fs.Bool("q", false, "no progress or summary")
	if err := fs.Parse(args); err != nil {
		return nil, err
	}
	if fs.NArg() > 0 {
		return nil, fmt.Errorf("unexpected argument %q (flags only; see -h)", fs.Arg(0))
	}
	if o.model == "" || o.out == "" {
		return nil, fmt.Errorf("-model and -out are required")
	}
	if err := (quant.Params{Bits: o.bits, Group: o.group}).Check(); err != nil {
		return nil, fmt.Errorf("-bits %d -group-size %d: %w", o.bits, o.group, err)
	}
	for _, s := range overrides {
		ov, err := parseOverride(s, o.group)
		if err != nil {
			return nil, err
		}
		o.overrides = append(o.overrides, ov)
	}
	var err error
	if o.dtype, err = parseDType(*dt); err != nil {
		return nil, err
	}
	if o.shardSize, err = parseSize(*shardSize); err != nil {
		return nil, err
	}
	if o.rounding, err = quant.ParseRounding(*rounding); err != nil {
		return nil, fmt.Errorf("-rounding: %w", err)
	}
	if *quiet {
		o.log = nil
	}
	return o, nil
}

func parseDType(s string) (dtype.DType, error) {
	switch strings.ToLower(s) {
	case "bf16", "bfloat16":
		return dtype.BF16, nil
	case "f16", "fp16", "float16":
		return dtype.F16, nil
	case "f32", "fp32", "float32":
		return dtype.F32, nil
	}
	return dtype.Invalid, fmt.Errorf("-dtype %q: want bf16, f16 or f32", s)
}

// parseSize reads a byte count with an optional unit: B, KB, MB, GB, TB
// (powers of 1000) or KiB, MiB, GiB, TiB (powers of 1024).
func parseSize(s string) (int64, error) {
	units := []struct {
		suffix string
		mult   int64
	}{
		{"KiB", 1 << 10}, {"MiB", 1 << 20}, {"GiB", 1 << 30}, {"TiB", 1 << 40},
		{"KB", 1e3}, {"MB", 1e6}, {"GB", 1e9}, {"TB", 1e12}, {"B", 1},
	}
	num, mult := strings.TrimSpace(s), int64(1)
	for _, u := range units {
		if strings.HasSuffix(strings.ToLower(num), strings.ToLower(u.suffix)) {
			num, mult = strings.TrimSpace(num[:len(num)-len(u.suffix)]), u.mult
			break
		}
	}
	v, err := strconv.ParseFloat(num, 64)
	if err != nil || v <= 0 || v*float64(mult) > 1<<62 {
		return 0, fmt.Errorf("-shard-size %q: want a positive size such as 5GiB or 500MB", s)
	}
	return int64(v * float64(mult)), nil
}
