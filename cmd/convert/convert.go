package main

import (
	"bytes"
	"context"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math"
	"os"
	"path/filepath"
	"runtime"
	"sort"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/gemmoe/gemmoe/dtype"
	"github.com/gemmoe/gemmoe/loader"
	"github.com/gemmoe/gemmoe/quant"
)

// options is a parsed command line.
type options struct {
	model, out  string
	bits, group int
	recipe      string
	overrides   []*override
	dtype       dtype.DType // dense tensors, scales and biases
	shardSize   int64
	rounding    quant.Rounding
	force       bool
	workers     int
	log         io.Writer // progress and summary; nil: silent
}

// result summarizes a conversion.
type result struct {
	files              []string
	tensors            int
	quantized, dense   int      // output weights quantized / written dense
	keptDense, dropped []string // with reasons
	params             int64    // elements of the written weights
	inBytes, outBytes  int64
	elapsed            time.Duration
}

// bitsPerWeight is the output size in bits per parameter (scales, biases and
// dense tensors included), as mlx_lm.convert reports it.
func (r *result) bitsPerWeight() float64 { return float64(r.outBytes) * 8 / float64(max(r.params, 1)) }

// extraFiles are copied from the input directory when present.
var extraFiles = []string{
	"tokenizer.json", "tokenizer_config.json", "tokenizer.model", "special_tokens_map.json",
	"added_tokens.json", "generation_config.json", "chat_template.json", "chat_template.jinja",
	"processor_config.json", "preprocessor_config.json",
}

// convert reads the bf16 Hugging Face checkpoint in o.model and writes the
// MLX affine-quantized checkpoint to o.out.
func convert(ctx context.Context, o *options) (*result, error) {
	start := time.Now()
	if err := (quant.Params{Bits: o.bits, Group: o.group}).Check(); err != nil {
		return nil, fmt.Errorf("-bits %d -group-size %d: %w", o.bits, o.group, err)
	}
	if o.shardSize <= 0 {
		return nil, fmt.Errorf("-shard-size must be positive")
	}
	if o.workers <= 0 {
		o.workers = runtime.GOMAXPROCS(0)
	}
	cfg, err := readInputConfig(o.model)
	if err != nil {
		return nil, err
	}
	m, err := loader.Open(o.model)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", o.model, err)
	}
	defer m.Close()
	for name, t := range m.Tensors {
		if t.DType == dtype.U32 || strings.HasSuffix(name, ".scales") {
			return nil, fmt.Errorf("%s is already quantized (tensor %q): convert needs the bf16 Hugging Face checkpoint", o.model, name)
		}
	}
	p, err := makePlan(m, o)
	if err != nil {
		return nil, err
	}
	if err := prepareOut(o); err != nil {
		return nil, err
	}
	var outs []*outTensor
	res := &result{keptDense: p.dense, dropped: p.dropped, inBytes: m.MappedBytes()}
	quantCfg := map[string]any{"bits": o.bits, "group_size": o.group, "mode": "affine"}
	for _, it := range p.items {
		outs = append(outs, it.outputs(o.dtype)...)
		res.params += int64(it.src.rows) * int64(it.src.cols)
		if it.q == nil {
			res.dense++
			continue
		}
		res.quantized++
		if it.q.Bits != o.bits || it.q.Group != o.group {
			quantCfg[it.module] = map[string]any{"bits": it.q.Bits, "group_size": it.q.Group}
		}
	}
	res.tensors = len(outs)
	shards, err := layoutShards(outs, o.shardSize)
	if err != nil {
		return nil, err
	}
	err = createShards(o.out, shards)
	if err == nil {
		err = writeItems(ctx, o, p.items, outs, shards)
	}
	if cerr := closeShards(shards, err == nil); err == nil {
		err = cerr
	}
	if err != nil {
		// Leave no half-written checkpoint behind.
		for _, s := range shards {
			os.Remove(filepath.Join(o.out, s.name))
		}
		return nil, err
	}
	for _, s := range shards {
		res.files = append(res.files, s.name)
		res.outBytes += s.size
	}
	if len(shards) > 1 {
		if err := writeIndex(o.out, shards); err != nil {
			return nil, err
		}
		res.files = append(res.files, "model.safetensors.index.json")
	}
	if err := writeConfig(o, cfg, quantCfg); err != nil {
		return nil, err
	}
	res.files = append(res.files, "config.json")
	for _, name := range extraFiles {
		ok, err := copyFile(filepath.Join(o.model, name), filepath.Join(o.out, name))
		if err != nil {
			return nil, err
		}
		if ok {
			res.files = append(res.files, name)
		}
	}
	res.elapsed = time.Since(start)
	return res, nil
}

