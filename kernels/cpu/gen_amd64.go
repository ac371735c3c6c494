//go:build ignore

// gen_amd64.go writes simd_amd64.s, the amd64 matmul and attention kernels
// (AVX2+FMA and AVX-512), from one description so that the one-input-row
// (decode) and four-input-row (prefill) kernels do exactly the same
// arithmetic for each input row. Run `go generate` in kernels/cpu.
//
// Register use of the matmul kernels (V = Y for AVX2, Z for AVX-512):
//
//	V0, V1    unpacked weights (two half-blocks), temporaries
//	V2..V5    per input row t: the row total (quantized kernels)
//	V6..V9    per input row t: accumulator of the first half-block
//	V10..V13  per input row t: accumulator of the second half-block
//	V14       the broadcast group scale
//	V15       the nibble mask 0x0F (4-bit)
//
//	DI kargs, SI weight row, CX rows left, R9 f32 scales cursor, R8 the byte
//	offset from scales to biases, AX weight cursor, BX x row 0 cursor,
//	R13, R14, DX byte offsets of x rows 1..3 from row 0, R10 group counter,
//	R12 block counter, R11 temporary.
package main

import (
	"bytes"
	"fmt"
	"log"
	"math"
	"os"
)

type isa struct {
	name   string // function name suffix
	v      string // vector register prefix
	lanes  int    // f32 lanes
	avx512 bool
}

var (
	avx2   = isa{"AVX2", "Y", 8, false}
	avx512 = isa{"AVX512", "Z", 16, true}
)

type gen struct {
	buf   bytes.Buffer
	isa   isa
	label int
}

func (g *gen) p(format string, args ...any) {
	fmt.Fprintf(&g.buf, "\t"+format+"\n", args...)
}

func (g *gen) l(name string) { fmt.Fprintf(&g.buf, "%s:\n", name) }

func (g *gen) newLabel(base string) string {
	g.label++
	return fmt.Sprintf("%s_%d", base, g.label)
}

func (g *gen) V(i int) string { return fmt.Sprintf("%s%d", g.isa.v, i) }
func X(i int) string          { return fmt.Sprintf("X%d", i) }

// half is the half-width register of V(i): Y(i) for AVX-512, X(i) for AVX2.
func (g *gen) half(i int) string {
	if g.isa.avx512 {
		return fmt.Sprintf("Y%d", i)
	}
	return fmt.Sprintf("X%d", i)
}

// kargs field offsets (see kargs in simd.go; TestKargsLayout checks them).
const (
	offW      = 0
	offStride = 8
	offRows   = 16
	offSB     = 24
	offBoff   = 32
	offGroups = 40
	offBPG    = 48
	offK      = 56
	offX      = 64
	offY      = 96
)

var dreg = []string{"", "R13", "R14", "DX"} // x row offsets

// xaddr is the address of x row t at byte offset off from the cursor BX.
func xaddr(t, off int) string {
	if t == 0 {
		return fmt.Sprintf("%d(BX)", off)
	}
	return fmt.Sprintf("%d(BX)(%s*1)", off, dreg[t])
}

func (g *gen) zero(r string) {
	if g.isa.avx512 {
		g.p("VPXORD %s, %s, %s", r, r, r)
	} else {
		g.p("VXORPS %s, %s, %s", r, r, r)
	}
}

// hsum leaves the sum of the lanes of vector register i in lane 0 of X(i),
// using register tmp; the order of the additions is fixed.
func (g *gen) hsum(i, tmp int) {
	if g.isa.avx512 {
		g.p("VEXTRACTF64X4 $1, Z%d, Y%d", i, tmp)
		g.p("VADDPS Y%d, Y%d, Y%d", tmp, i, i)
	}
	g.p("VEXTRACTF128 $1, Y%d, X%d", i, tmp)
	g.p("VADDPS X%d, X%d, X%d", tmp, i, i)
	g.p("VPERMILPS $0x4E, X%d, X%d", i, tmp)
	g.p("VADDPS X%d, X%d, X%d", tmp, i, i)
	g.p("VPERMILPS $0xB1, X%d, X%d", i, tmp)
	g.p("VADDSS X%d, X%d, X%d", tmp, i, i)
}

func (g *gen) header(name string) {
	fmt.Fprintf(&g.buf, "\n// func %s(a *kargs)\nTEXT ·%s(SB), NOSPLIT, $0-8\n", name, name)
	g.p("MOVQ a+0(FP), DI")
}

// quantHeader starts a quantized matmul kernel: the weight row (SI), rows
// left (CX), the scales cursor (R9) and the byte offset to the biases (R8).
func (g *gen) quantHeader(name string) {
	g.header(name)
	g.p("MOVQ %d(DI), SI", offW)
	g.p("MOVQ %d(DI), CX", offRows)
	g.p("MOVQ %d(DI), R9", offSB)
	g.p("MOVQ %d(DI), R8", offBoff)
}

func (g *gen) xOffsets(nx int) {
	g.p("MOVQ %d(DI), BX", offX)
	for t := 1; t < nx; t++ {
		g.p("MOVQ %d(DI), %s", offX+8*t, dreg[t])
		g.p("SUBQ BX, %s", dreg[t])
	}
}

// store writes lane 0 of X(reg) to a.y[t][row], the row index being
// a.rows - CX. (The kernels never write derived pointers to memory: the
// garbage collector may scan kargs while they run.) It uses R10 and R11.
func (g *gen) store(t, reg int) {
	g.p("MOVQ %d(DI), R10", offRows)
	g.p("SUBQ CX, R10")
	g.p("MOVQ %d(DI), R11", offY+8*t)
	g.p("VMOVSS X%d, (R11)(R10*4)", reg)
}

// quant writes a quantized kernel (bits 4 or 8) for nx input rows, exact
// in float64: per group, two float64 accumulators take q·x over the group's
// blocks of 2D values (D doubles per vector; q·x is exact in float64), their
// sum times the group's scale joins the row total, and after the groups the
// bias term Σ_g bias·Σx; the total is rounded to f32 once. Scales and biases
// are float64 ([rows][groups] each); the input row holds k doubles (4-bit:
// each block's even-indexed values, then its odd ones) followed by groups
// doubles (the group sums).
func (g *gen) quant(bits, nx int, sdt string) {
	D := g.isa.lanes / 2
	name := fmt.Sprintf("q%d%sx%d%s", bits, sfx(sdt), nx, g.isa.name)
	g.quantHeader(name)
	half := g.half
	// nibTable: 4-bit AVX-512 kernels look the nibbles up as float64 in
	// Z16 (0..7) and Z17 (8..15) with VPERMI2PD instead of masking and
	// converting them (12% faster from cache; the values are the same).
	nibTable := bits == 4 && g.isa.avx512
	if bits == 4 {
		g.p("MOVL $15, R11")
		g.p("VMOVD R11, X15")
		g.p("VPBROADCASTD X15, %s", half(15))
	}
	if nibTable {
		g.p("VMOVUPD ·nibF64+0(SB), Z16")
		g.p("VMOVUPD ·nibF64+64(SB), Z17")
	}
	g.xOffsets(nx)
	wb := D // weight bytes per block of 2D values
	if bits == 8 {
		wb = 2 * D
	}
	xb := 16 * D // x bytes per block
	// unpackAt widens the block at off(AX) into V(r) and V(r+1).
	unpackAt := func(off, r int) {
		if nibTable { // qword j holds byte j: low nibble value 2j, high 2j+1
			g.p("VPMOVZXBQ %d(AX), %s", off, g.V(r))
			g.p("VPSRLQ $4, %s, %s", g.V(r), g.V(r+1))
			g.p("VPERMI2PD Z17, Z16, %s", g.V(r))
			g.p("VPERMI2PD Z17, Z16, %s", g.V(r+1))
			return
		}
		g.p("VPMOVZXBD %d(AX), %s", off, half(r))
		if bits == 4 {
			g.p("VPSRLD $4, %s, %s", half(r), half(r+1))
			g.p("VPAND %s, %s, %s", half(15), half(r), half(r))
		} else {
			g.p("VPMOVZXBD %d(AX), %s", off+D, half(r+1))
		}
		g.p("VCVTDQ2PD %s, %s", half(r), g.V(r))
		g.p("VCVTDQ2PD %s, %s", half(r+1), g.V(r+1))
	}
	unpack := func() { unpackAt(0, 0) }
	if nx == 1 {
		g.quant1(bits, sdt, wb, xb, unpackAt)
		return
	}
	row, grp, blk, grpEnd := g.newLabel("row"), g.newLabel("grp"), g.newLabel("blk"), g.newLabel("grpend")
	g.l(row)
	g.p("MOVQ SI, AX")
	g.p("MOVQ %d(DI), BX", offX)
	for t := range nx {
		g.zero(g.V(2 + t))
	}
	g.p("MOVQ %d(DI), R10", offGroups)
	g.l(grp)
	g.p("MOVQ %d(DI), R12", offBPG)
	if prefetch > 0 {
		g.p("PREFETCHT0 %d(AX)", prefetch)
	}
	unpack()
	for t := range nx {
		g.p("VMULPD %s, %s, %s", xaddr(t, 0), g.V(0), g.V(6+t))
		g.p("VMULPD %s, %s, %s", xaddr(t, 8*D), g.V(1), g.V(10+t))
	}
	g.p("ADDQ $%d, AX", wb)
	g.p("ADDQ $%d, BX", xb)
	g.p("DECQ R12")
	g.p("JZ %s", grpEnd)
	g.l(blk)
	unpack()
	for t := range nx {
		g.p("VFMADD231PD %s, %s, %s", xaddr(t, 0), g.V(0), g.V(6+t))
		g.p("VFMADD231PD %s, %s, %s", xaddr(t, 8*D), g.V(1), g.V(10+t))
	}
	g.p("ADDQ $%d, AX", wb)
	g.p("ADDQ $%d, BX", xb)
	g.p("DECQ R12")
	g.p("JNZ %s", blk)
	g.l(grpEnd)
	g.scaleF64(sdt)
	for t := range nx {
		g.p("VADDPD %s, %s, %s", g.V(10+t), g.V(6+t), g.V(6+t))
		g.p("VFMADD231PD %s, %s, %s", g.V(14), g.V(6+t), g.V(2+t))
	}
	g.p("ADDQ $%d, R9", esize(sdt))
	g.p("DECQ R10")
	g.p("JNZ %s", grp)
	// Bias terms: this row's biases start at R9 - es·groups + boff; BX
	// points at x row 0's group sums.
	for t := range nx {
		g.biasF64(t, sdt)
		g.hsumPD(2+t, 1)
		g.p("VADDSD X0, X%d, X%d", 2+t, 2+t)
		g.p("VCVTSD2SS X%d, X%d, X%d", 2+t, 2+t, 2+t)
		g.store(t, 2+t)
	}
	g.p("ADDQ %d(DI), SI", offStride)
	g.p("DECQ CX")
	g.p("JNZ %s", row)
	g.p("VZEROUPPER")
	g.p("RET")
}

