package metal

import (
	"fmt"
	"regexp"
	"strconv"
	"strings"
)

// This file reads the declarations of the MSL source that the host side
// depends on: kernel signatures (buffer indices, position attributes),
// argument structs and function constants. Tests check the Go dispatch code
// against them, and the emulator generates its argument-binding glue from
// them.

// kernelSig is the signature of a kernel function.
type kernelSig struct {
	Name   string
	Params []kernelParam
}

// kernelParam is one parameter of a kernel.
type kernelParam struct {
	Type   string // declared type, e.g. "device const uchar*" or "constant QMVParams&"
	Name   string
	Buffer int    // [[buffer(n)]] index, -1 for a position attribute
	Attr   string // the position attribute, "" for a buffer
}

// Writable reports whether a buffer parameter is a non-const device pointer.
func (p kernelParam) Writable() bool {
	return p.Buffer >= 0 && strings.HasPrefix(p.Type, "device ") && !strings.Contains(p.Type, "const")
}

// Buffers returns the number of buffer parameters (indices 0..n-1).
func (k kernelSig) Buffers() int {
	n := 0
	for _, p := range k.Params {
		if p.Buffer >= 0 {
			n++
		}
	}
	return n
}

// mslStruct is a struct declared in the source.
type mslStruct struct {
	Name   string
	Fields []mslField
}

// mslField is a field of an mslStruct.
type mslField struct {
	Type, Name string
}

// funcConst is a function constant declared in the source.
type funcConst struct {
	Type, Name string
	Index      int
}

var (
	reComment   = regexp.MustCompile(`(?s)//[^\n]*|/\*.*?\*/`)
	reKernel    = regexp.MustCompile(`\bkernel\s+void\s+(\w+)\s*\(`)
	reAttr      = regexp.MustCompile(`\[\[\s*(\w+)\s*(?:\(\s*(\d+)\s*\))?\s*\]\]`)
	reStruct    = regexp.MustCompile(`\bstruct\s+(\w+)\s*\{([^}]*)\}\s*;`)
	reField     = regexp.MustCompile(`^\s*([\w\s]+?)\s+(\w+)\s*$`)
	reFuncConst = regexp.MustCompile(`\bconstant\s+(\w+)\s+(\w+)\s*\[\[\s*function_constant\(\s*(\d+)\s*\)\s*\]\]\s*;`)
	reEnumVal   = regexp.MustCompile(`\b(DT_\w+)\s*=\s*(\d+)`)
)

// stripComments removes // and /* */ comments (the kernels keep no comment
// markers inside string literals).
func stripComments(src string) string { return reComment.ReplaceAllString(src, " ") }

// positionAttrs are the kernel parameter attributes the emulator supplies.
var positionAttrs = map[string]string{
	"thread_position_in_grid":        "tpig",
	"threadgroup_position_in_grid":   "tgpig",
	"thread_position_in_threadgroup": "tptg",
	"threads_per_threadgroup":        "ntg",
	"threadgroups_per_grid":          "tgpg",
	"threads_per_grid":               "tpg",
	"thread_index_in_threadgroup":    "tiitg",
	"thread_index_in_simdgroup":      "lane",
	"simdgroup_index_in_threadgroup": "sg",
	"simdgroups_per_threadgroup":     "nsg",
	"threads_per_simdgroup":          "",
}

// parseKernels returns the kernels of src in source order.
func parseKernels(src string) ([]kernelSig, error) {
	src = stripComments(src)
	var out []kernelSig
	seen := map[string]bool{}
	for _, m := range reKernel.FindAllStringSubmatchIndex(src, -1) {
		name := src[m[2]:m[3]]
		open := m[1] - 1
		end, err := matchParen(src, open)
		if err != nil {
			return nil, fmt.Errorf("kernel %s: %v", name, err)
		}
		if seen[name] {
			return nil, fmt.Errorf("kernel %s declared twice", name)
		}
		seen[name] = true
		k := kernelSig{Name: name}
		bufs := map[int]bool{}
		for _, ps := range splitTop(src[open+1 : end]) {
			p, err := parseParam(ps)
			if err != nil {
				return nil, fmt.Errorf("kernel %s: %v", name, err)
			}
			if p.Buffer >= 0 {
				if bufs[p.Buffer] {
					return nil, fmt.Errorf("kernel %s: buffer(%d) bound twice", name, p.Buffer)
				}
				bufs[p.Buffer] = true
			}
			k.Params = append(k.Params, p)
		}
		for i := range len(bufs) {
			if !bufs[i] {
				return nil, fmt.Errorf("kernel %s: buffer indices are not 0..%d", name, len(bufs)-1)
			}
		}
		out = append(out, k)
	}
	return out, nil
}

func parseParam(s string) (kernelParam, error) {
	s = strings.TrimSpace(s)
	m := reAttr.FindStringSubmatchIndex(s)
	if m == nil {
		return kernelParam{}, fmt.Errorf("parameter %q has no [[attribute]]", s)
	}
	attr := s[m[2]:m[3]]
	decl := strings.TrimSpace(s[:m[0]])
	i := strings.LastIndexFunc(decl, func(r rune) bool { return !isIdent(r) })
	if i < 0 || i == len(decl)-1 {
		return kernelParam{}, fmt.Errorf("parameter %q has no name", s)
	}
	p := kernelParam{Type: strings.Join(strings.Fields(decl[:i+1]), " "), Name: decl[i+1:], Buffer: -1}
	p.Type = strings.ReplaceAll(strings.ReplaceAll(p.Type, " *", "*"), " &", "&")
	if attr == "buffer" {
		if m[4] < 0 {
			return kernelParam{}, fmt.Errorf("parameter %q: buffer without an index", s)
		}
		p.Buffer, _ = strconv.Atoi(s[m[4]:m[5]])
		if !strings.HasSuffix(p.Type, "*") && !strings.HasSuffix(p.Type, "&") {
			return kernelParam{}, fmt.Errorf("parameter %q: a buffer must be a pointer or a reference", s)
		}
		return p, nil
	}
	if _, ok := positionAttrs[attr]; !ok {
		return kernelParam{}, fmt.Errorf("parameter %q: attribute %s is not supported", s, attr)
	}
	p.Attr = attr
	return p, nil
}

