#!/usr/bin/env python3
"""Write a random-weight Gemma 4 26B-A4B GGUF for llama.cpp, the peer that
cmd/bench's numbers are compared with.

The model has the shapes of gemmoe's synthetic checkpoint (synth.Archs
"gemma-4-26b-a4b"): the same layers, the same sliding/global pattern with K=V
global layers, the same experts, the LM head tied to the embedding. Its
weights take the same bytes as gemmoe's MLX affine g64 weights: Q4_0 (4.5 bits
a weight) against MLX 4-bit, Q8_0 (8.5 bits) against MLX 8-bit; the router is
Q8_0 in both, as gemmoe's synthetic router is 8-bit.

The metadata (hyperparameters and the tokenizer) come from llama.cpp's own
converter, convert_hf_to_gguf.py --vocab-only, run on a Hugging Face
config.json written here and the tokenizer.json given. Only the tensors are
made here, named and shaped as llama.cpp's Gemma 4 loader expects, with the
experts' gate and up projections fused as the converter writes them.

Usage:
  python3 tools/peer/gguf_synth.py --llama-cpp DIR --tokenizer tokenizer.json[.gz] \
      --type q4_0 --layers 30 --out gemma4-26b-a4b-q4_0.gguf

--metadata-out keeps the converter's output, and --metadata reuses it, so a
machine without transformers can write the model.
"""

import argparse
import gzip
import json
import os
import shutil
import subprocess
import sys
import tempfile

import numpy as np

# Gemma 4 26B-A4B text model, as synth.Archs["gemma-4-26b-a4b"].
VOCAB, HIDDEN, LAYERS, HEADS = 262144, 2816, 30, 16
SLIDING_KV_HEADS, SLIDING_HEAD_DIM = 8, 256
FULL_KV_HEADS, FULL_HEAD_DIM = 2, 512
WINDOW, EXPERTS, TOP_K, EXPERT_WIDTH, MLP_WIDTH = 1024, 128, 8, 704, 2112
SOFTCAP, CONTEXT = 30.0, 262144


def layer_full(i, layers):
    return (i + 1) % 6 == 0 or i == layers - 1


def hf_config(layers):
    types = ["full_attention" if layer_full(i, layers) else "sliding_attention" for i in range(layers)]
    text = {
        "model_type": "gemma4_text", "vocab_size": VOCAB, "hidden_size": HIDDEN, "num_hidden_layers": layers,
        "num_attention_heads": HEADS, "num_key_value_heads": SLIDING_KV_HEADS, "head_dim": SLIDING_HEAD_DIM,
        "global_head_dim": FULL_HEAD_DIM, "num_global_key_value_heads": FULL_KV_HEADS, "attention_k_eq_v": True,
        "sliding_window": WINDOW, "layer_types": types, "intermediate_size": MLP_WIDTH, "enable_moe_block": True,
        "num_experts": EXPERTS, "top_k_experts": TOP_K, "moe_intermediate_size": EXPERT_WIDTH,
        "rms_norm_eps": 1e-6, "final_logit_softcapping": SOFTCAP, "tie_word_embeddings": True,
        "max_position_embeddings": CONTEXT, "hidden_activation": "gelu_pytorch_tanh", "bos_token_id": 2,
        "eos_token_id": 1, "num_kv_shared_layers": 0, "hidden_size_per_layer_input": 0,
        "rope_parameters": {
            "sliding_attention": {"rope_type": "default", "rope_theta": 10000.0},
            "full_attention": {"rope_type": "proportional", "rope_theta": 1e6, "partial_rotary_factor": 0.25},
        },
    }
    return {"architectures": ["Gemma4ForConditionalGeneration"], "model_type": "gemma4",
            "text_config": text, "eos_token_id": [1, 106]}