// quant1 is the body of quant for one input row (decode), after the
// prologue: two blocks per step into four accumulators (V6, V10 for the
// first block, V7, V11 for the second; the unpacked values in V0, V1 and
// V3, V4), so four independent FMA chains hide the FMA latency that bounds
// two. A group has an even number of blocks (group >= 32, 2D <= 16 values
// a block). The products are exact and the group partial sums exact in
// practice, so the result rounded to f32 does not depend on the order.
func (g *gen) quant1(bits int, sdt string, wb, xb int, unpackAt func(off, r int)) {
	row, grp, blk, grpEnd := g.newLabel("row"), g.newLabel("grp"), g.newLabel("blk"), g.newLabel("grpend")
	D := g.isa.lanes / 2
	g.l(row)
	g.p("MOVQ SI, AX")
	g.p("MOVQ %d(DI), BX", offX)
	g.zero(g.V(2))
	g.p("MOVQ %d(DI), R10", offGroups)
	g.l(grp)
	g.p("MOVQ %d(DI), R12", offBPG)
	if prefetch > 0 {
		g.p("PREFETCHT0 %d(AX)", prefetch)
	}
	// step does two blocks with op: VMULPD starts a group's sums, then
	// VFMADD231PD adds to them.
	step := func(op string) {
		unpackAt(0, 0)
		unpackAt(wb, 3)
		g.p("%s (BX), %s, %s", op, g.V(0), g.V(6))
		g.p("%s %d(BX), %s, %s", op, 8*D, g.V(1), g.V(10))
		g.p("%s %d(BX), %s, %s", op, xb, g.V(3), g.V(7))
		g.p("%s %d(BX), %s, %s", op, xb+8*D, g.V(4), g.V(11))
		g.p("ADDQ $%d, AX", 2*wb)
		g.p("ADDQ $%d, BX", 2*xb)
		g.p("SUBQ $2, R12")
	}
	step("VMULPD")
	g.p("JZ %s", grpEnd)
	g.l(blk)
	step("VFMADD231PD")
	g.p("JNZ %s", blk)
	g.l(grpEnd)
	g.scaleF64(sdt)
	g.p("VADDPD %s, %s, %s", g.V(10), g.V(6), g.V(6))
	g.p("VADDPD %s, %s, %s", g.V(11), g.V(7), g.V(7))
	g.p("VADDPD %s, %s, %s", g.V(7), g.V(6), g.V(6))
	g.p("VFMADD231PD %s, %s, %s", g.V(14), g.V(6), g.V(2))
	g.p("ADDQ $%d, R9", esize(sdt))
	g.p("DECQ R10")
	g.p("JNZ %s", grp)
	g.biasF64(0, sdt)
	g.hsumPD(2, 1)
	g.p("VADDSD X0, X2, X2")
	g.p("VCVTSD2SS X2, X2, X2")
	g.store(0, 2)
	g.p("ADDQ %d(DI), SI", offStride)
	g.p("DECQ CX")
	g.p("JNZ %s", row)
	g.p("VZEROUPPER")
	g.p("RET")
}

// quantF32 writes a quantized kernel that sums in f32 (groups a multiple
// of 4·lanes, f32 or bf16 scales and biases) for nx input rows: the 8-bit
// kernels of both sets and the AVX2 4-bit ones (the AVX-512 4-bit kernels
// are quantF32Nib's). Each weight is dequantized to w = scale·q + bias in
// f32 (q converted to f32 and one FMA: one rounding, the value an f32
// dequantization gives), w·x joins one of four f32 accumulators per input
// row, and at the row's end the four are added pairwise and their lanes
// summed in a fixed order. One step takes 4·lanes values into the four
// accumulators; a.bpg is the steps per group. The input row is f32 (4-bit:
// each block of 2·lanes values as its even-indexed values, then its odd
// ones; 8-bit: as is). Every input row gets the same operations in the same
// order, so the one-row and four-row kernels agree bit for bit.
//
// AVX-512 registers: accumulators Z0..Z15 (row t: Z4t..Z4t+3), Z17 the
// scale, Z18 the bias, Z20..Z23 the step's weights. (bf16 scales are
// widened in the kernel: converting them per block of rows in Go first
// measured 13% slower.)
//
// AVX2 (sixteen registers): the registers hold the accumulators of two
// input rows, so the four-row kernel walks each weight row twice, rows 0
// and 1, then 2 and 3. Registers: accumulators Y0..Y7, Y8..Y11 the step's
// weights, Y12 the scale, Y13 the bias, Y14 the nibble mask.
func (g *gen) quantF32(bits, nx int, sdt string) {
	L := g.isa.lanes
	name := fmt.Sprintf("q%df%sx%d%s", bits, sfx(sdt), nx, g.isa.name)
	g.quantHeader(name)
	w0, sc, bi := 20, 17, 18 // first weight register, scale, bias
	perPass := 4             // input rows whose accumulators fit
	if !g.isa.avx512 {
		w0, sc, bi, perPass = 8, 12, 13, 2
	}
	if bits == 4 && g.isa.avx512 {
		log.Fatal("quantF32: the AVX-512 4-bit kernels are quantF32Nib's")
	}
	if bits == 4 {
		g.p("MOVL $15, R11")
		g.p("VMOVD R11, X14")
		g.p("VPBROADCASTD X14, Y14")
	}
	g.xOffsets(nx)
	wb := L * bits / 2 // weight bytes per step of 4·lanes values
	bcast := func(src string, dst int) {
		if sdt == "bf16" {
			g.p("VPBROADCASTW %s, %s", src, g.V(dst))
			g.p("VPSLLD $16, %s, %s", g.V(dst), g.V(dst))
		} else {
			g.p("VBROADCASTSS %s, %s", src, g.V(dst))
		}
	}
	acc := func(t, c int) string { return g.V(4*t + c) }
	row := g.newLabel("row")
	g.l(row)
	for pass := 0; pass*perPass < nx; pass++ {
		rows := min(nx-pass*perPass, perPass) // input rows pass·perPass + t
		grp, step := g.newLabel("grp"), g.newLabel("step")
		if pass > 0 { // back to this row's scales
			g.p("MOVQ %d(DI), R11", offGroups)
			g.p("IMUL3Q $%d, R11, R11", -esize(sdt))
			g.p("ADDQ R11, R9")
		}
		g.p("MOVQ SI, AX")
		g.p("MOVQ %d(DI), BX", offX)
		for t := range rows {
			for c := range 4 {
				g.zero(acc(t, c))
			}
		}
		g.p("MOVQ %d(DI), R10", offGroups)
		g.l(grp)
		if !g.isa.avx512 {
			bcast("(R9)", sc)
		}
		bcast("(R9)(R8*1)", bi)
		if g.isa.avx512 {
			bcast("(R9)", sc)
		}
		g.p("MOVQ %d(DI), R12", offBPG)
		g.l(step)
		for off := 0; off < wb; off += 64 { // see prefetchAhead
			g.p("PREFETCHT1 %d(AX)", prefetchAhead+off)
		}
		w := func(c int) string { return g.V(w0 + c) }
		switch {
		case bits == 4:
			for h := range 2 {
				g.p("VPMOVZXBD %d(AX), %s", 8*h, w(2*h))
				g.p("VPSRLD $4, %s, %s", w(2*h), w(2*h+1))
				g.p("VPAND Y14, %s, %s", w(2*h), w(2*h))
			}
		default:
			for c := range 4 {
				g.p("VPMOVZXBD %d(AX), %s", L*c, w(c))
			}
		}
		for c := range 4 {
			g.p("VCVTDQ2PS %s, %s", w(c), w(c))
			g.p("VFMADD213PS %s, %s, %s", g.V(bi), g.V(sc), w(c)) // w = q·scale + bias
		}
		for t := range rows {
			for c := range 4 {
				g.p("VFMADD231PS %s, %s, %s", xaddr(pass*perPass+t, 4*L*c), w(c), acc(t, c))
			}
		}
		g.p("ADDQ $%d, AX", wb)
		g.p("ADDQ $%d, BX", 16*L)
		g.p("DECQ R12")
		g.p("JNZ %s", step)
		g.p("ADDQ $%d, R9", esize(sdt))
		g.p("DECQ R10")
		g.p("JNZ %s", grp)
		for t := range rows {
			g.p("VADDPS %s, %s, %s", acc(t, 1), acc(t, 0), acc(t, 0))
			g.p("VADDPS %s, %s, %s", acc(t, 3), acc(t, 2), acc(t, 2))
			g.p("VADDPS %s, %s, %s", acc(t, 2), acc(t, 0), acc(t, 0))
			g.hsum(4*t, 4*t+1)
			g.store(pass*perPass+t, 4*t)
		}
	}
	g.p("ADDQ %d(DI), SI", offStride)
	g.p("DECQ CX")
	g.p("JNZ %s", row)
	g.p("VZEROUPPER")
	g.p("RET")
}

// quantF32Nib writes the AVX-512 4-bit f32-sum kernel for nx input rows
// (groups of 64 or a multiple of 128, f32 or bf16 scales and biases). It
// factors each group's scale out, w·x = Σ_g scale·Σq·x + bias·Σx, and
// takes q from the packed weights with an AND and a conversion rather than
// a table lookup: on Zen 4 the lookups (VPERMPS), and the widenings and
// shifts that make their indices, share two shuffle pipes, one of them an
// FMA pipe, while VPANDD runs on all four pipes and VCVTUDQ2PS on the two
// that the FMAs leave free. (The table kernel this replaces built
// scale·[0..15] + bias per group and looked each nibble up: 12.3 GB/s of
// weights per core from cache, bound by those pipes; this one 15-16.)
//
// A step takes 128 values, 64 bytes of weights loaded as they lie: sixteen
// dwords, dword d holding values 8d..8d+7, value 8d+n in bits 4n..4n+3.
// For each n, VPANDD with 0xF<<4n and VCVTUDQ2PS give q·2⁴ⁿ in lane d,
// exactly (four significant bits); for n = 0 VPERMPS on the table 0..15
// gives q directly (it reads only an index's low four bits). The input row
// is laid out to match (split4 in simd.go): vector n of a step holds
// x[8d+n]·2⁻⁴ⁿ in lane d (exact unless subnormal), so each FMA adds the
// exact product q·x. Lanes 0..7 of a step are its first 64 values, 8..15
// the next 64: with groups of 64 a step spans two groups, and the scale
// vector holds the first group's scale in lanes 0..7 and the second's in
// 8..15 (a row's last 64 values, when it has an odd number of groups, are
// a half step, done with 256-bit operations on lanes 0..7: lanes 8..15 of
// the accumulators stay zero); with larger groups a group is a.bpg/2 steps. Each row's
// accumulator is zeroed per group (or step), takes the products, and one
// FMA adds scale·acc to the row's total; after the groups the total takes
// bias·Σx, sixteen groups a vector (Σx: the f32 group sums that follow the
// input row, zero padded to a multiple of 16; the last biases are read
// with a mask), and its lanes are summed in a fixed order.
//
// Weight rows go two at a time (a lone last one by itself): the two rows
// share every load of the input, whose vectors (512 bytes a step) would
// otherwise have to come from L2 once per row. Every input row and every
// weight row gets the same operations in the same order, so the results
// do not depend on the batch, on the row's position in a call, or on the
// one- or four-row kernel.
//
// Rounding: the products are exact; one passes through at most group/16
// - 1 additions in its accumulator lane (7 with groups of 64), one per
// later group (pair of groups) in the total, one per block of sixteen
// biases and four in the lane sum, and Σx is rounded once: the error is
// within about (K/128 + group/16 + 8)·2⁻²⁴·Σ(|scale·q| + |bias|)·|x|, which
// is below the tests' bound for the f32-sum kernels, (K/32 + 10)·2⁻²⁴ times
// the same sum, from K = 128 (groups of 64) or 256 (128) on; for shorter
// rows the errors, a random walk, stay far below either.
func (g *gen) quantF32Nib(nx int, sdt string) {
	name := fmt.Sprintf("q4f%sx%d%s", sfx(sdt), nx, g.isa.name)
	g.quantHeader(name)
	es := esize(sdt)
	for n := 1; n < 8; n++ {
		g.p("VPBROADCASTD ·nibMask+%d(SB), Z%d", 4*n, 15+n)
	}
	g.p("VMOVUPS ·nibF32(SB), Z23")
	g.p("VPBROADCASTD ·nibMask+0(SB), Z31")
	if sdt == "bf16" {
		g.p("MOVL $0xFFFF0000, R11")
		g.p("KMOVD R11, K2")
	} else {
		g.p("MOVL $0xFF00, R11")
		g.p("KMOVW R11, K2")
	}
	g.xOffsets(nx)
	// R8: the bytes between two rows' scales (the biases' offset is
	// reloaded from a.boff at a row's end).
	g.p("MOVQ %d(DI), R8", offGroups)
	g.p("IMUL3Q $%d, R8, R8", es)
	row, single, done := g.newLabel("row"), g.newLabel("single"), g.newLabel("done")
	g.l(row)
	g.p("CMPQ CX, $2")
	g.p("JLT %s", single)
	g.nibRows(nx, 2, sdt)
	g.p("SUBQ $2, CX")
	g.p("JNZ %s", row)
	g.p("JMP %s", done)
	g.l(single)
	g.nibRows(nx, 1, sdt)
	g.p("DECQ CX")
	g.p("JNZ %s", row)
	g.l(done)
	g.p("VZEROUPPER")
	g.p("RET")
}

