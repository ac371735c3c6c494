//go:build ignore

// gen_arm64.go writes simd_arm64.s, the arm64 NEON matmul and attention
// kernels. Run `go run gen_arm64.go` in kernels/cpu (`go generate` on an
// arm64 machine).
//
// The default quantized kernels, q{4,8}f[b]x{1,4}NEON, sum in f32 like the
// AVX2 ones (see quantF32 below: w = bias + q·scale with one FMLA, then
// eight accumulators of four lanes per input row). The others, the float64
// kernels (WithFloat64Sums, GEMMOE_CPU_F64=1) and the dense ones, unlike the
// amd64 kernels, which sum in their own lane order, do the generic Go
// kernels' float64 arithmetic operation for operation, so their results are
// bit-identical to the generic kernels' on arm64:
//
//   - qdot4 keeps four accumulators s0..s3; per 16 values (two words) it adds
//     (q[j]·x[j] + q[j+8]·x[j+8]) then (q[j+4]·x[j+4] + q[j+12]·x[j+12]) to
//     s[j]. The products are exact in float64, so a fused multiply-add of one
//     onto the other rounds once, like the generic sum. With the input
//     permuted per block of 16 (the even-indexed values, then the odd ones:
//     permute4 with lanes 16), the low nibbles feed (s0, s2) and the high ones
//     (s1, s3). The group's sum is (s0+s1) + (s2+s3).
//   - qdot8 likewise per 8 values: s[j] += q[j]·x[j] + q[j+4]·x[j+4], the
//     accumulators (s0, s1) and (s2, s3).
//   - The combination per group is what the Go compiler makes of
//     combineF32 and combineBF16 on arm64 (FMADDD fusion): f32 scales
//     t = fma(bias, Σx, scale·Σqx), bf16 scales t = fma(scale, Σqx, bias·Σx),
//     then s += t, group after group.
//   - dotRowF32 and dotRowBF16: s[j] += w[i+j]·x[i+j] per 4 values, the tail
//     into s0, the result (s0+s1) + (s2+s3).
//   - axpy: y[i] = fma(a, x[i], y[i]), as the compiler fuses the generic loop.
//
// Go's assembler lacks the vector float instructions other than VFMLA
// (FADD, FADDP, FMUL, UCVTF, FCVTL); they are emitted as WORD encodings (see
// the helpers below; the encodings were checked with llvm-objdump).
//
// The four-input-row kernels (prefill) unpack a block of weights once and
// run each input row through the one-row arithmetic.
//
// Register use of the matmul kernels: R0 kargs, R1 weight row, R2 rows left,
// R3 scales cursor, R4 bias offset, R6 weight cursor, R7, R8, R13, R14 the
// x cursors of input rows 0..3, R15 the byte offset of the current group sum
// in an x row, R10 groups left (dense: tail count), R11 blocks left, R12
// temporary, R19..R22 the row totals (dense: s1). Quantized: V0..V3
// unpacking, V4..V11 a block's weights as float64 pairs, V12, V13 products,
// V15 the nibble mask, V16..V23 a block of x, V24+2t, V25+2t the
// accumulators of input row t. Dense: V2, V3 the weights, V4, V5 x, V16+2t,
// V17+2t the accumulators, V31 zero. The f32-sum kernels: see quantF32.
package main

import (
	"bytes"
	"fmt"
	"log"
	"os"
)

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