def vocab_gguf(llama_cpp, tokenizer, layers, workdir):
    """Runs llama.cpp's converter for the metadata and returns the file."""
    model = os.path.join(workdir, "hf")
    os.makedirs(model)
    with open(os.path.join(model, "config.json"), "w") as f:
        json.dump(hf_config(layers), f)
    opener = gzip.open if tokenizer.endswith(".gz") else open
    with opener(tokenizer, "rb") as src, open(os.path.join(model, "tokenizer.json"), "wb") as dst:
        shutil.copyfileobj(src, dst)
    out = os.path.join(workdir, "vocab.gguf")
    env = dict(os.environ, PYTHONPATH=os.path.join(llama_cpp, "gguf-py"))
    subprocess.run([sys.executable, os.path.join(llama_cpp, "convert_hf_to_gguf.py"), model,
                    "--vocab-only", "--outfile", out], check=True, env=env,
                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return out


def tensors(layers, qtype):
    """Yields (name, ggml shape, kind, fan_in) in file order; kind is the
    quantization for weights ("q4_0", "q8_0") or "ones" / "rope" for f32."""
    import gguf
    T, N = gguf.MODEL_TENSOR, gguf.TENSOR_NAMES

    def name(t, bid=None, suffix="weight"):
        return N[t].format(bid=bid) + "." + suffix

    h = HIDDEN
    yield name(T.TOKEN_EMBD), [h, VOCAB], qtype, h
    yield name(T.OUTPUT_NORM), [h], "ones", 0
    yield name(T.ROPE_FREQS), [FULL_HEAD_DIM // 2], "rope", 0
    for i in range(layers):
        full = layer_full(i, layers)
        hd, kvh = (FULL_HEAD_DIM, FULL_KV_HEADS) if full else (SLIDING_HEAD_DIM, SLIDING_KV_HEADS)
        for t in (T.ATTN_NORM, T.ATTN_POST_NORM, T.FFN_NORM, T.FFN_POST_NORM,
                  T.FFN_PRE_NORM_2, T.FFN_POST_NORM_1, T.FFN_POST_NORM_2):
            yield name(t, i), [h], "ones", 0
        yield name(T.ATTN_Q_NORM, i), [hd], "ones", 0
        yield name(T.ATTN_K_NORM, i), [hd], "ones", 0
        yield name(T.ATTN_Q, i), [h, HEADS * hd], qtype, h
        yield name(T.ATTN_K, i), [h, kvh * hd], qtype, h
        if not full:  # global layers use K as V
            yield name(T.ATTN_V, i), [h, kvh * hd], qtype, h
        yield name(T.ATTN_OUT, i), [HEADS * hd, h], qtype, HEADS * hd
        yield name(T.FFN_GATE, i), [h, MLP_WIDTH], qtype, h
        yield name(T.FFN_UP, i), [h, MLP_WIDTH], qtype, h
        yield name(T.FFN_DOWN, i), [MLP_WIDTH, h], qtype, MLP_WIDTH
        yield name(T.FFN_GATE_INP, i), [h, EXPERTS], "q8_0", h
        yield name(T.FFN_GATE_INP, i, "scale"), [h], "ones", 0
        yield name(T.FFN_GATE_UP_EXP, i), [h, 2 * EXPERT_WIDTH, EXPERTS], qtype, h
        yield name(T.FFN_DOWN_EXP, i), [EXPERT_WIDTH, h, EXPERTS], qtype, EXPERT_WIDTH
        yield name(T.FFN_DOWN_EXP, i, "scale"), [EXPERTS], "ones", 0
        yield name(T.LAYER_OUT_SCALE, i), [1], "ones", 0


VOCAB_ARRAYS = ("tokenizer.ggml.tokens", "tokenizer.ggml.scores", "tokenizer.ggml.token_type")

# Block layouts: an f16 scale d, then the quants; value = d * (q - offset).
BLOCKS = {"q4_0": (18, 8), "q8_0": (34, 0)}


def quant_data(rng, shape, kind, fan_in):
    """Random blocks whose values are uniform in ±sqrt(3/fan_in), so
    activations stay near unit variance and the router spreads tokens."""
    size, _ = BLOCKS[kind]
    blocks = int(np.prod(shape)) // 32
    data = np.frombuffer(rng.bytes(blocks * size), dtype=np.uint8).reshape(blocks, size).copy()
    amp = np.sqrt(3.0 / fan_in)
    d = np.float16(amp / (8 if kind == "q4_0" else 127))
    data[:, 0:2] = np.frombuffer(d.tobytes(), dtype=np.uint8)
    return data


def f32_data(shape, kind):
    if kind == "rope":
        # Proportional RoPE on a quarter of the global head: the first
        # rotated pairs keep their frequency, the rest do not turn.
        rotated = int(FULL_HEAD_DIM * 0.25 / 2)
        return np.array([1.0] * rotated + [1e30] * (shape[0] - rotated), dtype=np.float32)
    return np.ones(shape[::-1], dtype=np.float32)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--llama-cpp", required=True, help="a llama.cpp source tree (its converter and gguf-py)")
    ap.add_argument("--tokenizer", help="a Gemma 4 tokenizer.json, optionally gzipped")
    ap.add_argument("--metadata", help="a GGUF that --metadata-out wrote (no converter run)")
    ap.add_argument("--metadata-out", help="write the converter's metadata GGUF here and stop")
    ap.add_argument("--type", default="q4_0", choices=sorted(BLOCKS),
                    help="the weights' type: q4_0 against MLX 4-bit g64, q8_0 against 8-bit")
    ap.add_argument("--layers", type=int, default=LAYERS, help="the first N layers, as cmd/bench -layers N")
    ap.add_argument("--seed", type=int, default=1, help="the random weights' seed")
    ap.add_argument("--out", help="the GGUF to write")
    args = ap.parse_args()
    if not 1 <= args.layers <= LAYERS:
        sys.exit(f"gguf_synth: --layers {args.layers}: the model has 1..{LAYERS}")
    sys.path.insert(0, os.path.join(args.llama_cpp, "gguf-py"))
    import gguf

    if not args.out and not args.metadata_out:
        sys.exit("gguf_synth: give --out (or --metadata-out)")
    if not args.metadata and not args.tokenizer:
        sys.exit("gguf_synth: give --tokenizer (to run the converter) or --metadata")
    with tempfile.TemporaryDirectory() as work:
        meta = args.metadata or vocab_gguf(args.llama_cpp, args.tokenizer, args.layers, work)
        if args.metadata_out:
            shutil.copyfile(meta, args.metadata_out)
            return
        reader = gguf.GGUFReader(meta)
        blocks = reader.get_field("gemma4.block_count")
        if blocks is None or blocks.contents() != args.layers:
            sys.exit(f"gguf_synth: {meta} is not a {args.layers}-layer gemma4 metadata file")
        writer = gguf.GGUFWriter(args.out, arch="gemma4")
        ftype = {"q4_0": gguf.LlamaFileType.MOSTLY_Q4_0, "q8_0": gguf.LlamaFileType.MOSTLY_Q8_0}[args.type]
        for field in reader.fields.values():
            if field.name == gguf.Keys.General.ARCHITECTURE or field.name.startswith("GGUF."):
                continue
            if field.name == gguf.Keys.General.FILE_TYPE:
                continue
            vtype = field.types[0]
            sub = field.types[-1] if vtype == gguf.GGUFValueType.ARRAY else None
            value = field.contents()
            if field.name in VOCAB_ARRAYS and len(value) > VOCAB:
                value = value[:VOCAB]  # a tokenizer with tokens past the model's rows
            writer.add_key_value(field.name, value, vtype, sub_type=sub)
        writer.add_file_type(ftype)

        plan = list(tensors(args.layers, args.type))
        qtypes = {"q4_0": gguf.GGMLQuantizationType.Q4_0, "q8_0": gguf.GGMLQuantizationType.Q8_0}
        for name, shape, kind, _ in plan:
            n = int(np.prod(shape))
            if kind in BLOCKS:
                writer.add_tensor_info(name, shape[::-1], np.float16, n // 32 * BLOCKS[kind][0], qtypes[kind])
            else:
                writer.add_tensor_info(name, shape[::-1], np.dtype(np.float32), n * 4)
        writer.write_header_to_file()
        writer.write_kv_data_to_file()
        writer.write_ti_data_to_file()
        rng = np.random.default_rng(args.seed)
        for name, shape, kind, fan_in in plan:
            if kind in BLOCKS:
                writer.write_tensor_data(quant_data(rng, shape, kind, fan_in))
            else:
                writer.write_tensor_data(f32_data(shape, kind))
        writer.close()


if __name__ == "__main__":
    main()