// readInputConfig reads config.json as a generic object and rejects what is
// not a dense Gemma 4 checkpoint with a message that says so.
func readInputConfig(dir string) (map[string]any, error) {
	st, err := os.Stat(dir)
	if err != nil {
		return nil, fmt.Errorf("model directory: %w", err)
	}
	if !st.IsDir() {
		return nil, fmt.Errorf("model directory: %s is not a directory", dir)
	}
	data, err := os.ReadFile(filepath.Join(dir, "config.json"))
	if err != nil {
		return nil, fmt.Errorf("model directory %s: %w (a Hugging Face checkpoint has a config.json)", dir, err)
	}
	dec := json.NewDecoder(bytes.NewReader(data))
	dec.UseNumber() // numbers written back as read
	var cfg map[string]any
	if err := dec.Decode(&cfg); err != nil {
		return nil, fmt.Errorf("%s: config.json: %w", dir, err)
	}
	if _, err := loader.ParseConfig(data); err != nil {
		return nil, fmt.Errorf("%s is not a Gemma 4 checkpoint: %w", dir, err)
	}
	for _, k := range []string{"quantization", "quantization_config"} {
		if v, ok := cfg[k]; ok && v != nil {
			return nil, fmt.Errorf("%s is already quantized (config.json has %q): convert needs the bf16 Hugging Face checkpoint", dir, k)
		}
	}
	return cfg, nil
}

// prepareOut makes the output directory. It refuses to write over a
// checkpoint unless -force, and then removes the old weight files first so
// no stale shard is left beside the new ones.
func prepareOut(o *options) error {
	if o.out == "" {
		return fmt.Errorf("-out is required")
	}
	if same(o.model, o.out) {
		return fmt.Errorf("-out %s is the input directory", o.out)
	}
	if err := os.MkdirAll(o.out, 0o755); err != nil {
		return err
	}
	old, _ := filepath.Glob(filepath.Join(o.out, "*.safetensors"))
	for _, n := range []string{"config.json", "model.safetensors.index.json"} {
		if _, err := os.Stat(filepath.Join(o.out, n)); err == nil {
			old = append(old, filepath.Join(o.out, n))
		}
	}
	if len(old) == 0 {
		return nil
	}
	if !o.force {
		return fmt.Errorf("-out %s already holds a checkpoint (%s); use -force to replace it", o.out, filepath.Base(old[0]))
	}
	for _, f := range old {
		if err := os.Remove(f); err != nil {
			return err
		}
	}
	return nil
}

func same(a, b string) bool {
	sa, err1 := os.Stat(a)
	sb, err2 := os.Stat(b)
	return err1 == nil && err2 == nil && os.SameFile(sa, sb)
}

// dtypeNames are the config.json spellings of the output types.
var dtypeNames = map[dtype.DType]string{dtype.BF16: "bfloat16", dtype.F16: "float16", dtype.F32: "float32"}

// writeConfig writes the input config with the "quantization" block (and the
// same under "quantization_config", for Hugging Face tools) and the dtype.
func writeConfig(o *options, cfg, quantCfg map[string]any) error {
	cfg["quantization"] = quantCfg
	cfg["quantization_config"] = quantCfg
	for _, c := range []map[string]any{cfg, sub(cfg, "text_config")} {
		for _, k := range []string{"dtype", "torch_dtype"} {
			if _, ok := c[k]; ok {
				c[k] = dtypeNames[o.dtype]
			}
		}
	}
	return writeJSON(filepath.Join(o.out, "config.json"), cfg)
}

func sub(m map[string]any, key string) map[string]any {
	if v, ok := m[key].(map[string]any); ok {
		return v
	}
	return map[string]any{}
}

// copyFile copies src to dst if src exists.
func copyFile(src, dst string) (bool, error) {
	in, err := os.Open(src)
	if errors.Is(err, os.ErrNotExist) {
		return false, nil
	}
	if err != nil {
		return false, err
	}
	defer in.Close()
	out, err := os.Create(dst)
	if err != nil {
		return false, err
	}
	if _, err := io.Copy(out, in); err != nil {
		out.Close()
		return false, fmt.Errorf("copying %s: %w", filepath.Base(src), err)
	}
	return true, out.Close()
}