// nibRows writes the body of quantF32Nib for R (1 or 2) weight rows at SI
// and the nx input rows; the weight rows share each load of the input.
// Registers: Z0..Z7 the totals and Z8..Z15 the accumulators (input row t,
// weight row r: Z(2t+r), Z(8+2t+r)), Z16..Z22 the masks of nibbles 1..7,
// Z23 the table 0..15, Z24, Z25 the step's weights of rows 0 and 1, Z26,
// Z27 their q, Z28 a vector of the input, Z29, Z30 the scales, Z31 the mask
// of nibble 0 (half steps).
func (g *gen) nibRows(nx, R int, sdt string) {
	es := esize(sdt)
	tot := func(t, r int) string { return fmt.Sprintf("Z%d", 2*t+r) }
	acc := func(t, r int) string { return fmt.Sprintf("Z%d", 8+2*t+r) }
	wrow := func(r int) string { // row r's weights at the cursor AX
		if r == 0 {
			return "(AX)"
		}
		return "(AX)(R11*1)"
	}
	srow := func(r, off int) string { // row r's scale at the cursor R9
		if r == 0 {
			return fmt.Sprintf("%d(R9)", off)
		}
		return fmt.Sprintf("%d(R9)(R8*1)", off)
	}
	zeroAcc := func() {
		for t := range nx {
			for r := range R {
				g.zero(acc(t, r))
			}
		}
	}
	// step adds a step's q·x to the accumulators: 128 values, or the 64
	// of the row's last half step.
	step := func(half bool) {
		v := "Z" // a half step works on the low halves (Y: 256-bit ops)
		if half {
			v = "Y"
		}
		for r := range R { // see prefetchAhead
			g.p("PREFETCHT1 %d%s", prefetchAhead, wrow(r))
		}
		for r := range R {
			g.p("VMOVDQU32 %s, %s%d", wrow(r), v, 24+r)
		}
		for n := range 8 {
			for r := range R {
				switch {
				case n == 0 && !half: // VPERMPS reads the low nibble only
					g.p("VPERMPS Z23, Z%d, Z%d", 24+r, 26+r)
					continue
				case n == 0: // (a 256-bit VPERMPS would read three bits)
					g.p("VPANDD Y31, Y%d, Y%d", 24+r, 26+r)
				default:
					g.p("VPANDD %s%d, %s%d, %s%d", v, 15+n, v, 24+r, v, 26+r)
				}
				g.p("VCVTUDQ2PS %s%d, %s%d", v, 26+r, v, 26+r)
			}
			for t := range nx {
				if R == 1 {
					g.p("VFMADD231PS %s, %s26, %s%d", xaddr(t, 64*n), v, v, 8+2*t)
					continue
				}
				g.p("VMOVUPS %s, %s28", xaddr(t, 64*n), v)
				for r := range R {
					g.p("VFMADD231PS %s28, %s%d, %s%d", v, v, 26+r, v, 8+2*t+r)
				}
			}
		}
		g.p("ADDQ $%d, AX", 64)
		if half {
			g.p("SUBQ $32, AX")
		}
		g.p("ADDQ $512, BX")
	}
	// combine adds scale·acc to the totals: one scale, or (pair) the
	// group's in lanes 0..7 and the next group's in lanes 8..15.
	combine := func(pair bool) {
		for r := range R {
			z := fmt.Sprintf("Z%d", 29+r)
			switch {
			case sdt == "bf16":
				g.p("VPBROADCASTW %s, %s", srow(r, 0), z)
				if pair {
					g.p("VPBROADCASTW %s, K2, %s", srow(r, 2), z)
				}
				g.p("VPSLLD $16, %s, %s", z, z)
			case pair:
				g.p("VBROADCASTSS %s, %s", srow(r, 0), z)
				g.p("VBROADCASTSS %s, K2, %s", srow(r, 4), z)
			default:
				for t := range nx {
					g.p("VFMADD231PS.BCST %s, %s, %s", srow(r, 0), acc(t, r), tot(t, r))
				}
				continue
			}
			for t := range nx {
				g.p("VFMADD231PS %s, %s, %s", z, acc(t, r), tot(t, r))
			}
		}
	}
	grp, stp, pairs, ptail, gdone := g.newLabel("grp"), g.newLabel("step"), g.newLabel("pairs"), g.newLabel("ptail"), g.newLabel("gdone")
	bvec, btail, bdone := g.newLabel("bvec"), g.newLabel("btail"), g.newLabel("bdone")
	g.p("MOVQ SI, AX")
	g.p("MOVQ %d(DI), BX", offX)
	g.p("MOVQ %d(DI), R11", offStride)
	for t := range nx {
		for r := range R {
			g.zero(tot(t, r))
		}
	}
	g.p("MOVQ %d(DI), R10", offGroups)
	g.p("MOVQ %d(DI), R12", offBPG)
	g.p("CMPQ R12, $1")
	g.p("JEQ %s", pairs)
	// Groups of 128·bpg/2 values: bpg/2 steps, then the group's scale.
	g.p("SHRQ $1, R12")
	g.l(grp)
	zeroAcc()
	g.p("MOVQ %d(DI), R12", offBPG)
	g.p("SHRQ $1, R12")
	g.l(stp)
	step(false)
	g.p("DECQ R12")
	g.p("JNZ %s", stp)
	combine(false)
	g.p("ADDQ $%d, R9", es)
	g.p("DECQ R10")
	g.p("JNZ %s", grp)
	g.p("JMP %s", gdone)
	// Groups of 64: a step spans two groups.
	g.l(pairs)
	g.p("CMPQ R10, $2")
	g.p("JLT %s", ptail)
	zeroAcc()
	step(false)
	combine(true)
	g.p("ADDQ $%d, R9", 2*es)
	g.p("SUBQ $2, R10")
	g.p("JMP %s", pairs)
	g.l(ptail)
	g.p("TESTQ R10, R10")
	g.p("JZ %s", gdone)
	zeroAcc()
	step(true)
	combine(false)
	g.p("ADDQ $%d, R9", es)
	g.l(gdone)
	// The biases: row 0's at R9 - R8 + a.boff, row 1's R8 further; the
	// group sums at BX.
	loadB := func(mask string, r int) {
		src := "(R11)"
		if r == 1 {
			src = "(R11)(R8*1)"
		}
		z := fmt.Sprintf("Z%d", 29+r)
		if sdt == "bf16" {
			g.p("VPMOVZXWD%s %s, %s%s", mask, src, kreg(mask), z)
			g.p("VPSLLD $16, %s, %s", z, z)
		} else {
			g.p("VMOVUPS%s %s, %s%s", mask, src, kreg(mask), z)
		}
	}
	biasFMAs := func() {
		for t := range nx {
			g.p("VMOVUPS %s, Z28", xaddr(t, 0))
			for r := range R {
				g.p("VFMADD231PS Z28, Z%d, %s", 29+r, tot(t, r))
			}
		}
	}
	g.p("MOVQ %d(DI), R11", offBoff)
	g.p("ADDQ R9, R11")
	g.p("SUBQ R8, R11")
	g.p("MOVQ %d(DI), R10", offGroups)
	g.p("CMPQ R10, $16")
	g.p("JLT %s", btail)
	g.l(bvec)
	for r := range R {
		loadB("", r)
	}
	biasFMAs()
	g.p("ADDQ $%d, R11", 16*es)
	g.p("ADDQ $64, BX")
	g.p("SUBQ $16, R10")
	g.p("CMPQ R10, $16")
	g.p("JGE %s", bvec)
	g.l(btail)
	g.p("TESTQ R10, R10")
	g.p("JZ %s", bdone)
	g.p("LEAQ ·tailMask(SB), R12")
	g.p("KMOVW (R12)(R10*2), K1")
	for r := range R {
		loadB(".Z", r)
	}
	biasFMAs()
	g.l(bdone)
	for t := range nx {
		for r := range R {
			i := 2*t + r
			g.hsum(i, 8+i)
			g.p("MOVQ %d(DI), R10", offRows)
			g.p("SUBQ CX, R10")
			g.p("MOVQ %d(DI), R11", offY+8*t)
			g.p("VMOVSS X%d, %d(R11)(R10*4)", i, 4*r)
		}
	}
	for range R {
		g.p("ADDQ %d(DI), SI", offStride)
	}
	if R == 2 {
		g.p("ADDQ R8, R9")
	}
}

// prefetchAhead is how many bytes ahead of each weight row's cursor the
// f32-sum kernels prefetch into L2 (one line per 64 bytes of weights; the
// AVX2 4-bit kernels, 16 bytes a step, once a step). Without it one core
// streamed weights from memory at 6-8 GB/s here, about a quarter of what a
// plain read loop gets, with it at 12-17 (the hardware prefetchers alone
// did not keep ahead of the kernels; PREFETCHT0 and shorter distances
// measured slower). The weight rows of a block, and the blocks of a
// worker, are consecutive in memory, so the prefetches run ahead into the
// rows to come. (The float64 and int8 kernels keep their own, `prefetch`;
// the int24 ones use this: with the int8 kernels' 512 bytes ahead they ran
// at 0.57 of the read bandwidth from memory, with this at 0.70-0.75.)
const prefetchAhead = 8192

// kreg is the mask operand of a masked (".Z") instruction.
func kreg(mask string) string {
	if mask == "" {
		return ""
	}
	return "K1, "
}

