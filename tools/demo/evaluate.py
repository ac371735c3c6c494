#!/usr/bin/env python3
"""Reference evaluation of a demo checkpoint (an outside oracle for the Go runtime).

Runs transformers' stock Gemma4ForCausalLM in float32 with eager attention and writes
reference.json:
  heldout: mean NLL / perplexity over held-out windows i = 0..n-1 (inputs
           heldout.u16[i*seq:(i+1)*seq], targets shifted by one; seq 512);
  window:  per-token NLLs, argmax and top-1 logit for ONE fixed window: the first
           --ref-window (256) tokens of the held-out stream (the start of the first held-out
           file, beginning with <bos>), targets shifted by one;
  greedy:  greedy continuation (transformers' own KV cache) of 64 tokens after the window's
           first 96 tokens (96 + 64 = 160 > sliding window 128), with the smallest top-1/top-2
           logit margin seen;
  expert_load: fraction of (token, slot) routed to each expert per layer over the held-out run.

train.py calls reference() on the GPU for the saved bf16 checkpoint. Run as a script it
evaluates a checkpoint directory on the CPU: a Hugging Face one (bf16 safetensors) or an MLX
quantized one (made by quantize_reference.py; it is dequantized to float32 with the stored bf16
scales and biases, w = scale*q + bias, and run the same way):

  evaluate.py demo-build/model-4bit --data demo-build [--out FILE] [--max-windows N]
"""
import argparse
import json
import math
import os
import sys

import numpy as np
import torch
import torch.nn.functional as F

HERE = os.path.dirname(os.path.abspath(__file__))


@torch.no_grad()
def heldout_nll(model, tokens_dev, seq, n_windows, batch, device, progress=False):
    """Mean NLL (nats/token) over windows 0..n_windows-1, float32."""
    import time

    total, count, t0 = 0.0, 0, time.time()
    for b0 in range(0, n_windows, batch):
        if progress and b0:
            print(f"  {b0}/{n_windows} windows, {time.time() - t0:.0f}s", flush=True)
        starts = torch.arange(b0, min(b0 + batch, n_windows), device=device) * seq
        idx = starts[:, None] + torch.arange(seq + 1, device=device)[None, :]
        xy = tokens_dev[idx].long()
        logits = model(input_ids=xy[:, :-1]).logits
        nll = F.cross_entropy(logits.float().reshape(-1, logits.shape[-1]), xy[:, 1:].reshape(-1), reduction="sum")
        total += nll.item()
        count += xy[:, 1:].numel()
    return total / count


@torch.no_grad()
def reference(ref, held_np, tok, seq, n_eval, ref_window, device, what, batch=16, progress=False):
    """The reference dict for a float32 stock model `ref` (already on `device`, eval mode)."""
    num_experts = ref.config.num_experts
    loads = []

    def load_hook(mod, inp, out):
        loads.append(torch.bincount(out[2].reshape(-1), minlength=num_experts).cpu())

    hooks = [l.router.register_forward_hook(load_hook) for l in ref.model.layers]
    held_dev = torch.from_numpy(held_np.astype(np.int32)).to(device)
    nll = heldout_nll(ref, held_dev, seq, n_eval, batch, device, progress)
    L = len(ref.model.layers)
    per_layer = [sum(loads[i::L]) for i in range(L)]
    expert_load = [[round(float(c) / float(t.sum()), 4) for c in t] for t in per_layer]
    for h in hooks:
        h.remove()

    # one fixed short window: the start of the first held-out file (begins with <bos>)
    W = ref_window
    win = held_np[: W + 1].astype(np.int64)
    x = torch.from_numpy(win[:-1])[None].to(device)
    logits = ref(input_ids=x).logits[0].float()
    logp = torch.log_softmax(logits, -1)
    tgt = torch.from_numpy(win[1:]).to(device)
    nll_tok = (-logp.gather(1, tgt[:, None])[:, 0]).cpu().tolist()
    top2 = logits.topk(2, -1)
    # greedy continuation with transformers' own KV cache, float32
    P = min(96, W)  # prompt + generated = 160 > sliding_window 128: the ring buffer matters
    prompt = torch.from_numpy(win[:P])[None].to(device)
    g = ref.generate(prompt, max_new_tokens=64, do_sample=False, output_scores=True,
                     return_dict_in_generate=True, eos_token_id=None, pad_token_id=0)
    greedy = g.sequences[0, P:].cpu().tolist()
    margins = [float((s[0].topk(2).values[0] - s[0].topk(2).values[1]).item()) for s in g.scores]

    return {
        "what": what + f" on {device} (torch {torch.__version__})",
        "heldout": {"windows": n_eval, "window_len": seq,
                    "rule": "window i: inputs heldout.u16[i*seq:(i+1)*seq], targets shifted by one",
                    "tokens_scored": n_eval * seq, "mean_nll": nll, "ppl": math.exp(nll)},
        "window": {"input_ids": win[:-1].tolist(), "target_ids": win[1:].tolist(), "nll": nll_tok,
                   "mean_nll": float(np.mean(nll_tok)), "ppl": float(math.exp(np.mean(nll_tok))),
                   "argmax": top2.indices[:, 0].cpu().tolist(),
                   "top1_logit": top2.values[:, 0].cpu().tolist(),
                   "top1_margin_min": float((top2.values[:, 0] - top2.values[:, 1]).min())},
        "greedy": {"prompt_ids": win[:P].tolist(), "tokens": greedy, "min_margin": min(margins),
                   "text": tok.decode(win[:P].tolist() + greedy, skip_special_tokens=False)},
        "expert_load": expert_load,
    }


