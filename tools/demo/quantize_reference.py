#!/usr/bin/env python3
"""Reference MLX affine quantizer (numpy only): Hugging Face Gemma 4 checkpoint -> MLX checkpoint.

An outside check for the project's Go converter (cmd/convert): it follows MLX's own algorithm
(the affine_quantize kernels of mlx/backend/{metal,cuda}, the same rules as the fallback in
mlx/ops.cpp), computed in float32 per group of `group_size` consecutive input elements:

    w_max = max(0, max(w))            # the kernels start the running max at 0
    w_min = min(w)
    scale = max((w_max - w_min) / (2^bits - 1), 1e-7)
    side  = |w_min| > |w_max|         # which end is kept exactly
    scale = side ? scale : -scale     # scales can be negative
    edge  = side ? w_min : w_max
    q0    = round(edge / scale)       # round = half away from zero (Metal/CUDA round)
    scale = q0 != 0 ? edge / q0 : scale   (so that 0.0 is exactly representable)
    bias  = q0 != 0 ? edge : 0
    q     = clip(round((w - bias) / scale), 0, 2^bits - 1)   # with the float32 scale/bias
    stored: scale and bias cast to bf16; dequantized w = scale_bf16 * q + bias_bf16 (float32)

Packing: each row [.., in] is one little-endian bit stream: element i occupies bits
[i*bits, (i+1)*bits), stream bit n is bit n%32 of uint32 word n/32 (3/5/6-bit values straddle
words). Weight [..., out, in] -> .weight uint32 [..., out, in*bits/32], .scales/.biases bf16
[..., out, in/group].

Recipe (mlx-lm's Gemma 4): every matrix (attention and MLP projections, the experts, the
embedding, which is also the tied LM head) at --bits; router.proj at --router-bits (8); 1-D
tensors (norms, router.scale, router.per_expert_scale, layer_scalar) stay bf16. Names are
MLX's: language_model.model.layers.N..., experts split from gate_up_proj [E, 2I, H] (gate rows
first) into experts.switch_glu.{gate,up}_proj and down_proj -> experts.switch_glu.down_proj.
The written config.json is Hub Gemma 4 style (model_type gemma4, text_config) with
"quantization" and "quantization_config".

Usage:
  quantize_reference.py SRC DST [--bits 4] [--group-size 64] [--router-bits 8]
  quantize_reference.py --check ../shared/fixtures    # must reproduce tiny-moe-4bit / -8bit bit for bit
"""
import argparse
import json
import os
import struct
import sys

import numpy as np

# ---------------------------------------------------------------- safetensors (numpy, bf16-aware)

_DT = {"F32": ("<f4", 4), "F16": ("<f2", 2), "BF16": ("<u2", 2), "U32": ("<u4", 4), "I32": ("<i4", 4),
       "I64": ("<i8", 8), "U8": ("u1", 1)}


def bf16_to_f32(u16):
    return (u16.astype(np.uint32) << 16).view(np.float32)


def f32_to_bf16(x):
    """float32 -> bf16 bits, round to nearest even (NaN kept quiet), like MLX/PyTorch."""
    x = np.ascontiguousarray(x, dtype=np.float32)
    u = x.view(np.uint32).astype(np.uint64)
    r = ((u + 0x7FFF + ((u >> 16) & 1)) >> 16).astype(np.uint16)
    nan = np.isnan(x)
    if nan.any():
        r[nan] = 0x7FC0
    return r


def read_safetensors(path):
    """name -> (dtype string, numpy array). BF16 comes back as raw uint16 bits."""
    with open(path, "rb") as f:
        n = struct.unpack("<Q", f.read(8))[0]
        header = json.loads(f.read(n))
        data = f.read()
    out = {}
    for k, v in header.items():
        if k == "__metadata__":
            continue
        np_dt, size = _DT[v["dtype"]]
        a, b = v["data_offsets"]
        out[k] = (v["dtype"], np.frombuffer(data[a:b], dtype=np_dt).reshape(v["shape"]))
    return out, header.get("__metadata__", {})