// task is a run of rows of one item.
type task struct {
	it     *item
	r0, r1 int
}

// chunkElems bounds the elements one task converts (4 MiB of float32).
const chunkElems = 1 << 20

// writeItems converts every item in row chunks on o.workers goroutines and
// writes each chunk at its place in its shard file. Memory stays at a few
// chunks per worker whatever the tensor sizes.
func writeItems(ctx context.Context, o *options, items []*item, outs []*outTensor, shards []*shard) error {
	where := map[*item][3]*outTensor{}
	for _, t := range outs {
		w := where[t.item]
		w[t.part] = t
		where[t.item] = w
	}
	var total, done atomic.Int64
	for _, it := range items {
		total.Add(int64(it.src.rows) * int64(it.src.cols))
	}
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	var (
		mu    sync.Mutex
		first error
	)
	fail := func(err error) {
		mu.Lock()
		if first == nil {
			first = err
		}
		mu.Unlock()
		cancel()
	}
	tasks := make(chan task, o.workers)
	var wg sync.WaitGroup
	for range o.workers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			var w worker
			for t := range tasks {
				if ctx.Err() != nil {
					continue
				}
				if err := w.run(o, t, where[t.it], shards); err != nil {
					fail(err)
					continue
				}
				src := t.it.src
				es := int64(src.t.DType.Size())
				release(src.file, src.t.Offset+int64(src.start(t.r0))*es, src.t.Offset+int64(src.start(t.r1-1)+src.cols)*es)
				done.Add(int64(t.r1-t.r0) * int64(t.it.src.cols))
			}
		}()
	}
	stopProgress := progress(o.log, &done, &total)
feed:
	for _, it := range items {
		step := max(1, chunkElems/max(it.src.cols, 1))
		for r := 0; r < it.src.rows; r += step {
			select {
			case tasks <- task{it, r, min(r+step, it.src.rows)}:
			case <-ctx.Done():
				break feed
			}
		}
	}
	close(tasks)
	wg.Wait()
	stopProgress()
	if first != nil {
		return first
	}
	return ctx.Err()
}

// progress prints the share of weights converted every few seconds.
func progress(log io.Writer, done, total *atomic.Int64) (stop func()) {
	if log == nil {
		return func() {}
	}
	quit := make(chan struct{})
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		tick := time.NewTicker(5 * time.Second)
		defer tick.Stop()
		for {
			select {
			case <-quit:
				return
			case <-tick.C:
				fmt.Fprintf(log, "convert: %.0f%% of the weights done\n", 100*float64(done.Load())/float64(max(total.Load(), 1)))
			}
		}
	}()
	return func() { close(quit); wg.Wait() }
}

// worker holds one goroutine's buffers, grown as needed.
type worker struct {
	w              []float32
	packed         []uint32
	scales, biases []float32
	out            []byte
}

func grow[T any](s []T, n int) []T {
	if cap(s) < n {
		return make([]T, n)
	}
	return s[:n]
}

// run converts rows [t.r0, t.r1) of t.it and writes them.
func (w *worker) run(o *options, t task, outs [3]*outTensor, shards []*shard) error {
	it, src := t.it, t.it.src
	rows, cols := t.r1-t.r0, src.cols
	data := outs[partData]
	f := shards[data.shard].f
	st := src.t.DType
	if it.q == nil && (st == data.dt || !st.IsFloat()) {
		// Same type out as in: copy the bytes straight from the mapping.
		es := st.Size()
		if src.split == 0 {
			b := src.t.Data[t.r0*cols*es : t.r1*cols*es]
			return writeAt(f, b, data.offset+int64(t.r0*cols*es), data.name)
		}
		w.out = grow(w.out, rows*cols*es)
		for r := t.r0; r < t.r1; r++ {
			s := src.start(r) * es
			copy(w.out[(r-t.r0)*cols*es:], src.t.Data[s:s+cols*es])
		}
		return writeAt(f, w.out, data.offset+int64(t.r0*cols*es), data.name)
	}
	w.w = grow(w.w, rows*cols)
	for r := t.r0; r < t.r1; r++ {
		decodeRow(w.w[(r-t.r0)*cols:(r-t.r0+1)*cols], src.t, src.start(r), o.dtype)
	}
	if it.q == nil {
		es := data.dt.Size()
		w.out = grow(w.out, rows*cols*es)
		encode(w.out, w.w, data.dt)
		return writeAt(f, w.out, data.offset+int64(t.r0*cols*es), data.name)
	}
	words, groups := quant.PackedWords(cols, it.q.Bits), cols/it.q.Group
	w.packed = grow(w.packed, rows*words)
	w.scales = grow(w.scales, rows*groups)
	w.biases = grow(w.biases, rows*groups)
	if err := it.q.QuantizeInto(w.packed, w.scales, w.biases, w.w, rows, cols); err != nil {
		return fmt.Errorf("%s (rows %d..%d): %w", it.name, t.r0, t.r1, err)
	}
	w.out = grow(w.out, rows*words*4)
	for i, v := range w.packed {
		binary.LittleEndian.PutUint32(w.out[4*i:], v)
	}
	if err := writeAt(f, w.out, data.offset+int64(t.r0*words*4), data.name); err != nil {
		return err
	}
	for _, pv := range [2]struct {
		part int
		vals []float32
	}{{partScales, w.scales}, {partBiases, w.biases}} {
		ot, vals := outs[pv.part], pv.vals
		es := ot.dt.Size()
		w.out = grow(w.out, rows*groups*es)
		encode(w.out, vals, ot.dt)
		if err := writeAt(shards[ot.shard].f, w.out, ot.offset+int64(t.r0*groups*es), ot.name); err != nil {
			return err
		}
	}
	return nil
}