// hsumPD leaves the sum of the float64 lanes of register i in lane 0 of
// X(i), using register tmp; the order is fixed.
func (g *gen) hsumPD(i, tmp int) {
	if g.isa.avx512 {
		g.p("VEXTRACTF64X4 $1, Z%d, Y%d", i, tmp)
		g.p("VADDPD Y%d, Y%d, Y%d", tmp, i, i)
	}
	g.p("VEXTRACTF128 $1, Y%d, X%d", i, tmp)
	g.p("VADDPD X%d, X%d, X%d", tmp, i, i)
	g.p("VPERMILPD $1, X%d, X%d", i, tmp)
	g.p("VADDSD X%d, X%d, X%d", tmp, i, i)
}

// sfx is the kernel name suffix of a scale dtype.
func sfx(sdt string) string {
	if sdt == "bf16" {
		return "b"
	}
	return ""
}

// esize is the byte size of a scale dtype.
func esize(sdt string) int {
	if sdt == "bf16" {
		return 2
	}
	return 4
}

// scaleF64 broadcasts the scale at (R9) (f32 or bf16) to the float64 lanes
// of V14.
func (g *gen) scaleF64(sdt string) {
	h := "X14"
	if g.isa.avx512 {
		h = "Y14"
	}
	if sdt == "bf16" {
		g.p("VPBROADCASTW (R9), %s", h)
		g.p("VPSLLD $16, %s, %s", h, h)
	} else {
		g.p("VBROADCASTSS (R9), %s", h)
	}
	g.p("VCVTPS2PD %s, %s", h, g.V(14))
}

// biasF64 leaves Σ_g bias[g]·xsum[g] (float64) for input row t in lane 0 of
// X0: this row's biases (f32 or bf16) at R9 - es·groups + R8, the sums at
// BX (+ offset). It uses V0, V1, R10, R11, R12.
func (g *gen) biasF64(t int, sdt string) {
	L := g.isa.lanes / 2 // doubles per vector
	es := esize(sdt)
	h := "X1"
	if g.isa.avx512 {
		h = "Y1"
	}
	bvec, btail, bsc, bdone := g.newLabel("bvec"), g.newLabel("btail"), g.newLabel("bsc"), g.newLabel("bdone")
	g.p("MOVQ %d(DI), R10", offGroups)
	g.p("IMUL3Q $%d, R10, R11", -es)
	g.p("ADDQ R9, R11")
	g.p("ADDQ R8, R11")
	if t == 0 {
		g.p("MOVQ BX, R12")
	} else {
		g.p("LEAQ (BX)(%s*1), R12", dreg[t])
	}
	g.zero(g.V(0))
	g.p("CMPQ R10, $%d", L)
	g.p("JLT %s", btail)
	g.l(bvec)
	if sdt == "bf16" {
		g.p("VPMOVZXWD (R11), %s", h)
		g.p("VPSLLD $16, %s, %s", h, h)
		g.p("VCVTPS2PD %s, %s", h, g.V(1))
	} else {
		g.p("VCVTPS2PD (R11), %s", g.V(1))
	}
	g.p("VFMADD231PD (R12), %s, %s", g.V(1), g.V(0))
	g.p("ADDQ $%d, R11", es*L)
	g.p("ADDQ $%d, R12", 8*L)
	g.p("SUBQ $%d, R10", L)
	g.p("CMPQ R10, $%d", L)
	g.p("JGE %s", bvec)
	g.l(btail)
	g.hsumPD(0, 1)
	g.p("TESTQ R10, R10")
	g.p("JZ %s", bdone)
	g.l(bsc)
	if sdt == "bf16" {
		g.p("MOVWLZX (R11), AX")
		g.p("SHLL $16, AX")
		g.p("VMOVD AX, X1")
		g.p("VCVTSS2SD X1, X1, X1")
	} else {
		g.p("VCVTSS2SD (R11), X1, X1")
	}
	g.p("VFMADD231SD (R12), X1, X0")
	g.p("ADDQ $%d, R11", es)
	g.p("ADDQ $8, R12")
	g.p("DECQ R10")
	g.p("JNZ %s", bsc)
	g.l(bdone)
}

// dense writes a dense kernel (bf16 or f32 weights) for nx input rows,
// exact in float64: two float64 accumulators over blocks of 2D values (a
// bf16 or f32 weight times an f32 input is exact in float64), their lane
// sum, a scalar float64 tail; the total is rounded to f32 once. The input
// rows are doubles.
func (g *gen) dense(wdt string, nx int) {
	D := g.isa.lanes / 2
	name := fmt.Sprintf("%sx%d%s", wdt, nx, g.isa.name)
	g.header(name)
	g.p("MOVQ %d(DI), SI", offW)
	g.p("MOVQ %d(DI), CX", offRows)
	g.xOffsets(nx)
	es := 2 // bytes per weight
	if wdt == "f32" {
		es = 4
	}
	shift := 0
	for 1<<shift < 2*D {
		shift++
	}
	half := g.half
	load := func() {
		if wdt == "bf16" {
			g.p("VPMOVZXWD (AX), %s", half(0))
			g.p("VPMOVZXWD %d(AX), %s", D*es, half(1))
			g.p("VPSLLD $16, %s, %s", half(0), half(0))
			g.p("VPSLLD $16, %s, %s", half(1), half(1))
			g.p("VCVTPS2PD %s, %s", half(0), g.V(0))
			g.p("VCVTPS2PD %s, %s", half(1), g.V(1))
		} else {
			g.p("VCVTPS2PD (AX), %s", g.V(0))
			g.p("VCVTPS2PD %d(AX), %s", D*es, g.V(1))
		}
	}
	row, blk, red, tail, store := g.newLabel("row"), g.newLabel("blk"), g.newLabel("red"), g.newLabel("tail"), g.newLabel("store")
	g.l(row)
	g.p("MOVQ SI, AX")
	g.p("MOVQ %d(DI), BX", offX)
	for t := range nx {
		g.zero(g.V(6 + t))
		g.zero(g.V(10 + t))
	}
	g.p("MOVQ %d(DI), R12", offK)
	g.p("SHRQ $%d, R12", shift)
	g.p("JZ %s", red)
	g.l(blk)
	if prefetch > 0 {
		g.p("PREFETCHT0 %d(AX)", prefetch)
	}
	load()
	for t := range nx {
		g.p("VFMADD231PD %s, %s, %s", xaddr(t, 0), g.V(0), g.V(6+t))
		g.p("VFMADD231PD %s, %s, %s", xaddr(t, 8*D), g.V(1), g.V(10+t))
	}
	g.p("ADDQ $%d, AX", 2*D*es)
	g.p("ADDQ $%d, BX", 16*D)
	g.p("DECQ R12")
	g.p("JNZ %s", blk)
	g.l(red)
	for t := range nx {
		g.p("VADDPD %s, %s, %s", g.V(10+t), g.V(6+t), g.V(6+t))
		g.hsumPD(6+t, 1)
	}
	g.p("MOVQ %d(DI), R12", offK)
	g.p("ANDQ $%d, R12", 2*D-1)
	g.p("JZ %s", store)
	g.l(tail)
	if wdt == "bf16" {
		g.p("MOVWLZX (AX), R11")
		g.p("SHLL $16, R11")
		g.p("VMOVD R11, X0")
	} else {
		g.p("VMOVSS (AX), X0")
	}
	g.p("VCVTSS2SD X0, X0, X0")
	for t := range nx {
		g.p("VFMADD231SD %s, X0, X%d", xaddr(t, 0), 6+t)
	}
	g.p("ADDQ $%d, AX", es)
	g.p("ADDQ $8, BX")
	g.p("DECQ R12")
	g.p("JNZ %s", tail)
	g.l(store)
	for t := range nx {
		g.p("VCVTSD2SS X%d, X%d, X%d", 6+t, 6+t, 6+t)
		g.store(t, 6+t)
	}
	g.p("ADDQ %d(DI), SI", offStride)
	g.p("DECQ CX")
	g.p("JNZ %s", row)
	g.p("VZEROUPPER")
	g.p("RET")
}

// dot writes dotF64(a, b *float32, n int) float64: Σ a[i]·b[i] with the
// exact f32 products summed in four float64 accumulators (the attention
// scores; the generic kernel sums the same products in float64 in order).
func (g *gen) dot() {
	D := g.isa.lanes / 2
	name := "dotF64" + g.isa.name
	h := g.half
	fmt.Fprintf(&g.buf, "\n// func %s(a, b *float32, n int) float64\nTEXT ·%s(SB), NOSPLIT, $0-32\n", name, name)
	g.p("MOVQ a+0(FP), SI")
	g.p("MOVQ b+8(FP), DI")
	g.p("MOVQ n+16(FP), CX")
	for i := 2; i < 6; i++ {
		g.zero(g.V(i))
	}
	vec, red, tail, done := g.newLabel("vec"), g.newLabel("red"), g.newLabel("tail"), g.newLabel("done")
	g.p("CMPQ CX, $%d", 4*D)
	g.p("JLT %s", red)
	g.l(vec)
	for i := range 4 {
		g.p("VCVTPS2PD %d(SI), %s", 4*D*i, g.V(0))
		g.p("VCVTPS2PD %d(DI), %s", 4*D*i, g.V(1))
		g.p("VFMADD231PD %s, %s, %s", g.V(1), g.V(0), g.V(2+i))
	}
	g.p("ADDQ $%d, SI", 16*D)
	g.p("ADDQ $%d, DI", 16*D)
	g.p("SUBQ $%d, CX", 4*D)
	g.p("CMPQ CX, $%d", 4*D)
	g.p("JGE %s", vec)
	g.l(red)
	g.p("VADDPD %s, %s, %s", g.V(3), g.V(2), g.V(2))
	g.p("VADDPD %s, %s, %s", g.V(5), g.V(4), g.V(4))
	g.p("VADDPD %s, %s, %s", g.V(4), g.V(2), g.V(2))
	g.hsumPD(2, 1)
	_ = h
	g.p("TESTQ CX, CX")
	g.p("JZ %s", done)
	g.l(tail)
	g.p("VCVTSS2SD (SI), X0, X0")
	g.p("VCVTSS2SD (DI), X1, X1")
	g.p("VFMADD231SD X1, X0, X2")
	g.p("ADDQ $4, SI")
	g.p("ADDQ $4, DI")
	g.p("DECQ CX")
	g.p("JNZ %s", tail)
	g.l(done)
	g.p("VMOVSD X2, ret+24(FP)")
	g.p("VZEROUPPER")
	g.p("RET")
}