def write_safetensors(path, tensors, metadata=None):
    """tensors: name -> (dtype string, numpy array of the matching storage type). Sorted names."""
    header, blobs, off = {}, [], 0
    if metadata:
        header["__metadata__"] = metadata
    for k in sorted(tensors):
        dt, arr = tensors[k]
        b = np.ascontiguousarray(arr).astype(_DT[dt][0], copy=False).tobytes()
        header[k] = {"dtype": dt, "shape": list(arr.shape), "data_offsets": [off, off + len(b)]}
        blobs.append(b)
        off += len(b)
    h = json.dumps(header, separators=(",", ":")).encode()
    h += b" " * ((8 - len(h) % 8) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(h)))
        f.write(h)
        for b in blobs:
            f.write(b)


def load_checkpoint(src):
    """All tensors of a HF checkpoint directory (single file or shards) as float32."""
    idx = os.path.join(src, "model.safetensors.index.json")
    files = sorted(set(json.load(open(idx))["weight_map"].values())) if os.path.exists(idx) else ["model.safetensors"]
    out = {}
    for fn in files:
        t, _ = read_safetensors(os.path.join(src, fn))
        for k, (dt, a) in t.items():
            out[k] = bf16_to_f32(a) if dt == "BF16" else a.astype(np.float32)
    return out


# ---------------------------------------------------------------- MLX affine quantization

def _round_half_away(x):
    return np.sign(x) * np.floor(np.abs(x) + np.float32(0.5))


VARIANTS = ("fixture", "mlx-kernel", "mlx-fallback")