def load_model(path, device):
    """Stock Gemma4ForCausalLM, float32, eager attention, from a HF or an MLX-quantized directory."""
    from transformers import Gemma4ForCausalLM, Gemma4TextConfig

    cfg = json.load(open(os.path.join(path, "config.json")))
    if "quantization" not in cfg:
        m = Gemma4ForCausalLM.from_pretrained(path, dtype=torch.float32, attn_implementation="eager")
        return m.to(device).eval(), "transformers 5.17 Gemma4ForCausalLM, the bf16 checkpoint run in float32, eager attention"
    sys.path.insert(0, HERE)
    from quantize_reference import dequantized_hf_state

    text = dict(cfg["text_config"])
    text.pop("model_type", None)
    config = Gemma4TextConfig(**text)
    config._attn_implementation = "eager"
    m = Gemma4ForCausalLM(config)
    state = {k: torch.from_numpy(v) for k, v in dequantized_hf_state(path).items()}
    missing, unexpected = m.load_state_dict(state, strict=False)
    assert not unexpected and all(k == "lm_head.weight" for k in missing), (missing, unexpected)
    m.tie_weights()
    q = cfg["quantization"]
    return m.to(device).eval(), (f"transformers 5.17 Gemma4ForCausalLM on the MLX affine {q['bits']}-bit "
                                 f"group-{q['group_size']} weights dequantized (scale*q + bias, bf16 scales/biases) "
                                 f"to float32, eager attention")


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("model")
    ap.add_argument("--data", default="demo-build")
    ap.add_argument("--out", help="default: MODEL/reference.json")
    ap.add_argument("--seq", type=int, default=512)
    ap.add_argument("--ref-window", type=int, default=256)
    ap.add_argument("--max-windows", type=int, default=0, help="0: all held-out windows")
    ap.add_argument("--threads", type=int, default=0)
    ap.add_argument("--batch", type=int, default=8)
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    from tokenizers import Tokenizer

    sys.path.insert(0, HERE)
    from train import load_u16

    tok = Tokenizer.from_file(os.path.join(args.data, "tokenizer.json"))
    held = load_u16(os.path.join(args.data, "heldout.u16"))
    n = (len(held) - 1) // args.seq
    if args.max_windows:
        n = min(n, args.max_windows)
    model, what = load_model(args.model, torch.device("cpu"))
    ref = reference(model, held, tok, args.seq, n, args.ref_window, torch.device("cpu"), what,
                    batch=args.batch, progress=True)
    out = args.out or os.path.join(args.model, "reference.json")
    with open(out, "w") as f:
        json.dump(ref, f)
    print(f"{out}: held-out ppl {ref['heldout']['ppl']:.4f} over {n} windows; window ppl {ref['window']['ppl']:.4f}; "
          f"greedy min margin {ref['greedy']['min_margin']:.3f}")


if __name__ == "__main__":
    sys.exit(main())