// axpy writes axpyF64(y *float64, x *float32, a float64, n int):
// y[i] += a·x[i], the product rounded to float64 before the add, as the
// generic loop computes it.
func (g *gen) axpy() {
	D := g.isa.lanes / 2
	name := "axpyF64" + g.isa.name
	fmt.Fprintf(&g.buf, "\n// func %s(y *float64, x *float32, a float64, n int)\nTEXT ·%s(SB), NOSPLIT, $0-32\n", name, name)
	g.p("MOVQ y+0(FP), DI")
	g.p("MOVQ x+8(FP), SI")
	g.p("VBROADCASTSD a+16(FP), %s", g.V(1))
	g.p("MOVQ n+24(FP), CX")
	vec, tail, sc, done := g.newLabel("vec"), g.newLabel("tail"), g.newLabel("sc"), g.newLabel("done")
	g.p("CMPQ CX, $%d", 2*D)
	g.p("JLT %s", tail)
	g.l(vec)
	for i := range 2 {
		g.p("VCVTPS2PD %d(SI), %s", 4*D*i, g.V(2+i))
		g.p("VMULPD %s, %s, %s", g.V(1), g.V(2+i), g.V(2+i))
		g.p("VADDPD %d(DI), %s, %s", 8*D*i, g.V(2+i), g.V(2+i))
		g.p("VMOVUPD %s, %d(DI)", g.V(2+i), 8*D*i)
	}
	g.p("ADDQ $%d, SI", 8*D)
	g.p("ADDQ $%d, DI", 16*D)
	g.p("SUBQ $%d, CX", 2*D)
	g.p("CMPQ CX, $%d", 2*D)
	g.p("JGE %s", vec)
	g.l(tail)
	g.p("TESTQ CX, CX")
	g.p("JZ %s", done)
	g.l(sc)
	g.p("VCVTSS2SD (SI), X0, X0")
	g.p("VMULSD X1, X0, X0")
	g.p("VADDSD (DI), X0, X0")
	g.p("VMOVSD X0, (DI)")
	g.p("ADDQ $4, SI")
	g.p("ADDQ $8, DI")
	g.p("DECQ CX")
	g.p("JNZ %s", sc)
	g.l(done)
	g.p("VZEROUPPER")
	g.p("RET")
}

// softcap writes softcapPoly(y, x *float32, c float64, n int): for n
// values (a multiple of the float64 lanes), y = float32(c·t(float64(x)/c))
// with t the rational branch of Go's math.Tanh (|z| < 0.625), evaluated
// with the same operations in the same order (no fused multiply-adds), so
// the results are those of math.Tanh wherever that branch applies; the
// caller redoes the other values.
func (g *gen) softcap() {
	D := g.isa.lanes / 2
	name := "softcapPoly" + g.isa.name
	h := g.half
	fmt.Fprintf(&g.buf, "\n// func %s(y, x *float32, c float64, n int)\nTEXT ·%s(SB), NOSPLIT, $0-32\n", name, name)
	g.p("MOVQ y+0(FP), DI")
	g.p("MOVQ x+8(FP), SI")
	g.p("VBROADCASTSD c+16(FP), %s", g.V(15))
	g.p("MOVQ n+24(FP), CX")
	for i, v := range []string{"P0", "P1", "P2", "Q0", "Q1", "Q2"} {
		g.p("VBROADCASTSD ·tanh%s(SB), %s", v, g.V(8+i))
	}
	loop, done := g.newLabel("sc"), g.newLabel("scdone")
	g.p("SHRQ $%d, CX", map[int]int{4: 2, 8: 3}[D])
	g.p("JZ %s", done)
	g.l(loop)
	g.p("VCVTPS2PD (SI), %s", g.V(0))
	g.p("VDIVPD %s, %s, %s", g.V(15), g.V(0), g.V(0)) // z = x/c
	g.p("VMULPD %s, %s, %s", g.V(0), g.V(0), g.V(1))  // s = z·z
	// numerator (P0·s + P1)·s + P2
	g.p("VMULPD %s, %s, %s", g.V(8), g.V(1), g.V(2))
	g.p("VADDPD %s, %s, %s", g.V(9), g.V(2), g.V(2))
	g.p("VMULPD %s, %s, %s", g.V(1), g.V(2), g.V(2))
	g.p("VADDPD %s, %s, %s", g.V(10), g.V(2), g.V(2))
	// denominator ((s + Q0)·s + Q1)·s + Q2
	g.p("VADDPD %s, %s, %s", g.V(11), g.V(1), g.V(3))
	g.p("VMULPD %s, %s, %s", g.V(1), g.V(3), g.V(3))
	g.p("VADDPD %s, %s, %s", g.V(12), g.V(3), g.V(3))
	g.p("VMULPD %s, %s, %s", g.V(1), g.V(3), g.V(3))
	g.p("VADDPD %s, %s, %s", g.V(13), g.V(3), g.V(3))
	// z + z·s·num/den
	g.p("VMULPD %s, %s, %s", g.V(1), g.V(0), g.V(4))
	g.p("VMULPD %s, %s, %s", g.V(2), g.V(4), g.V(4))
	g.p("VDIVPD %s, %s, %s", g.V(3), g.V(4), g.V(4))
	g.p("VADDPD %s, %s, %s", g.V(4), g.V(0), g.V(0))
	g.p("VMULPD %s, %s, %s", g.V(0), g.V(15), g.V(0)) // c·t
	if g.isa.avx512 {
		g.p("VCVTPD2PS Z0, Y0")
	} else {
		g.p("VCVTPD2PSY Y0, X0")
	}
	g.p("VMOVUPS %s, (DI)", h(0))
	g.p("ADDQ $%d, SI", 4*D)
	g.p("ADDQ $%d, DI", 4*D)
	g.p("DECQ CX")
	g.p("JNZ %s", loop)
	g.l(done)
	g.p("VZEROUPPER")
	g.p("RET")
}

// attn4 writes the AVX-512 attention kernels for four queries at once, with
// each query's arithmetic exactly that of dotF64 and axpyF64 (the same
// products, sums and reduction order, so the same bits):
// dot4F64AVX512(q *float64, k *float32, n int, out *float64) sets out[j] to
// Σ k·q_j for the four rows q_j (float64, n apart), n a multiple of 32; the
// key row is widened once for the four. axpy4F64AVX512(y *float64, x
// *float32, p *float64, n int) adds p[j]·x to the four rows y_j (n apart), n
// a multiple of 16.
func (g *gen) attn4() {
	acc := func(j, i int) string { return fmt.Sprintf("Z%d", 4+4*j+i) }
	// row j of four rows at base, R8 bytes apart (R9 = 3·R8), at byte off.
	rowAt := func(base string, j, off int) string {
		return fmt.Sprintf("%d(%s)%s", off, base, [...]string{"", "(R8*1)", "(R8*2)", "(R9*1)"}[j])
	}
	qa := func(j, off int) string { return rowAt("SI", j, off) }
	g.buf.WriteString("\n// func dot4F64AVX512(q *float64, k *float32, n int, out *float64)\nTEXT ·dot4F64AVX512(SB), NOSPLIT, $0-32\n")
	g.p("MOVQ q+0(FP), SI")
	g.p("MOVQ k+8(FP), DI")
	g.p("MOVQ n+16(FP), CX")
	g.p("MOVQ out+24(FP), DX")
	g.p("LEAQ (CX*8), R8")
	g.p("LEAQ (R8)(R8*2), R9")
	for j := range 4 {
		for i := range 4 {
			g.zero(acc(j, i))
		}
	}
	vec, done := g.newLabel("d4vec"), g.newLabel("d4done")
	g.p("TESTQ CX, CX")
	g.p("JZ %s", done)
	g.l(vec)
	for i := range 4 {
		g.p("VCVTPS2PD %d(DI), Z%d", 32*i, i)
	}
	for i := range 4 {
		for j := range 4 {
			g.p("VFMADD231PD %s, Z%d, %s", qa(j, 64*i), i, acc(j, i))
		}
	}
	g.p("ADDQ $256, SI")
	g.p("ADDQ $128, DI")
	g.p("SUBQ $32, CX")
	g.p("JNZ %s", vec)
	g.l(done)
	for j := range 4 { // as dotF64: (a0+a1) + (a2+a3), then the lanes
		g.p("VADDPD %s, %s, %s", acc(j, 1), acc(j, 0), acc(j, 0))
		g.p("VADDPD %s, %s, %s", acc(j, 3), acc(j, 2), acc(j, 2))
		g.p("VADDPD %s, %s, %s", acc(j, 2), acc(j, 0), acc(j, 0))
		g.p("VMOVAPD %s, Z1", acc(j, 0)) // hsumPD's VEX forms reach Z0..Z15 only
		g.hsumPD(1, 0)
		g.p("VMOVSD X1, %d(DX)", 8*j)
	}
	g.p("VZEROUPPER")
	g.p("RET")

	ya := func(j, off int) string { return rowAt("DI", j, off) }
	g.buf.WriteString("\n// func axpy4F64AVX512(y *float64, x *float32, p *float64, n int)\nTEXT ·axpy4F64AVX512(SB), NOSPLIT, $0-32\n")
	g.p("MOVQ y+0(FP), DI")
	g.p("MOVQ x+8(FP), SI")
	g.p("MOVQ p+16(FP), DX")
	g.p("MOVQ n+24(FP), CX")
	g.p("LEAQ (CX*8), R8")
	g.p("LEAQ (R8)(R8*2), R9")
	for j := range 4 {
		g.p("VBROADCASTSD %d(DX), Z%d", 8*j, 4+j)
	}
	avec, adone := g.newLabel("a4vec"), g.newLabel("a4done")
	g.p("TESTQ CX, CX")
	g.p("JZ %s", adone)
	g.l(avec)
	for i := range 2 {
		g.p("VCVTPS2PD %d(SI), Z%d", 32*i, 2+i)
		for j := range 4 { // as axpyF64: a·x, then + y
			g.p("VMULPD Z%d, Z%d, Z%d", 4+j, 2+i, 8+j)
			g.p("VADDPD %s, Z%d, Z%d", ya(j, 64*i), 8+j, 8+j)
			g.p("VMOVUPD Z%d, %s", 8+j, ya(j, 64*i))
		}
	}
	g.p("ADDQ $64, SI")
	g.p("ADDQ $128, DI")
	g.p("SUBQ $16, CX")
	g.p("JNZ %s", avec)
	g.l(adone)
	g.p("VZEROUPPER")
	g.p("RET")
}