func isIdent(r rune) bool {
	return r == '_' || r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z' || r >= '0' && r <= '9'
}

// matchParen returns the index of the parenthesis closing the one at open.
func matchParen(s string, open int) (int, error) {
	depth := 0
	for i := open; i < len(s); i++ {
		switch s[i] {
		case '(':
			depth++
		case ')':
			depth--
			if depth == 0 {
				return i, nil
			}
		}
	}
	return 0, fmt.Errorf("unbalanced parentheses")
}

// splitTop splits s at commas outside parentheses and brackets.
func splitTop(s string) []string {
	var out []string
	depth, start := 0, 0
	for i := 0; i < len(s); i++ {
		switch s[i] {
		case '(', '[':
			depth++
		case ')', ']':
			depth--
		case ',':
			if depth == 0 {
				out = append(out, s[start:i])
				start = i + 1
			}
		}
	}
	if strings.TrimSpace(s[start:]) != "" {
		out = append(out, s[start:])
	}
	return out
}

// parseStructs returns the structs of src by name.
func parseStructs(src string) (map[string]mslStruct, error) {
	src = stripComments(src)
	out := map[string]mslStruct{}
	for _, m := range reStruct.FindAllStringSubmatch(src, -1) {
		s := mslStruct{Name: m[1]}
		for _, f := range strings.Split(m[2], ";") {
			if strings.TrimSpace(f) == "" {
				continue
			}
			fm := reField.FindStringSubmatch(f)
			if fm == nil {
				return nil, fmt.Errorf("struct %s: cannot read field %q", s.Name, strings.TrimSpace(f))
			}
			s.Fields = append(s.Fields, mslField{Type: strings.Join(strings.Fields(fm[1]), " "), Name: fm[2]})
		}
		out[s.Name] = s
	}
	return out, nil
}

// parseFunctionConstants returns the function constants of src.
func parseFunctionConstants(src string) []funcConst {
	src = stripComments(src)
	var out []funcConst
	for _, m := range reFuncConst.FindAllStringSubmatch(src, -1) {
		i, _ := strconv.Atoi(m[3])
		out = append(out, funcConst{Type: m[1], Name: m[2], Index: i})
	}
	return out
}

// parseDTypeCodes returns the DT_* enumerators of src.
func parseDTypeCodes(src string) map[string]int {
	out := map[string]int{}
	for _, m := range reEnumVal.FindAllStringSubmatch(stripComments(src), -1) {
		v, _ := strconv.Atoi(m[2])
		out[m[1]] = v
	}
	return out
}

// genGlue returns the C++ that binds the emulator's dispatch arguments to
// the kernels: per kernel a function that casts the bound buffers to the
// declared parameter types and passes the position attributes, the kernel
// table, and the setter of the function constants.
func genGlue(kernels []kernelSig, consts []funcConst) string {
	var b strings.Builder
	b.WriteString("// Generated by kernels/metal (genGlue). Do not edit.\n#include \"emu.h\"\n#include \"kernels.metal\"\n\nnamespace emu {\n\n")
	for _, k := range kernels {
		fmt.Fprintf(&b, "static void k_%s(const Pos& t, void** b) {\n    (void)t;\n    ::%s(", k.Name, k.Name)
		for i, p := range k.Params {
			if i > 0 {
				b.WriteString(",\n        ")
			}
			switch {
			case p.Buffer >= 0 && strings.HasSuffix(p.Type, "&"):
				fmt.Fprintf(&b, "*(%s*)b[%d]", strings.TrimSuffix(p.Type, "&"), p.Buffer)
			case p.Buffer >= 0:
				fmt.Fprintf(&b, "(%s)b[%d]", p.Type, p.Buffer)
			default:
				typ := strings.TrimPrefix(p.Type, "const ")
				field := positionAttrs[p.Attr]
				switch field {
				case "":
					fmt.Fprintf(&b, "(%s)32", typ)
				case "tiitg", "lane", "sg", "nsg":
					fmt.Fprintf(&b, "(%s)t.%s", typ, field)
				default:
					fmt.Fprintf(&b, "Attr<%s>::get(t.%s)", typ, field)
				}
			}
		}
		b.WriteString(");\n}\n\n")
	}
	b.WriteString("extern const KernelInfo kernels[] = {\n")
	for _, k := range kernels {
		fmt.Fprintf(&b, "    {%q, k_%s, %d},\n", k.Name, k.Name, k.Buffers())
	}
	fmt.Fprintf(&b, "};\nextern const int nkernels = %d;\n\n", len(kernels))
	b.WriteString("bool set_constant(int index, long value) {\n    switch (index) {\n")
	for _, c := range consts {
		fmt.Fprintf(&b, "    case %d:\n        ::%s = (%s)value;\n        return true;\n", c.Index, c.Name, c.Type)
	}
	b.WriteString("    }\n    (void)value;\n    return false;\n}\n\n} // namespace emu\n")
	return b.String()
}