def quantize(w, bits, group_size, variant="fixture"):
    """w float32 [..., in] -> (packed uint32 [..., in*bits/32], scales bf16 bits, biases bf16 bits).

    The three variants share the scale/edge/bias rules and differ only in details that move a
    few q values by one step (ties):
      fixture      q from the bf16-rounded scale/bias, round half to even; reproduces
                   ../shared/fixtures/tiny-moe-{4bit,8bit,mixed} bit for bit (the default);
      mlx-kernel   the Metal/CUDA kernels: running max starts at 0, q from the float32
                   scale/bias, round half away from zero;
      mlx-fallback mlx/ops.cpp's CPU fallback: no 0 in the max, q from the float32 scale/bias,
                   round half to even.
    """
    if variant not in VARIANTS:
        raise ValueError(f"variant {variant!r} not in {VARIANTS}")
    w = np.asarray(w, dtype=np.float32)
    if w.shape[-1] % group_size or (w.shape[-1] * bits) % 32:
        raise ValueError(f"last dim {w.shape[-1]} not divisible by group {group_size} / packing of {bits} bits")
    rnd = _round_half_away if variant == "mlx-kernel" else np.rint
    n_bins = np.float32((1 << bits) - 1)
    g = w.reshape(-1, group_size)
    w_max = g.max(axis=1)
    if variant == "mlx-kernel":
        w_max = np.maximum(w_max, np.float32(0))
    w_min = g.min(axis=1)
    scale = np.maximum((w_max - w_min) / n_bins, np.float32(1e-7)).astype(np.float32)
    side = np.abs(w_min) > np.abs(w_max)
    scale = np.where(side, scale, -scale).astype(np.float32)
    edge = np.where(side, w_min, w_max).astype(np.float32)
    q0 = rnd(edge / scale).astype(np.float32)
    at_zero = q0 == 0
    with np.errstate(divide="ignore", invalid="ignore"):
        scale = np.where(at_zero, scale, edge / q0).astype(np.float32)
    bias = np.where(at_zero, np.float32(0), edge).astype(np.float32)
    s16, b16 = f32_to_bf16(scale), f32_to_bf16(bias)
    if variant == "fixture":
        scale, bias = bf16_to_f32(s16), bf16_to_f32(b16)
    q = rnd((g - bias[:, None]) / scale[:, None])
    q = np.clip(q, 0, n_bins).astype(np.uint8)
    q = q.reshape(w.shape)
    packed = pack(q, bits)
    gshape = w.shape[:-1] + (w.shape[-1] // group_size,)
    return packed, s16.reshape(gshape), b16.reshape(gshape)


def pack(q, bits):
    """q uint8 [..., n] (values < 2^bits) -> uint32 [..., n*bits/32], one little-endian bit stream per row."""
    lead, n = q.shape[:-1], q.shape[-1]
    shifts = np.arange(bits, dtype=np.uint8)
    bitstream = ((q[..., None] >> shifts) & 1).astype(np.uint8).reshape(*lead, n * bits)
    by = np.packbits(bitstream, axis=-1, bitorder="little")
    return np.ascontiguousarray(by).view("<u4").reshape(*lead, n * bits // 32)


def unpack(packed, bits, n):
    lead = packed.shape[:-1]
    by = np.ascontiguousarray(packed.astype("<u4")).view(np.uint8)
    bitstream = np.unpackbits(by, axis=-1, bitorder="little")[..., : n * bits].reshape(*lead, n, bits)
    return (bitstream.astype(np.uint32) << np.arange(bits, dtype=np.uint32)).sum(-1).astype(np.uint32)


def dequantize(packed, scales_bf16, biases_bf16, bits, group_size):
    n = packed.shape[-1] * 32 // bits
    q = unpack(packed, bits, n).astype(np.float32)
    s = np.repeat(bf16_to_f32(scales_bf16), group_size, axis=-1)
    b = np.repeat(bf16_to_f32(biases_bf16), group_size, axis=-1)
    return s * q + b


# ---------------------------------------------------------------- names and recipe

def mlx_name(hf):
    for p in ("model.language_model.", "model."):
        if hf.startswith(p):
            return "language_model.model." + hf[len(p):]
    return hf


def to_mlx_tensors(hf):
    """HF float32 tensors -> MLX-named float32 tensors (experts split; tied lm_head dropped)."""
    out = {}
    for k, v in hf.items():
        if k == "lm_head.weight":
            continue
        n = mlx_name(k)
        if n.endswith("experts.gate_up_proj"):
            i = v.shape[1] // 2
            base = n[: -len("gate_up_proj")] + "switch_glu."
            out[base + "gate_proj.weight"] = v[:, :i, :]
            out[base + "up_proj.weight"] = v[:, i:, :]
        elif n.endswith("experts.down_proj"):
            out[n[: -len("down_proj")] + "switch_glu.down_proj.weight"] = v
        else:
            out[n] = v
    return out


def quant_plan(name, arr, bits, group_size, router_bits, overrides=None):
    """(bits, group) for a tensor that gets quantized, or None for one that stays dense."""
    if arr.ndim < 2 or not name.endswith(".weight"):
        return None
    module = name[: -len(".weight")]
    if overrides and module in overrides:
        o = overrides[module]
        return o["bits"], o["group_size"]
    b = router_bits if module.endswith("router.proj") else bits
    if arr.shape[-1] % group_size:
        return None  # mlx-lm leaves such layers dense
    return b, group_size


def convert(src, dst, bits=4, group_size=64, router_bits=8, overrides=None, variant="fixture"):
    hf = load_checkpoint(src)
    cfg = json.load(open(os.path.join(src, "config.json")))
    tensors, quant_cfg = {}, {"group_size": group_size, "bits": bits, "mode": "affine"}
    for name, arr in sorted(to_mlx_tensors(hf).items()):
        plan = quant_plan(name, arr, bits, group_size, router_bits, overrides)
        if plan is None:
            tensors[name] = ("BF16", f32_to_bf16(arr))
            continue
        b, g = plan
        module = name[: -len(".weight")]
        wq, s, bi = quantize(arr, b, g, variant)
        tensors[module + ".weight"] = ("U32", wq)
        tensors[module + ".scales"] = ("BF16", s)
        tensors[module + ".biases"] = ("BF16", bi)
        if (b, g) != (bits, group_size):
            quant_cfg[module] = {"group_size": g, "bits": b}
    os.makedirs(dst, exist_ok=True)
    path = os.path.join(dst, "model.safetensors")
    write_safetensors(path, tensors, {"format": "mlx"})
    text = cfg.get("text_config", cfg)
    text = {k: v for k, v in text.items() if k not in ("architectures", "dtype", "transformers_version",
                                                      "quantization", "quantization_config")}
    text["model_type"] = "gemma4_text"
    qc = dict(sorted(quant_cfg.items()))
    out_cfg = {"architectures": ["Gemma4ForConditionalGeneration"], "model_type": "gemma4", "dtype": "bfloat16",
               "eos_token_id": cfg.get("eos_token_id", text.get("eos_token_id")),
               "text_config": dict(sorted(text.items())), "quantization": qc, "quantization_config": qc}
    with open(os.path.join(dst, "config.json"), "w") as f:
        json.dump(out_cfg, f, indent=2)
        f.write("\n")
    return path, os.path.getsize(path)


def dequantized_hf_state(mlx_dir):
    """MLX checkpoint -> HF-named float32 tensors (dequantized), to run in transformers."""
    t, _ = read_safetensors(os.path.join(mlx_dir, "model.safetensors"))
    cfg = json.load(open(os.path.join(mlx_dir, "config.json")))
    q = cfg.get("quantization", {})
    dense = {}
    for k, (dt, a) in t.items():
        if k.endswith(".scales") or k.endswith(".biases"):
            continue
        module = k[: -len(".weight")] if k.endswith(".weight") else None
        if module and module + ".scales" in t:
            o = q.get(module, q)
            dense[k] = dequantize(a, t[module + ".scales"][1], t[module + ".biases"][1], o["bits"], o["group_size"])
        else:
            dense[k] = bf16_to_f32(a) if dt == "BF16" else a.astype(np.float32)
    hf = {}
    for k, v in dense.items():
        n = k.replace("language_model.model.", "model.", 1)
        if ".experts.switch_glu.gate_proj.weight" in n:
            base = n.replace("switch_glu.gate_proj.weight", "")
            hf[base + "gate_up_proj"] = np.concatenate([v, dense[k.replace("gate_proj", "up_proj")]], axis=1)
        elif ".experts.switch_glu.up_proj.weight" in n:
            continue
        elif ".experts.switch_glu.down_proj.weight" in n:
            hf[n.replace("switch_glu.down_proj.weight", "down_proj")] = v
        else:
            hf[n] = v
    return hf


# ---------------------------------------------------------------- check against the fixtures

def check_fixtures(root, variant="fixture"):
    """Quantize fixtures/tiny-moe (bf16) and compare with the fixture's own MLX checkpoints."""
    import tempfile
    ok = True
    for name in ("tiny-moe-4bit", "tiny-moe-8bit", "tiny-moe-mixed"):
        fdir = os.path.join(root, name)
        if not os.path.isdir(fdir):
            continue
        fcfg = json.load(open(os.path.join(fdir, "config.json")))["quantization"]
        overrides = {k: v for k, v in fcfg.items() if isinstance(v, dict)}
        with tempfile.TemporaryDirectory() as tmp:
            convert(os.path.join(root, "tiny-moe"), tmp, bits=fcfg["bits"], group_size=fcfg["group_size"],
                    router_bits=fcfg["bits"], overrides=overrides, variant=variant)
            mine, _ = read_safetensors(os.path.join(tmp, "model.safetensors"))
            mycfg = json.load(open(os.path.join(tmp, "config.json")))["quantization"]
        ref, _ = read_safetensors(os.path.join(fdir, "model.safetensors"))
        diff = [k for k in ref if k not in mine or mine[k][0] != ref[k][0] or mine[k][1].shape != ref[k][1].shape
                or not np.array_equal(mine[k][1], ref[k][1])]
        extra = [k for k in mine if k not in ref]
        n_q = sum(1 for k in ref if k.endswith(".scales"))
        same_cfg = mycfg == fcfg
        print(f"{name}: {len(ref)} tensors ({n_q} quantized), {len(diff)} differ, {len(extra)} extra, "
              f"quantization config {'same' if same_cfg else 'DIFFERENT'}")
        for k in diff[:5]:
            if k in mine and k.endswith(".weight") and mine[k][0] == "U32":
                print("   ", k, "words differing:", int((mine[k][1] != ref[k][1]).sum()), "of", ref[k][1].size)
            else:
                print("   ", k)
        ok &= not diff and not extra and same_cfg
    return ok


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("src", nargs="?")
    ap.add_argument("dst", nargs="?")
    ap.add_argument("--bits", type=int, default=4)
    ap.add_argument("--group-size", type=int, default=64)
    ap.add_argument("--router-bits", type=int, default=8)
    ap.add_argument("--variant", default="fixture", choices=VARIANTS)
    ap.add_argument("--check", metavar="FIXTURES", help="compare with ../shared/fixtures tiny-moe-{4bit,8bit,mixed}")
    args = ap.parse_args()
    if args.check:
        return 0 if check_fixtures(args.check, args.variant) else 1
    if not (args.src and args.dst):
        ap.error("SRC and DST are required")
    path, size = convert(args.src, args.dst, args.bits, args.group_size, args.router_bits, variant=args.variant)
    print(f"{path}: {size} bytes ({size / 1e6:.3f} MB, {size / 2**20:.3f} MiB)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