// geluMul writes geluMul<ISA>(y, a, c *float32, n int): y = gelu_tanh(a)·c
// for n values (a multiple of lanes/2), gelu_tanh(v) = ½v(1+tanh(u)), u =
// √(2/π)(v + 0.044715v³), evaluated in float64 lanes as ½v·(1+tanh(u))
// with 1+tanh(u) = 2 − w for u ≥ 0 and w for u < 0, w = 2/(e^{2|u|}+1)
// (no cancellation where tanh(u) nears −1). e^x for x = 2|u| clamped to
// [0, 708] (NaN kept): x = k·ln2 + r with k rounded to nearest through the
// 1.5·2⁵² shift, e^r by its Taylor polynomial of degree 11 (|r| ≤ ln2/2, a
// relative error under 1e-14), 2^k added to the exponent bits. The result
// is rounded to f32 and multiplied by c in f32, as the generic loop does;
// it is within an f32 rounding of the exact value (TestSIMDGeluMul).
func (g *gen) geluMul() {
	D := g.isa.lanes / 2
	name := "geluMul" + g.isa.name
	V, h := g.V, g.half
	K := func(c string) string { return "·geluK" + c + "(SB)" }
	fmt.Fprintf(&g.buf, "\n// func %s(y, a, c *float32, n int)\nTEXT ·%s(SB), NOSPLIT, $0-32\n", name, name)
	g.p("MOVQ y+0(FP), DI")
	g.p("MOVQ a+8(FP), SI")
	g.p("MOVQ c+16(FP), DX")
	g.p("MOVQ n+24(FP), CX")
	g.p("VMOVUPD %s, %s", K("Clamp"), V(15))
	g.p("VMOVUPD %s, %s", K("One"), V(14))
	g.p("VMOVUPD %s, %s", K("C1"), V(13))
	g.p("VMOVUPD %s, %s", K("Shift"), V(12))
	if g.isa.avx512 {
		g.p("VXORPD Z11, Z11, Z11")
	}
	loop, done := g.newLabel("gelu"), g.newLabel("geludone")
	g.p("SHRQ $%d, CX", map[int]int{4: 2, 8: 3}[D])
	g.p("JZ %s", done)
	g.l(loop)
	g.p("VCVTPS2PD (SI), %s", V(0))                   // v
	g.p("VMULPD %s, %s, %s", V(0), V(0), V(1))        // v²
	g.p("VFMADD213PD %s, %s, %s", V(14), V(13), V(1)) // 1 + 0.044715v²
	g.p("VMULPD %s, %s, %s", V(0), V(1), V(1))
	g.p("VMULPD %s, %s, %s", K("C0"), V(1), V(1)) // u
	g.p("VANDPD %s, %s, %s", K("Abs"), V(1), V(2))
	g.p("VADDPD %s, %s, %s", V(2), V(2), V(2))  // x = 2|u|
	g.p("VMINPD %s, %s, %s", V(2), V(15), V(2)) // min(708, x), NaN kept
	g.p("VMOVAPD %s, %s", V(12), V(3))
	g.p("VFMADD231PD %s, %s, %s", K("Log2e"), V(2), V(3)) // x·log2e + shift: k in the low bits
	g.p("VSUBPD %s, %s, %s", V(12), V(3), V(4))           // k
	g.p("VFNMADD231PD %s, %s, %s", K("Ln2Hi"), V(4), V(2))
	g.p("VFNMADD231PD %s, %s, %s", K("Ln2Lo"), V(4), V(2)) // r
	g.p("VMOVUPD %s, %s", K("P11"), V(5))
	for k := 10; k >= 2; k-- {
		g.p("VFMADD213PD %s, %s, %s", K(fmt.Sprintf("P%d", k)), V(2), V(5))
	}
	g.p("VFMADD213PD %s, %s, %s", V(14), V(2), V(5))
	g.p("VFMADD213PD %s, %s, %s", V(14), V(2), V(5)) // e^r
	g.p("VPSLLQ $52, %s, %s", V(3), V(3))
	g.p("VPADDQ %s, %s, %s", V(3), V(5), V(5))  // e^x
	g.p("VADDPD %s, %s, %s", V(14), V(5), V(5)) // e^x + 1
	g.p("VMOVUPD %s, %s", K("Two"), V(6))
	g.p("VDIVPD %s, %s, %s", V(5), V(6), V(5)) // w
	g.p("VSUBPD %s, %s, %s", V(5), V(6), V(6)) // 2 − w
	if g.isa.avx512 {
		g.p("VCMPPD $1, Z11, Z1, K1") // u < 0
		g.p("VMOVAPD Z5, K1, Z6")
	} else {
		g.p("VBLENDVPD Y1, Y5, Y6, Y6") // w where u's sign is set
	}
	g.p("VMULPD %s, %s, %s", K("Half"), V(0), V(0))
	g.p("VMULPD %s, %s, %s", V(6), V(0), V(0))
	if g.isa.avx512 {
		g.p("VCVTPD2PS Z0, Y0")
	} else {
		g.p("VCVTPD2PSY Y0, X0")
	}
	g.p("VMULPS (DX), %s, %s", h(0), h(0))
	g.p("VMOVUPS %s, (DI)", h(0))
	for _, r := range []string{"SI", "DI", "DX"} {
		g.p("ADDQ $%d, %s", 4*D, r)
	}
	g.p("DECQ CX")
	g.p("JNZ %s", loop)
	g.l(done)
	g.p("VZEROUPPER")
	g.p("RET")
}

// int8q writes an int8-activation quantized kernel (ymm registers) for nx
// input rows. The input row is quantized per block of 32 values to int8 with
// an f32 scale d; a unit of weights (4-bit: 64 values, 32 packed bytes; 8-bit:
// 32 values) gives eight int32 lanes of exact Σq·xi (VPDPBUSD with VNNI, else
// VPMADDUBSW or VPMADDWD), converted to f32, multiplied by the lane's d and
// by the group scale into the row's f32 total. After the groups, Σ_g
// bias·Σx (f32) is added to the lane sum of the total.
//
// Input row layout (bytes): units of [32 int8 (4-bit: the unit's even-indexed
// values) | 32 int8 (4-bit: the odd ones) | 8 f32 lane scales] (96 bytes;
// 8-bit: 32 int8 (AVX2: int16, 64 bytes) then the lane scales), then the
// groups' f32 sums. Scales and biases: f32 [rows][groups].
//
// pair (4-bit, group 32): a unit spans two groups, lanes 0-3 and 4-7; the
// scales are permuted into place and a.k is 1 when the row ends in half a
// unit. Otherwise a group holds a.bpg whole units.
//
// digits 3 (4-bit; the int24 kernels, named d4…): the input is quantized
// per block of 32 to 24-bit integers v = 2¹⁶·h + 2⁸·m + l, three int8
// digits (m and l in [-128, 127]), and a unit's input holds [h even | h odd
// | m even | m odd | l even | l odd | 8 f32 lane scales] (224 bytes). A
// lane's exact Σq·v is accumulated digit after digit, shifting by 8 bits
// between them: at most 8·15·(127·2¹⁶ + 128·2⁸ + 128) < 2³⁰ a unit.
func (g *gen) int8q(bits, nx int, pair, vnni bool, sdt string, digits int) {
	variant := "AVX2"
	if vnni {
		variant = "VNNI"
	}
	p := sfx(sdt)
	if pair {
		p = "p"
	}
	name := fmt.Sprintf("i%d%sx%d%s", bits, p, nx, variant)
	if digits == 3 {
		name = fmt.Sprintf("d%d%sx%d%s", bits, p, nx, variant)
	}
	g.quantHeader(name)
	if bits == 4 {
		g.p("MOVL $0x0f0f0f0f, R11")
		g.p("VMOVD R11, X15")
		g.p("VPBROADCASTD X15, Y15")
	}
	if !vnni {
		g.p("MOVL $0x00010001, R11")
		g.p("VMOVD R11, X12")
		g.p("VPBROADCASTD X12, Y12")
	}
	if pair {
		g.p("VMOVDQU ·pairIdx(SB), Y13")
	}
	g.xOffsets(nx)
	ub, xb := 32, 96 // weight and input bytes per unit
	if bits == 8 && vnni {
		xb = 64
	}
	lsOff := 64 // lane scales within a unit
	if bits == 8 && vnni {
		lsOff = 32
	}
	if digits == 3 {
		xb, lsOff = 224, 192
	}
	unit := func(half bool) {
		switch {
		case half:
		case digits == 3:
			g.p("PREFETCHT1 %d(AX)", prefetchAhead)
		case prefetch > 0:
			g.p("PREFETCHT0 %d(AX)", prefetch)
		}
		if bits == 4 {
			if half {
				g.p("VMOVDQU (AX), X0") // clears the upper lanes
			} else {
				g.p("VMOVDQU (AX), Y0")
			}
			g.p("VPSRLW $4, Y0, Y1")
			g.p("VPAND Y15, Y0, Y0")
			g.p("VPAND Y15, Y1, Y1")
			for t := range nx {
				acc := fmt.Sprintf("Y%d", 6+t)
				for d := range digits {
					if d > 0 {
						g.p("VPSLLD $8, %s, %s", acc, acc)
					}
					if vnni {
						if d == 0 {
							g.p("VPXOR %s, %s, %s", acc, acc, acc)
						}
						g.p("VPDPBUSD %s, Y0, %s", xaddr(t, 64*d), acc)
						g.p("VPDPBUSD %s, Y1, %s", xaddr(t, 64*d+32), acc)
						continue
					}
					dst := acc
					if d > 0 {
						dst = "Y11"
					}
					g.p("VPMADDUBSW %s, Y0, %s", xaddr(t, 64*d), dst)
					g.p("VPMADDUBSW %s, Y1, Y10", xaddr(t, 64*d+32))
					g.p("VPADDW Y10, %s, %s", dst, dst)
					g.p("VPMADDWD Y12, %s, %s", dst, dst)
					if d > 0 {
						g.p("VPADDD Y11, %s, %s", acc, acc)
					}
				}
			}
		} else {
			if vnni {
				g.p("VMOVDQU (AX), Y0")
			} else {
				g.p("VPMOVZXBW (AX), Y0")
				g.p("VPMOVZXBW 16(AX), Y1")
			}
			for t := range nx {
				if vnni {
					g.p("VPXOR Y%d, Y%d, Y%d", 6+t, 6+t, 6+t)
					g.p("VPDPBUSD %s, Y0, Y%d", xaddr(t, 0), 6+t)
				} else {
					g.p("VPMADDWD %s, Y0, Y%d", xaddr(t, 0), 6+t)
					g.p("VPMADDWD %s, Y1, Y10", xaddr(t, 32))
					g.p("VPADDD Y10, Y%d, Y%d", 6+t, 6+t)
				}
			}
		}
		for t := range nx {
			g.p("VCVTDQ2PS Y%d, Y%d", 6+t, 6+t)
			g.p("VMULPS %s, Y%d, Y%d", xaddr(t, lsOff), 6+t, 6+t)
			g.p("VFMADD231PS Y14, Y%d, Y%d", 6+t, 2+t)
		}
		g.p("ADDQ $%d, AX", ub)
		g.p("ADDQ $%d, BX", xb)
	}
	row, step, un, steps, done := g.newLabel("row"), g.newLabel("step"), g.newLabel("unit"), g.newLabel("steps"), g.newLabel("stepsdone")
	g.l(row)
	g.p("MOVQ SI, AX")
	g.p("MOVQ %d(DI), BX", offX)
	for t := range nx {
		g.p("VXORPS Y%d, Y%d, Y%d", 2+t, 2+t, 2+t)
	}
	g.p("MOVQ %d(DI), R10", offGroups)
	if pair {
		g.p("SHRQ $1, R10")
		g.p("JZ %s", steps)
	}
	g.l(step)
	if pair {
		g.p("VBROADCASTSD (R9), Y14")
		g.p("VPERMPS Y14, Y13, Y14")
		g.p("ADDQ $8, R9")
		unit(false)
	} else {
		if sdt == "bf16" {
			g.p("VPBROADCASTW (R9), Y14")
			g.p("VPSLLD $16, Y14, Y14")
		} else {
			g.p("VBROADCASTSS (R9), Y14")
		}
		g.p("ADDQ $%d, R9", esize(sdt))
		g.p("MOVQ %d(DI), R12", offBPG)
		g.l(un)
		unit(false)
		g.p("DECQ R12")
		g.p("JNZ %s", un)
	}
	g.p("DECQ R10")
	g.p("JNZ %s", step)
	g.l(steps)
	if pair {
		// Half a unit at the end of the row: 16 bytes; the upper lanes
		// multiply zeros.
		g.p("CMPQ %d(DI), $0", offK)
		g.p("JEQ %s", done)
		g.p("VBROADCASTSD (R9), Y14")
		g.p("VPERMPS Y14, Y13, Y14")
		g.p("ADDQ $4, R9")
		unit(true)
	}
	g.l(done)
	for t := range nx {
		g.biasF32(t, sdt)
		g.hsum(2+t, 1)
		g.p("VADDSS X0, X%d, X%d", 2+t, 2+t)
		g.store(t, 2+t)
	}
	g.p("ADDQ %d(DI), SI", offStride)
	g.p("DECQ CX")
	g.p("JNZ %s", row)
	g.p("VZEROUPPER")
	g.p("RET")
}