func writeAt(f *os.File, b []byte, off int64, name string) error {
	if _, err := f.WriteAt(b, off); err != nil {
		return fmt.Errorf("writing %s: %w", name, err)
	}
	return nil
}

// decodeRow reads len(dst) elements of t from element index start as
// float32, rounded to the output type first (mlx-lm casts the model to
// -dtype before it quantizes).
func decodeRow(dst []float32, t *loader.Tensor, start int, out dtype.DType) {
	switch t.DType {
	case dtype.BF16:
		b := t.Data[2*start:]
		for i := range dst {
			dst[i] = dtype.BF16ToF32(binary.LittleEndian.Uint16(b[2*i:]))
		}
	case dtype.F16:
		b := t.Data[2*start:]
		for i := range dst {
			dst[i] = dtype.F16ToF32(binary.LittleEndian.Uint16(b[2*i:]))
		}
	case dtype.F32:
		b := t.Data[4*start:]
		for i := range dst {
			dst[i] = math.Float32frombits(binary.LittleEndian.Uint32(b[4*i:]))
		}
	}
	if out != t.DType && out != dtype.F32 {
		for i, v := range dst {
			switch out {
			case dtype.BF16:
				dst[i] = dtype.BF16ToF32(dtype.F32ToBF16(v))
			case dtype.F16:
				dst[i] = dtype.F16ToF32(dtype.F32ToF16(v))
			}
		}
	}
}

// encode writes vals as dt (BF16, F16 or F32) little-endian into dst.
func encode(dst []byte, vals []float32, dt dtype.DType) {
	for i, v := range vals {
		switch dt {
		case dtype.BF16:
			binary.LittleEndian.PutUint16(dst[2*i:], dtype.F32ToBF16(v))
		case dtype.F16:
			binary.LittleEndian.PutUint16(dst[2*i:], dtype.F32ToF16(v))
		default:
			binary.LittleEndian.PutUint32(dst[4*i:], math.Float32bits(v))
		}
	}
}

// summary prints what was written.
func (r *result) summary(w io.Writer, o *options) {
	fmt.Fprintf(w, "convert: wrote %d tensors to %s: %d weights quantized (%s, %d-bit g%d default, %s rounding), %d tensors dense\n",
		r.tensors, o.out, r.quantized, o.recipe, o.bits, o.group, o.rounding, r.dense)
	for _, d := range r.keptDense {
		fmt.Fprintf(w, "convert: kept dense: %s\n", d)
	}
	if n := len(r.dropped); n > 0 {
		fmt.Fprintf(w, "convert: left out %d input tensors, e.g. %s\n", n, r.dropped[0])
	}
	files := append([]string(nil), r.files...)
	sort.Strings(files)
	fmt.Fprintf(w, "convert: %.3f GB in, %.3f GB out (%.2f bits per weight) in %.1fs; files: %s\n",
		float64(r.inBytes)/1e9, float64(r.outBytes)/1e9, r.bitsPerWeight(), r.elapsed.Seconds(), strings.Join(files, ", "))
}