type gen struct {
	buf   bytes.Buffer
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

func (g *gen) word(w uint32, comment string, args ...any) {
	g.p("WORD $0x%08x // %s", w, fmt.Sprintf(comment, args...))
}

// fadd2d: Vd.2D = Vn.2D + Vm.2D.
func (g *gen) fadd2d(d, n, m int) {
	g.word(0x4E60D400|uint32(m)<<16|uint32(n)<<5|uint32(d), "FADD V%d.2D, V%d.2D, V%d.2D", d, n, m)
}

// fmul2d: Vd.2D = Vn.2D · Vm.2D.
func (g *gen) fmul2d(d, n, m int) {
	g.word(0x6E60DC00|uint32(m)<<16|uint32(n)<<5|uint32(d), "FMUL V%d.2D, V%d.2D, V%d.2D", d, n, m)
}

// ucvtf4s: Vd.4S = float32(Vn.4S unsigned).
func (g *gen) ucvtf4s(d, n int) {
	g.word(0x6E21D800|uint32(n)<<5|uint32(d), "UCVTF V%d.4S, V%d.4S", d, n)
}

// fcvtl: Vd.2D = float64(Vn.2S) (the lower two lanes).
func (g *gen) fcvtl(d, n int) {
	g.word(0x0E617800|uint32(n)<<5|uint32(d), "FCVTL V%d.2D, V%d.2S", d, n)
}

// fcvtl2: Vd.2D = float64 of the upper two f32 lanes of Vn.
func (g *gen) fcvtl2(d, n int) {
	g.word(0x4E617800|uint32(n)<<5|uint32(d), "FCVTL2 V%d.2D, V%d.4S", d, n)
}

// faddp: Dd = Vn.D[0] + Vn.D[1].
func (g *gen) faddp(d, n int) {
	g.word(0x7E70D800|uint32(n)<<5|uint32(d), "FADDP D%d, V%d.2D", d, n)
}

func (g *gen) header(name string) {
	fmt.Fprintf(&g.buf, "\n// func %s(a *kargs)\nTEXT ·%s(SB), NOSPLIT, $0-8\n", name, name)
	g.p("MOVD a+0(FP), R0")
	g.p("MOVD %d(R0), R1", offW)
	g.p("MOVD %d(R0), R2", offRows)
}

// widenU8 widens the 8 bytes in the lower half of Vsrc (clobbered) to four
// float64 pairs in V[d], V[d+1], V[d+2], V[d+3] (values 0-1, 2-3, 4-5, 6-7),
// using Vtmp.
func (g *gen) widenU8(src, tmp, d int) {
	g.p("VUXTL V%d.B8, V%d.H8", src, src)
	g.p("VUXTL V%d.H4, V%d.S4", src, tmp)
	g.p("VUXTL2 V%d.H8, V%d.S4", src, src)
	g.ucvtf4s(tmp, tmp)
	g.ucvtf4s(src, src)
	g.fcvtl(d, tmp)
	g.fcvtl2(d+1, tmp)
	g.fcvtl(d+2, src)
	g.fcvtl2(d+3, src)
}

// xc are the x cursors of input rows 0..3; tot the registers holding their
// row totals (float64 bits) while the vector registers are busy.
var (
	xc  = []string{"R7", "R8", "R13", "R14"}
	tot = []string{"R19", "R20", "R21", "R22"}
)

// rowStart points the x cursors of nx input rows at their rows.
func (g *gen) rowStart(nx int) {
	g.p("MOVD R1, R6")
	for t := range nx {
		g.p("MOVD %d(R0), %s", offX+8*t, xc[t])
	}
}

// quant writes a quantized kernel (bits 4 or 8; scales and biases f32 or
// bf16) for a.rows weight rows and nx input rows: the weights of a block are
// unpacked once and multiplied with each input row in turn, every row with
// the same operations (batch invariance).
func (g *gen) quant(bits int, sdt string, nx int) {
	name := fmt.Sprintf("q%d%sx%dNEON", bits, sfx(sdt), nx)
	g.header(name)
	g.p("MOVD %d(R0), R3", offSB)
	g.p("MOVD %d(R0), R4", offBoff)
	if bits == 4 {
		g.p("VMOVI $15, V15.B16")
	}
	row, grp, blk := g.newLabel("row"), g.newLabel("grp"), g.newLabel("blk")
	g.l(row)
	g.rowStart(nx)
	g.p("MOVD %d(R0), R15", offK)
	g.p("LSL $3, R15") // byte offset of the group sums in an x row
	for t := range nx {
		g.p("MOVD ZR, %s", tot[t])
	}
	g.p("MOVD %d(R0), R10", offGroups)
	g.l(grp)
	g.p("MOVD %d(R0), R11", offBPG)
	for t := range nx {
		g.p("VEOR V%d.B16, V%d.B16, V%d.B16", 24+2*t, 24+2*t, 24+2*t)
		g.p("VEOR V%d.B16, V%d.B16, V%d.B16", 25+2*t, 25+2*t, 25+2*t)
	}
	g.l(blk)
	if bits == 4 {
		// 16 values: 8 bytes; the input holds the block's even-indexed
		// values, then its odd ones.
		g.p("VLD1.P 8(R6), [V0.B8]")
		g.p("VAND V15.B16, V0.B16, V1.B16")
		g.p("VUSHR $4, V0.B16, V2.B16")
		g.widenU8(1, 3, 4) // q0,q2 | q4,q6 | q8,q10 | q12,q14 in V4..V7
		g.widenU8(2, 3, 8) // q1,q3 | ... in V8..V11
		for t := range nx {
			e, o := 24+2*t, 25+2*t
			g.p("VLD1.P 64(%s), [V16.D2, V17.D2, V18.D2, V19.D2]", xc[t])
			g.p("VLD1.P 64(%s), [V20.D2, V21.D2, V22.D2, V23.D2]", xc[t])
			// (s0, s2) += (q0x0 + q8x8, q2x2 + q10x10), then the +4 terms.
			g.fmul2d(12, 6, 18)
			g.p("VFMLA V4.D2, V16.D2, V12.D2")
			g.fadd2d(e, e, 12)
			g.fmul2d(13, 7, 19)
			g.p("VFMLA V5.D2, V17.D2, V13.D2")
			g.fadd2d(e, e, 13)
			// (s1, s3) likewise from the odd values.
			g.fmul2d(12, 10, 22)
			g.p("VFMLA V8.D2, V20.D2, V12.D2")
			g.fadd2d(o, o, 12)
			g.fmul2d(13, 11, 23)
			g.p("VFMLA V9.D2, V21.D2, V13.D2")
			g.fadd2d(o, o, 13)
		}
	} else {
		// 16 values, 16 bytes, two generic steps of 8.
		g.p("VLD1.P 16(R6), [V0.B16]")
		g.p("VUXTL2 V0.B16, V1.H8")
		g.widenU8(0, 3, 4) // q0..q7 in V4..V7
		g.p("VUXTL V1.H4, V3.S4")
		g.p("VUXTL2 V1.H8, V1.S4")
		g.ucvtf4s(3, 3)
		g.ucvtf4s(1, 1)
		g.fcvtl(8, 3)
		g.fcvtl2(9, 3)
		g.fcvtl(10, 1)
		g.fcvtl2(11, 1) // q8..q15 in V8..V11
		for t := range nx {
			a0, a1 := 24+2*t, 25+2*t
			g.p("VLD1.P 64(%s), [V16.D2, V17.D2, V18.D2, V19.D2]", xc[t])
			g.p("VLD1.P 64(%s), [V20.D2, V21.D2, V22.D2, V23.D2]", xc[t])
			for h := range 2 {
				q, x := 4+4*h, 16+4*h
				// (s0, s1) += (q0x0 + q4x4, q1x1 + q5x5); (s2, s3) likewise.
				g.fmul2d(12, q+2, x+2)
				g.p("VFMLA V%d.D2, V%d.D2, V12.D2", q, x)
				g.fadd2d(a0, a0, 12)
				g.fmul2d(13, q+3, x+3)
				g.p("VFMLA V%d.D2, V%d.D2, V13.D2", q+1, x+1)
				g.fadd2d(a1, a1, 13)
			}
		}
	}
	g.p("SUB $1, R11")
	g.p("CBNZ R11, %s", blk)
	// Scale F12 and bias F13 in float64.
	if sdt == "bf16" {
		g.p("MOVHU (R3), R12")
		g.p("LSLW $16, R12, R12")
		g.p("FMOVS R12, F12")
		g.p("MOVHU (R3)(R4), R12")
		g.p("LSLW $16, R12, R12")
		g.p("FMOVS R12, F13")
	} else {
		g.p("FMOVS (R3), F12")
		g.p("FMOVS (R3)(R4), F13")
	}
	g.p("FCVTSD F12, F12")
	g.p("FCVTSD F13, F13")
	for t := range nx {
		a0, a1 := 24+2*t, 25+2*t
		// The group's Σq·x = (s0+s1) + (s2+s3) in F0.
		if bits == 4 {
			g.fadd2d(0, a0, a1) // (s0+s1, s2+s3)
			g.faddp(0, 0)
		} else {
			g.faddp(0, a0)
			g.faddp(1, a1)
			g.p("FADDD F1, F0, F0")
		}
		g.p("MOVD %d(R0), R12", offX+8*t)
		g.p("FMOVD (R12)(R15), F1") // Σx
		if sdt == "bf16" {
			g.p("FMULD F1, F13, F2")      // bias·Σx
			g.p("FMADDD F12, F2, F0, F2") // + scale·Σqx, fused
		} else {
			g.p("FMULD F12, F0, F2")      // scale·Σqx
			g.p("FMADDD F1, F2, F13, F2") // + bias·Σx, fused
		}
		g.p("FMOVD %s, F3", tot[t])
		g.p("FADDD F2, F3, F3")
		g.p("FMOVD F3, %s", tot[t])
	}
	g.p("ADD $8, R15")
	g.p("ADD $%d, R3", esize(sdt))
	g.p("SUB $1, R10")
	g.p("CBNZ R10, %s", grp)
	for t := range nx {
		g.p("FMOVD %s, F0", tot[t])
		g.store(t, 0)
	}
	g.next(row)
	g.p("RET")
}

// fadd4s: Vd.4S = Vn.4S + Vm.4S.
func (g *gen) fadd4s(d, n, m int) {
	g.word(0x4E20D400|uint32(m)<<16|uint32(n)<<5|uint32(d), "FADD V%d.4S, V%d.4S, V%d.4S", d, n, m)
}

// faddp4s: Vd.4S = (Vn[0]+Vn[1], Vn[2]+Vn[3], Vm[0]+Vm[1], Vm[2]+Vm[3]).
func (g *gen) faddp4s(d, n, m int) {
	g.word(0x6E20D400|uint32(m)<<16|uint32(n)<<5|uint32(d), "FADDP V%d.4S, V%d.4S, V%d.4S", d, n, m)
}

// faddps: Sd = Vn.S[0] + Vn.S[1].
func (g *gen) faddps(d, n int) {
	g.word(0x7E30D800|uint32(n)<<5|uint32(d), "FADDP S%d, V%d.2S", d, n)
}

// widen16 widens the 16 bytes of Vsrc (clobbered) to four vectors of four
// uint32 using Vt1..Vt3 and returns them in value order.
func (g *gen) widen16(src, t1, t2, t3 int) [4]int {
	g.p("VUXTL V%d.B8, V%d.H8", src, t1)
	g.p("VUXTL2 V%d.B16, V%d.H8", src, src)
	g.p("VUXTL V%d.H4, V%d.S4", t1, t2)
	g.p("VUXTL2 V%d.H8, V%d.S4", t1, t1)
	g.p("VUXTL V%d.H4, V%d.S4", src, t3)
	g.p("VUXTL2 V%d.H8, V%d.S4", src, src)
	return [4]int{t2, t1, t3, src}
}

// quantF32 writes a quantized kernel that sums in f32 (groups of a multiple
// of 32 values, f32 or bf16 scales and biases) for nx input rows, the NEON
// form of quantF32 in gen_amd64.go. A step takes 32 values (a.bpg steps a
// group): 16 bytes of 4-bit weights (the low nibbles are the even-indexed
// values, the high ones the odd: the input row is permuted per block of 32,
// permute4 with block 2·lanes) or 32 bytes of 8-bit ones, widened to eight
// vectors of four uint32 (UXTL, UXTL2), converted to f32 (UCVTF) and
// dequantized with one fused multiply-add each, w = bias + q·scale (a copy
// of the bias, then FMLA: one rounding, the value an f32 dequantization
// gives). Then vector c of the step joins accumulator c of each input row,
// acc_c += w_c·x_c (FMLA): eight accumulators of four lanes, 32 partial
// sums a row, as many as the AVX2 kernels have. At the row's end the
// accumulators are added pairwise, (0+1) + (2+3) and (4+5) + (6+7), then
// those two, and the four lanes as (l0+l1) + (l2+l3) (FADDP twice).
//
// Registers: V0..V7 the step's weights, V8 the scale, V9 the bias, V10 the
// nibble mask, V11..V15 unpacking and then the input, V16..V23 and
// V24..V31 the accumulators of the (one or two) input rows of a pass. Eight
// accumulators for each of four rows would take every register, so the
// four-row kernel walks each weight row twice, input rows 0 and 1, then 2
// and 3, as the AVX2 kernel does; every input row gets the same operations
// in the same order, so the one-row and four-row kernels agree bit for bit.
func (g *gen) quantF32(bits int, sdt string, nx int) {
	name := fmt.Sprintf("q%df%sx%dNEON", bits, sfx(sdt), nx)
	g.header(name)
	g.p("MOVD %d(R0), R3", offSB)
	g.p("MOVD %d(R0), R4", offBoff)
	if bits == 4 {
		g.p("VMOVI $15, V10.B16")
	}
	bcast := func(addr string, d int) {
		if sdt == "bf16" {
			g.p("VLD1R %s, [V%d.H8]", addr, d)
			g.p("VSHL $16, V%d.S4, V%d.S4", d, d) // bf16 << 16 in each lane
		} else {
			g.p("VLD1R %s, [V%d.S4]", addr, d)
		}
	}
	acc := func(t, c int) int { return 16 + 8*t + c }
	perPass := min(nx, 2)
	row := g.newLabel("row")
	g.l(row)
	for pass := 0; pass*perPass < nx; pass++ {
		grp, step := g.newLabel("grp"), g.newLabel("step")
		if pass > 0 { // back to this row's scales
			g.p("MOVD %d(R0), R12", offGroups)
			sh := 2 // log2 of the scales' byte size
			if sdt == "bf16" {
				sh = 1
			}
			g.p("SUB R12<<%d, R3", sh)
		}
		g.p("MOVD R1, R6")
		for t := range perPass {
			g.p("MOVD %d(R0), %s", offX+8*(pass*perPass+t), xc[t])
			for c := range 8 {
				g.p("VEOR V%d.B16, V%d.B16, V%d.B16", acc(t, c), acc(t, c), acc(t, c))
			}
		}
		g.p("MOVD %d(R0), R10", offGroups)
		g.l(grp)
		bcast("(R3)", 8)
		g.p("ADD R3, R4, R12")
		bcast("(R12)", 9)
		g.p("MOVD %d(R0), R11", offBPG)
		g.l(step)
		// The step's q as f32 in four registers at a time, then w.
		dequant := func(q [4]int, w0 int) {
			for c, r := range q {
				g.ucvtf4s(r, r)
				g.p("VORR V9.B16, V9.B16, V%d.B16", w0+c)
				g.p("VFMLA V8.S4, V%d.S4, V%d.S4", r, w0+c) // w = bias + q·scale
			}
		}
		if bits == 4 {
			g.p("VLD1.P 16(R6), [V11.B16]")
			g.p("VAND V10.B16, V11.B16, V12.B16") // even-indexed values
			g.p("VUSHR $4, V11.B16, V11.B16")     // odd-indexed values
			dequant(g.widen16(12, 13, 14, 15), 0)
			dequant(g.widen16(11, 13, 14, 15), 4)
		} else {
			g.p("VLD1.P 32(R6), [V11.B16, V12.B16]")
			dequant(g.widen16(11, 13, 14, 15), 0)
			dequant(g.widen16(12, 11, 13, 14), 4)
		}
		for t := range perPass {
			for h := range 2 {
				g.p("VLD1.P 64(%s), [V12.S4, V13.S4, V14.S4, V15.S4]", xc[t])
				for c := range 4 {
					g.p("VFMLA V%d.S4, V%d.S4, V%d.S4", 4*h+c, 12+c, acc(t, 4*h+c)) // acc += w·x
				}
			}
		}
		g.p("SUB $1, R11")
		g.p("CBNZ R11, %s", step)
		g.p("ADD $%d, R3", esize(sdt))
		g.p("SUB $1, R10")
		g.p("CBNZ R10, %s", grp)
		for t := range perPass {
			a := func(c int) int { return acc(t, c) }
			for c := 0; c < 8; c += 2 {
				g.fadd4s(a(c), a(c), a(c+1))
			}
			g.fadd4s(a(0), a(0), a(2))
			g.fadd4s(a(4), a(4), a(6))
			g.fadd4s(a(0), a(0), a(4))
			g.faddp4s(a(0), a(0), a(0)) // (l0+l1, l2+l3, ...)
			g.faddps(a(0), a(0))
			g.storeS(pass*perPass+t, a(0))
		}
	}
	g.next(row)
	g.p("RET")
}

// storeS writes the f32 in F(reg) to a.y[t][row], the row index being
// a.rows - R2. It uses R11, R12.
func (g *gen) storeS(t, reg int) {
	g.p("MOVD %d(R0), R12", offRows)
	g.p("SUB R2, R12, R12")
	g.p("MOVD %d(R0), R11", offY+8*t)
	g.p("FMOVS F%d, (R11)(R12<<2)", reg)
}

// store writes F(reg) rounded to f32 to a.y[t][row], the row index being
// a.rows - R2. (The kernels never write derived pointers to memory: the
// garbage collector may scan kargs while they run.) It uses R11, R12.
func (g *gen) store(t, reg int) {
	g.p("FCVTDS F%d, F%d", reg, reg)
	g.p("MOVD %d(R0), R12", offRows)
	g.p("SUB R2, R12, R12")
	g.p("MOVD %d(R0), R11", offY+8*t)
	g.p("FMOVS F%d, (R11)(R12<<2)", reg)
}

// next moves to the next weight row, looping to row while rows are left.
func (g *gen) next(row string) {
	g.p("MOVD %d(R0), R12", offStride)
	g.p("ADD R12, R1")
	g.p("SUB $1, R2")
	g.p("CBNZ R2, %s", row)
}

// dense writes a dense kernel (bf16 or f32 weights) for nx input rows.
func (g *gen) dense(wdt string, nx int) {
	name := fmt.Sprintf("%sx%dNEON", wdt, nx)
	g.header(name)
	if wdt == "bf16" {
		g.p("VEOR V31.B16, V31.B16, V31.B16")
	}
	row, blk, tail, tl, done := g.newLabel("row"), g.newLabel("blk"), g.newLabel("tail"), g.newLabel("tl"), g.newLabel("done")
	g.l(row)
	g.rowStart(nx)
	for t := range nx {
		g.p("VEOR V%d.B16, V%d.B16, V%d.B16", 16+2*t, 16+2*t, 16+2*t)
		g.p("VEOR V%d.B16, V%d.B16, V%d.B16", 17+2*t, 17+2*t, 17+2*t)
	}
	g.p("MOVD %d(R0), R10", offK)
	g.p("LSR $2, R10, R11")
	g.p("AND $3, R10")
	g.p("CBZ R11, %s", tail)
	g.l(blk)
	if wdt == "bf16" {
		g.p("VLD1.P 8(R6), [V0.H4]")
		g.p("VZIP1 V0.H8, V31.H8, V0.H8") // bf16 << 16
	} else {
		g.p("VLD1.P 16(R6), [V0.S4]")
	}
	g.fcvtl(2, 0)
	g.fcvtl2(3, 0)
	for t := range nx {
		// (s0, s1) += w·x, (s2, s3) += w·x.
		g.p("VLD1.P 32(%s), [V4.D2, V5.D2]", xc[t])
		g.p("VFMLA V2.D2, V4.D2, V%d.D2", 16+2*t)
		g.p("VFMLA V3.D2, V5.D2, V%d.D2", 17+2*t)
	}
	g.p("SUB $1, R11")
	g.p("CBNZ R11, %s", blk)
	g.l(tail)
	for t := range nx {
		g.p("VMOV V%d.D[1], %s", 16+2*t, tot[t]) // s1
	}
	g.p("CBZ R10, %s", done)
	g.l(tl)
	if wdt == "bf16" {
		g.p("MOVHU.P 2(R6), R12")
		g.p("LSLW $16, R12, R12")
		g.p("FMOVS R12, F0")
	} else {
		g.p("FMOVS.P 4(R6), F0")
	}
	g.p("FCVTSD F0, F0")
	for t := range nx {
		g.p("FMOVD.P 8(%s), F1", xc[t])
		g.p("FMADDD F0, F%d, F1, F%d", 16+2*t, 16+2*t) // s0 += w·x
	}
	g.p("SUB $1, R10")
	g.p("CBNZ R10, %s", tl)
	g.l(done)
	for t := range nx {
		g.p("FMOVD %s, F1", tot[t])
		g.p("FADDD F1, F%d, F0", 16+2*t) // s0 + s1
		g.faddp(1, 17+2*t)               // s2 + s3
		g.p("FADDD F1, F0, F0")
		g.store(t, 0)
	}
	g.next(row)
	g.p("RET")
}

// axpy writes axpyF64NEON(y *float64, x *float32, a float64, n int):
// y[i] = fma(a, x[i], y[i]).
func (g *gen) axpy() {
	name := "axpyF64NEON"
	fmt.Fprintf(&g.buf, "\n// func %s(y *float64, x *float32, a float64, n int)\nTEXT ·%s(SB), NOSPLIT, $0-32\n", name, name)
	g.p("MOVD y+0(FP), R0")
	g.p("MOVD x+8(FP), R1")
	g.p("FMOVD a+16(FP), F0")
	g.p("MOVD n+24(FP), R2")
	g.p("VDUP V0.D[0], V1.D2")
	loop, tail, tl, done := g.newLabel("ax"), g.newLabel("axtail"), g.newLabel("axtl"), g.newLabel("axdone")
	g.p("LSR $2, R2, R3")
	g.p("AND $3, R2")
	g.p("CBZ R3, %s", tail)
	g.l(loop)
	g.p("VLD1.P 16(R1), [V2.S4]")
	g.fcvtl(3, 2)
	g.fcvtl2(4, 2)
	g.p("VLD1 (R0), [V5.D2, V6.D2]")
	g.p("VFMLA V3.D2, V1.D2, V5.D2")
	g.p("VFMLA V4.D2, V1.D2, V6.D2")
	g.p("VST1.P [V5.D2, V6.D2], 32(R0)")
	g.p("SUB $1, R3")
	g.p("CBNZ R3, %s", loop)
	g.l(tail)
	g.p("CBZ R2, %s", done)
	g.l(tl)
	g.p("FMOVS.P 4(R1), F2")
	g.p("FCVTSD F2, F2")
	g.p("FMOVD (R0), F3")
	g.p("FMADDD F2, F3, F0, F3")
	g.p("FMOVD.P F3, 8(R0)")
	g.p("SUB $1, R2")
	g.p("CBNZ R2, %s", tl)
	g.l(done)
	g.p("RET")
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

func main() {
	g := &gen{}
	g.buf.WriteString("// Code generated by gen_arm64.go; DO NOT EDIT.\n\n//go:build !purego\n\n#include \"textflag.h\"\n")
	for _, nx := range []int{1, 4} {
		for _, sdt := range []string{"f32", "bf16"} {
			g.quant(4, sdt, nx)
			g.quant(8, sdt, nx)
		}
		g.dense("bf16", nx)
		g.dense("f32", nx)
	}
	g.axpy()
	for _, nx := range []int{1, 4} {
		for _, sdt := range []string{"f32", "bf16"} {
			g.quantF32(4, sdt, nx)
			g.quantF32(8, sdt, nx)
		}
	}
	if err := os.WriteFile("simd_arm64.s", g.buf.Bytes(), 0o644); err != nil {
		log.Fatal(err)
	}
}