// biasF32 leaves Σ_g bias[g]·xsum[g] (f32) for input row t in lane 0 of X0:
// this row's biases (f32 or bf16) at R9 - es·groups + R8, the sums at BX
// (+ offset). It uses Y0, Y1, R10, R11, R12 (and AX).
func (g *gen) biasF32(t int, sdt string) {
	es := esize(sdt)
	bvec, btail, bsc, bdone := g.newLabel("bvec"), g.newLabel("btail"), g.newLabel("bsc"), g.newLabel("bdone")
	g.p("MOVQ %d(DI), R10", offGroups)
	g.p("IMUL3Q $%d, R10, R11", -es)
	g.p("ADDQ R9, R11")
	g.p("ADDQ R8, R11")
	if t == 0 {
		g.p("MOVQ BX, R12")
	} else {
		g.p("LEAQ (BX)(%s*1), R12", dreg[t])
	}
	g.p("VXORPS Y0, Y0, Y0")
	g.p("CMPQ R10, $8")
	g.p("JLT %s", btail)
	g.l(bvec)
	if sdt == "bf16" {
		g.p("VPMOVZXWD (R11), Y1")
		g.p("VPSLLD $16, Y1, Y1")
	} else {
		g.p("VMOVUPS (R11), Y1")
	}
	g.p("VFMADD231PS (R12), Y1, Y0")
	g.p("ADDQ $%d, R11", 8*es)
	g.p("ADDQ $32, R12")
	g.p("SUBQ $8, R10")
	g.p("CMPQ R10, $8")
	g.p("JGE %s", bvec)
	g.l(btail)
	g.hsumY(0, 1)
	g.p("TESTQ R10, R10")
	g.p("JZ %s", bdone)
	g.l(bsc)
	if sdt == "bf16" {
		g.p("MOVWLZX (R11), AX")
		g.p("SHLL $16, AX")
		g.p("VMOVD AX, X1")
	} else {
		g.p("VMOVSS (R11), X1")
	}
	g.p("VFMADD231SS (R12), X1, X0")
	g.p("ADDQ $%d, R11", es)
	g.p("ADDQ $4, R12")
	g.p("DECQ R10")
	g.p("JNZ %s", bsc)
	g.l(bdone)
}

// hsumY is hsum for a ymm register whatever the kernel set.
func (g *gen) hsumY(i, tmp int) {
	g.p("VEXTRACTF128 $1, Y%d, X%d", i, tmp)
	g.p("VADDPS X%d, X%d, X%d", tmp, i, i)
	g.p("VPERMILPS $0x4E, X%d, X%d", i, tmp)
	g.p("VADDPS X%d, X%d, X%d", tmp, i, i)
	g.p("VPERMILPS $0xB1, X%d, X%d", i, tmp)
	g.p("VADDSS X%d, X%d, X%d", tmp, i, i)
}

// widenF32 writes widenBF16F32(dst *float32, src *uint16, n int).
func (g *gen) widenBF16F32() {
	name := "widenBF16F32AVX2"
	fmt.Fprintf(&g.buf, "\n// func %s(dst *float32, src *uint16, n int)\nTEXT ·%s(SB), NOSPLIT, $0-24\n", name, name)
	g.p("MOVQ dst+0(FP), DI")
	g.p("MOVQ src+8(FP), SI")
	g.p("MOVQ n+16(FP), CX")
	vec, tail, sc, done := g.newLabel("vec"), g.newLabel("tail"), g.newLabel("sc"), g.newLabel("done")
	g.p("CMPQ CX, $8")
	g.p("JLT %s", tail)
	g.l(vec)
	g.p("VPMOVZXWD (SI), Y0")
	g.p("VPSLLD $16, Y0, Y0")
	g.p("VMOVDQU Y0, (DI)")
	g.p("ADDQ $16, SI")
	g.p("ADDQ $32, DI")
	g.p("SUBQ $8, CX")
	g.p("CMPQ CX, $8")
	g.p("JGE %s", vec)
	g.l(tail)
	g.p("TESTQ CX, CX")
	g.p("JZ %s", done)
	g.l(sc)
	g.p("MOVWLZX (SI), AX")
	g.p("SHLL $16, AX")
	g.p("MOVL AX, (DI)")
	g.p("ADDQ $2, SI")
	g.p("ADDQ $4, DI")
	g.p("DECQ CX")
	g.p("JNZ %s", sc)
	g.l(done)
	g.p("VZEROUPPER")
	g.p("RET")
}

// quant8 writes quantInt8AVX2(dst *byte, bsum *float64, x *float32,
// nblocks, mode int): each block of 32 inputs is quantized to int8 with
// d = max|x|/127 (q = x·(127/max|x|) rounded to nearest even; all zero when
// max|x| is 0) and laid out for the int8 kernels (mode 0: [32 int8 | 8×d],
// 64 bytes per block; mode 1, 4-bit units of two blocks: even-indexed values
// at 16·h, odd ones at 32+16·h, d at 64+16·h, four times; mode 2: [32 int16
// | 8×d], 96 bytes per block; mode 3, the int24 kernels' 4-bit units of two
// blocks: d = max|x|/(127·2¹⁶), v = x·(127·2¹⁶/max|x|) rounded to nearest
// even, split into the digits h, m, l of v = 2¹⁶·h + 2⁸·m + l (m and l in
// [-128, 127]), digit p's even-indexed values at 64·p + 16·h, its odd ones
// at 64·p + 32 + 16·h, d at 192 + 16·h, four times); bsum[b] is the float64
// sum of the block's inputs (lanes, then a fixed reduction).
func (g *gen) quant8() {
	name := "quantInt8AVX2"
	fmt.Fprintf(&g.buf, "\n// func %s(dst *byte, bsum *float64, x *float32, nblocks, mode int)\nTEXT ·%s(SB), NOSPLIT, $0-40\n", name, name)
	g.p("MOVQ dst+0(FP), DI")
	g.p("MOVQ bsum+8(FP), R8")
	g.p("MOVQ x+16(FP), SI")
	g.p("MOVQ nblocks+24(FP), CX")
	g.p("MOVQ mode+32(FP), DX")
	g.p("MOVL $0x7fffffff, AX")
	g.p("VMOVD AX, X15")
	g.p("VPBROADCASTD X15, Y15") // abs mask
	blk, zero, store, m1, m2, next, done := g.newLabel("qblk"), g.newLabel("qzero"), g.newLabel("qstore"), g.newLabel("qm1"), g.newLabel("qm2"), g.newLabel("qnext"), g.newLabel("qdone")
	m3, scale := g.newLabel("qm3"), g.newLabel("qscale")
	g.p("MOVL $0x42fe0000, AX") // 127.0
	g.p("CMPQ DX, $3")
	g.p("JNE %s", scale)
	g.p("MOVL $0x4afe0000, AX") // 127·2¹⁶
	g.l(scale)
	g.p("VMOVD AX, X14")
	g.p("VMOVDQU ·permPack(SB), Y13")
	g.p("VMOVDQU ·shufEvenOdd(SB), Y12")
	g.p("MOVL $128, AX")
	g.p("VMOVD AX, X8")
	g.p("VPBROADCASTD X8, Y8")
	g.p("MOVL $255, AX")
	g.p("VMOVD AX, X9")
	g.p("VPBROADCASTD X9, Y9")
	g.p("XORQ R9, R9") // block index
	g.p("TESTQ CX, CX")
	g.p("JZ %s", done)
	g.l(blk)
	g.p("VMOVUPS (SI), Y0")
	g.p("VMOVUPS 32(SI), Y1")
	g.p("VMOVUPS 64(SI), Y2")
	g.p("VMOVUPS 96(SI), Y3")
	// Block sum in float64: four halves-of-four per register.
	g.p("VCVTPS2PD X0, Y4")
	g.p("VEXTRACTF128 $1, Y0, X5")
	g.p("VCVTPS2PD X5, Y5")
	g.p("VADDPD Y5, Y4, Y4")
	g.p("VCVTPS2PD X1, Y5")
	g.p("VADDPD Y5, Y4, Y4")
	g.p("VEXTRACTF128 $1, Y1, X5")
	g.p("VCVTPS2PD X5, Y5")
	g.p("VADDPD Y5, Y4, Y4")
	g.p("VCVTPS2PD X2, Y5")
	g.p("VADDPD Y5, Y4, Y4")
	g.p("VEXTRACTF128 $1, Y2, X5")
	g.p("VCVTPS2PD X5, Y5")
	g.p("VADDPD Y5, Y4, Y4")
	g.p("VCVTPS2PD X3, Y5")
	g.p("VADDPD Y5, Y4, Y4")
	g.p("VEXTRACTF128 $1, Y3, X5")
	g.p("VCVTPS2PD X5, Y5")
	g.p("VADDPD Y5, Y4, Y4")
	g.p("VEXTRACTF128 $1, Y4, X5")
	g.p("VADDPD X5, X4, X4")
	g.p("VPERMILPD $1, X4, X5")
	g.p("VADDSD X5, X4, X4")
	g.p("VMOVSD X4, (R8)(R9*8)")
	// max|x|
	g.p("VANDPS Y15, Y0, Y4")
	g.p("VANDPS Y15, Y1, Y5")
	g.p("VMAXPS Y5, Y4, Y4")
	g.p("VANDPS Y15, Y2, Y5")
	g.p("VMAXPS Y5, Y4, Y4")
	g.p("VANDPS Y15, Y3, Y5")
	g.p("VMAXPS Y5, Y4, Y4")
	g.p("VEXTRACTF128 $1, Y4, X5")
	g.p("VMAXPS X5, X4, X4")
	g.p("VPERMILPS $0x4E, X4, X5")
	g.p("VMAXPS X5, X4, X4")
	g.p("VPERMILPS $0xB1, X4, X5")
	g.p("VMAXSS X5, X4, X4") // X4 = max|x|
	g.p("VXORPS X5, X5, X5")
	g.p("VUCOMISS X5, X4")
	g.p("JEQ %s", zero)
	g.p("VDIVSS X14, X4, X6") // d = max/127
	g.p("VDIVSS X4, X14, X7") // 127/max
	g.p("VBROADCASTSS X7, Y7")
	g.p("VMULPS Y7, Y0, Y0")
	g.p("VMULPS Y7, Y1, Y1")
	g.p("VMULPS Y7, Y2, Y2")
	g.p("VMULPS Y7, Y3, Y3")
	g.p("VCVTPS2DQ Y0, Y0")
	g.p("VCVTPS2DQ Y1, Y1")
	g.p("VCVTPS2DQ Y2, Y2")
	g.p("VCVTPS2DQ Y3, Y3")
	g.p("CMPQ DX, $3")
	g.p("JEQ %s", m3)
	g.p("VPACKSSDW Y1, Y0, Y0")
	g.p("VPACKSSDW Y3, Y2, Y2")
	g.p("VPACKSSWB Y2, Y0, Y0")
	g.p("VPERMD Y0, Y13, Y0") // 32 int8 in order
	g.p("JMP %s", store)
	g.l(zero)
	g.p("VXORPS Y0, Y0, Y0")
	g.p("VXORPS X6, X6, X6")
	g.p("CMPQ DX, $3")
	g.p("JNE %s", store)
	g.p("VXORPS Y1, Y1, Y1")
	g.p("VXORPS Y2, Y2, Y2")
	g.p("VXORPS Y3, Y3, Y3")
	g.p("JMP %s", m3)
	g.l(store)
	g.p("VBROADCASTSS X6, Y6")
	g.p("CMPQ DX, $1")
	g.p("JEQ %s", m1)
	g.p("CMPQ DX, $2")
	g.p("JEQ %s", m2)
	g.p("VMOVDQU Y0, (DI)")
	g.p("VMOVUPS Y6, 32(DI)")
	g.p("ADDQ $64, DI")
	g.p("JMP %s", next)
	g.l(m1)
	// Even-indexed bytes to the low 16, odd ones to the high 16.
	g.p("VPSHUFB Y12, Y0, Y0")
	g.p("VPERMQ $0xD8, Y0, Y0")
	g.p("MOVQ R9, AX")
	g.p("ANDQ $1, AX")
	g.p("SHLQ $4, AX") // 16·h
	g.p("VMOVDQU X0, (DI)(AX*1)")
	g.p("VEXTRACTI128 $1, Y0, X1")
	g.p("VMOVDQU X1, 32(DI)(AX*1)")
	g.p("VMOVUPS X6, 64(DI)(AX*1)")
	g.p("TESTQ AX, AX")
	g.p("JZ %s", next)
	g.p("ADDQ $96, DI")
	g.p("JMP %s", next)
	g.l(m2)
	g.p("VPMOVSXBW X0, Y1")
	g.p("VEXTRACTI128 $1, Y0, X0")
	g.p("VPMOVSXBW X0, Y0")
	g.p("VMOVDQU Y1, (DI)")
	g.p("VMOVDQU Y0, 32(DI)")
	g.p("VMOVUPS Y6, 64(DI)")
	g.p("ADDQ $96, DI")
	g.p("JMP %s", next)
	g.l(m3)
	// v in Y0..Y3. Digit l is v's low byte; then v ← (v + 128) >> 8 (the
	// digits above, l taken out with its sign), m its low byte, and h the
	// low byte of (v + 128) >> 8 once more. Each digit: the low bytes
	// packed in order (unsigned saturation of values 0..255 keeps them),
	// even-indexed ones to the low 16, odd ones to the high 16.
	g.p("VBROADCASTSS X6, Y6")
	g.p("MOVQ R9, AX")
	g.p("ANDQ $1, AX")
	g.p("SHLQ $4, AX") // 16·h
	for d := 2; d >= 0; d-- {
		if d < 2 {
			for r := range 4 {
				g.p("VPADDD Y8, Y%d, Y%d", r, r)
				g.p("VPSRAD $8, Y%d, Y%d", r, r)
			}
		}
		g.p("VPAND Y9, Y0, Y4")
		g.p("VPAND Y9, Y1, Y5")
		g.p("VPAND Y9, Y2, Y10")
		g.p("VPAND Y9, Y3, Y11")
		g.p("VPACKUSDW Y5, Y4, Y4")
		g.p("VPACKUSDW Y11, Y10, Y10")
		g.p("VPACKUSWB Y10, Y4, Y4")
		g.p("VPERMD Y4, Y13, Y4")
		g.p("VPSHUFB Y12, Y4, Y4")
		g.p("VPERMQ $0xD8, Y4, Y4")
		g.p("VMOVDQU X4, %d(DI)(AX*1)", 64*d)
		g.p("VEXTRACTI128 $1, Y4, X5")
		g.p("VMOVDQU X5, %d(DI)(AX*1)", 64*d+32)
	}
	g.p("VMOVUPS X6, 192(DI)(AX*1)")
	g.p("TESTQ AX, AX")
	g.p("JZ %s", next)
	g.p("ADDQ $224, DI")
	g.l(next)
	g.p("ADDQ $128, SI")
	g.p("INCQ R9")
	g.p("CMPQ R9, CX")
	g.p("JLT %s", blk)
	g.l(done)
	g.p("VZEROUPPER")
	g.p("RET")
}

// prefetch is how far ahead of the weight cursor the matmul kernels
// prefetch (bytes; 0: no software prefetch). GEMMOE_GEN_PREFETCH overrides
// it for experiments.
var prefetch = func() int {
	if v := os.Getenv("GEMMOE_GEN_PREFETCH"); v != "" {
		n := 0
		fmt.Sscan(v, &n)
		return n
	}
	return 512
}()

func main() {
	g := &gen{}
	g.buf.WriteString("// Code generated by gen_amd64.go; DO NOT EDIT.\n\n//go:build !purego\n\n#include \"textflag.h\"\n")
	for _, is := range []isa{avx2, avx512} {
		g.isa = is
		for _, nx := range []int{1, 4} {
			for _, sdt := range []string{"f32", "bf16"} {
				g.quant(4, nx, sdt)
				g.quant(8, nx, sdt)
			}
			g.dense("bf16", nx)
			g.dense("f32", nx)
		}
		g.dot()
		g.axpy()
		g.softcap()
		g.geluMul()
	}
	for _, is := range []isa{avx2, avx512} {
		g.isa = is
		for _, nx := range []int{1, 4} {
			for _, sdt := range []string{"f32", "bf16"} {
				for _, bits := range []int{4, 8} {
					if bits == 4 && is.avx512 {
						g.quantF32Nib(nx, sdt)
					} else {
						g.quantF32(bits, nx, sdt)
					}
				}
			}
		}
	}
	// Two and three input rows (AVX-512, 4-bit): the rows an expert's
	// tokens leave after the passes of four in a prompt.
	g.isa = avx512
	for _, nx := range []int{2, 3} {
		for _, sdt := range []string{"f32", "bf16"} {
			g.quantF32Nib(nx, sdt)
		}
	}
	g.isa = avx512
	g.attn4()
	g.isa = avx2
	for _, vnni := range []bool{false, true} {
		for _, nx := range []int{1, 4} {
			for _, sdt := range []string{"f32", "bf16"} {
				g.int8q(4, nx, false, vnni, sdt, 1)
				g.int8q(8, nx, false, vnni, sdt, 1)
				g.int8q(4, nx, false, vnni, sdt, 3)
			}
			g.int8q(4, nx, true, vnni, "f32", 1)
			g.int8q(4, nx, true, vnni, "f32", 3)
		}
	}
	g.widenBF16F32()
	g.quant8()
	g.buf.WriteString("\n// The 4-bit values as float64, the table of the AVX-512 nibble lookups.\n")
	for i := range 16 {
		fmt.Fprintf(&g.buf, "DATA ·nibF64+%d(SB)/8, $%#x\n", 8*i, math.Float64bits(float64(i)))
	}
	g.buf.WriteString("GLOBL ·nibF64(SB), RODATA|NOPTR, $128\n")
	g.buf.WriteString("\n// The 4-bit values as f32: the AVX-512 4-bit f32-sum kernels look the low\n// nibbles up in it.\n")
	for i := range 16 {
		fmt.Fprintf(&g.buf, "DATA ·nibF32+%d(SB)/4, $%#x\n", 4*i, math.Float32bits(float32(i)))
	}
	g.buf.WriteString("GLOBL ·nibF32(SB), RODATA|NOPTR, $64\n")
	g.buf.WriteString("\n// The nibble masks of the AVX-512 4-bit f32-sum kernels: 0xF<<4n.\n")
	for n := range 8 {
		fmt.Fprintf(&g.buf, "DATA ·nibMask+%d(SB)/4, $%#x\n", 4*n, uint32(0xF)<<(4*n))
	}
	g.buf.WriteString("GLOBL ·nibMask(SB), RODATA|NOPTR, $32\n")
	g.buf.WriteString("\n// K-register masks of the first i of 16 lanes.\n")
	for i := range 16 {
		fmt.Fprintf(&g.buf, "DATA ·tailMask+%d(SB)/2, $%#x\n", 2*i, (1<<i)-1)
	}
	g.buf.WriteString("GLOBL ·tailMask(SB), RODATA|NOPTR, $32\n")
	g.buf.WriteString("\n// VPERMD index that puts packed bytes back in order.\n")
	for i, v := range []int{0, 4, 1, 5, 2, 6, 3, 7} {
		fmt.Fprintf(&g.buf, "DATA ·permPack+%d(SB)/4, $%d\n", 4*i, v)
	}
	g.buf.WriteString("GLOBL ·permPack(SB), RODATA|NOPTR, $32\n")
	g.buf.WriteString("\n// VPSHUFB mask: in each 128-bit lane, even bytes then odd bytes.\n")
	for i := range 32 {
		j := i % 16
		v := 2 * j
		if j >= 8 {
			v = 2*(j-8) + 1
		}
		fmt.Fprintf(&g.buf, "DATA ·shufEvenOdd+%d(SB)/1, $%d\n", i, v)
	}
	g.buf.WriteString("GLOBL ·shufEvenOdd(SB), RODATA|NOPTR, $32\n")
	g.buf.WriteString("\n// The coefficients of math.Tanh's rational branch (Cephes tanh.c).\n")
	for _, c := range []struct {
		name string
		v    float64
	}{
		{"P0", -9.64399179425052238628e-1}, {"P1", -9.92877231001918586564e1}, {"P2", -1.61468768441708447952e3},
		{"Q0", 1.12811678491632931402e2}, {"Q1", 2.23548839060100448583e3}, {"Q2", 4.84406305325125486048e3},
	} {
		fmt.Fprintf(&g.buf, "DATA ·tanh%s+0(SB)/8, $%#x\nGLOBL ·tanh%s(SB), RODATA|NOPTR, $8\n", c.name, math.Float64bits(c.v), c.name)
	}
	g.buf.WriteString("\n// geluMul's constants, each in eight float64 lanes.\n")
	consts := []struct {
		name string
		v    float64
	}{
		{"C0", math.Sqrt(2 / math.Pi)}, {"C1", 0.044715}, {"One", 1}, {"Two", 2}, {"Half", 0.5},
		{"Abs", math.Float64frombits(1<<63 - 1)}, {"Clamp", 708}, {"Shift", 1.5 * (1 << 52)},
		{"Log2e", math.Log2E}, {"Ln2Hi", 6.93147180369123816490e-01}, {"Ln2Lo", 1.90821492927058770002e-10},
	}
	fact := 1.0
	for k := 2; k <= 11; k++ {
		fact *= float64(k)
		consts = append(consts, struct {
			name string
			v    float64
		}{fmt.Sprintf("P%d", k), 1 / fact})
	}
	for _, c := range consts {
		for i := range 8 {
			fmt.Fprintf(&g.buf, "DATA ·geluK%s+%d(SB)/8, $%#x\n", c.name, 8*i, math.Float64bits(c.v))
		}
		fmt.Fprintf(&g.buf, "GLOBL ·geluK%s(SB), RODATA|NOPTR, $64\n", c.name)
	}
	g.buf.WriteString("\n// The lane-to-scale index of the 4-bit group-32 int8 kernels.\n")
	for i := range 8 {
		fmt.Fprintf(&g.buf, "DATA ·pairIdx+%d(SB)/4, $%d\n", 4*i, i/4)
	}
	g.buf.WriteString("GLOBL ·pairIdx(SB), RODATA|NOPTR, $32\n")
	if err := os.WriteFile("simd_amd64.s", g.buf.Bytes(), 0o644); err != nil {
		log.Fatal(err)
	}
}
