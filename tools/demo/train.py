#!/usr/bin/env python3
"""Train the gemmoe demo model: a small Gemma 4 MoE (transformers Gemma4ForCausalLM) on Go source.

Input  (--data, made by prepare_data.py): train.u16, heldout.u16, tokenizer.json.
Output (--out): the checkpoint (save_pretrained: config.json, bf16 safetensors, sharded so no
file passes 15 MB), train_log.json (config, sizes, loss curve, evaluations) and reference.json
(an outside oracle: float32 held-out perplexity and per-token NLLs of the saved bf16 weights).

Seeded and deterministic in its data order: the train stream is cut into (seq+1)-token chunks
(chunk i = tokens[i*seq : i*seq+seq+1]); each epoch visits them in torch.randperm order from a
generator seeded with seed+epoch. The number of steps is --steps, or, when 0, estimated from
the measured step time so that training fits --budget-s seconds (the estimate is logged as
"total_steps"; pass it as --steps to replay the same schedule). Training also stops at
1.05 x --budget-s whatever happens, and still saves everything.

Training-only changes (the saved checkpoint is the stock Gemma4ForCausalLM layout):
  * the experts run densely (every expert on every token, weighted by the router's sparse
    top-k weights, zero elsewhere): the same function as transformers' sparse loop, with
    static shapes and no host syncs;
  * layer_scalar (a buffer in transformers, 1.0 at init) is trained as a parameter so that the
    checkpoint carries values other than 1 (a runtime that forgets to apply it shows up);
  * a Switch-style load-balancing loss (coef --aux-coef) on each router keeps the experts in use.
"""
import argparse
import json
import math
import os
import sys
import time
import types

import numpy as np
import torch
import torch.nn.functional as F

HERE = os.path.dirname(os.path.abspath(__file__))


def layer_types(n):
    # Gemma 4: every 6th layer is full attention, and the last one always is.
    return ["full_attention" if ((i + 1) % 6 == 0 or i == n - 1) else "sliding_attention" for i in range(n)]


def make_config(vocab_size, tiny=False):
    from transformers import Gemma4TextConfig

    if tiny:  # CPU smoke test only
        dims = dict(hidden_size=64, intermediate_size=128, moe_intermediate_size=64, num_hidden_layers=2,
                    num_attention_heads=2, num_key_value_heads=1, head_dim=32, global_head_dim=64,
                    num_experts=4, top_k_experts=2, sliding_window=16)
    else:
        dims = dict(hidden_size=256, intermediate_size=512, moe_intermediate_size=64, num_hidden_layers=8,
                    num_attention_heads=4, num_key_value_heads=2, head_dim=64, global_head_dim=128,
                    num_experts=16, top_k_experts=4, sliding_window=128)
    n = dims["num_hidden_layers"]
    return Gemma4TextConfig(
        vocab_size=vocab_size,
        num_global_key_value_heads=1,
        attention_k_eq_v=True,
        enable_moe_block=True,
        layer_types=layer_types(n),
        rope_parameters={
            "full_attention": {"partial_rotary_factor": 0.25, "rope_theta": 1000000.0, "rope_type": "proportional"},
            "sliding_attention": {"rope_theta": 10000.0, "rope_type": "default"},
        },
        final_logit_softcapping=30.0,
        tie_word_embeddings=True,
        hidden_activation="gelu_pytorch_tanh",
        hidden_size_per_layer_input=0,
        vocab_size_per_layer_input=vocab_size,
        num_kv_shared_layers=0,
        attention_bias=False,
        max_position_embeddings=4096,
        rms_norm_eps=1e-6,
        pad_token_id=0, bos_token_id=2, eos_token_id=1,
        initializer_range=0.02,
        **dims,
    )


def hubify_config(path, config):
    """Write config.json the way Hub Gemma 4 checkpoints (and ../shared/fixtures) spell it: flat
    global_head_dim / num_global_key_value_heads instead of transformers' derived per_layer_config."""
    with open(path) as f:
        c = json.load(f)
    full = [i for i, t in enumerate(config.layer_types) if t == "full_attention"]
    plc = c.pop("per_layer_config")
    # per_layer_config is serialized as a diff: a missing key means "same as the base config"
    ghd = {plc[str(i)].get("head_dim", c["head_dim"]) for i in full}
    gkv = {plc[str(i)].get("num_key_value_heads", c["num_key_value_heads"]) for i in full}
    assert len(ghd) == 1 and len(gkv) == 1 and set(plc) == {str(i) for i in full}, plc
    c["global_head_dim"] = ghd.pop()
    c["num_global_key_value_heads"] = gkv.pop()
    c = dict(sorted(c.items()))
    with open(path, "w") as f:
        json.dump(c, f, indent=2, sort_keys=True)
        f.write("\n")


def mlx_4bit_bytes(named_shapes, group=64):
    """Size of the MLX 4-bit checkpoint (mlx-lm's Gemma 4 recipe): matrices 4-bit, router.proj
    8-bit, each group of `group` with a bf16 scale and bias; 1-D tensors (norms, scales,
    layer_scalar) bf16. Tensor bytes only (the safetensors header adds a few KB)."""
    total = 0
    for name, shape in named_shapes:
        n = int(np.prod(shape))
        if len(shape) < 2:
            total += 2 * n
        else:
            bits = 8 if name.endswith("router.proj.weight") else 4
            total += n * bits // 8 + (n // group) * 4
    return total


def dense_experts_forward(self, hidden_states, top_k_index, top_k_weights):
    # Same function as Gemma4TextExperts.forward: sum_j w_j * down_e(gelu(gate_e x) * up_e x), e = idx_j.
    T = hidden_states.shape[0]
    w = torch.zeros(T, self.num_experts, device=hidden_states.device, dtype=top_k_weights.dtype)
    w = w.scatter(1, top_k_index, top_k_weights)                               # [T, E]
    gu = torch.einsum("th,eih->eti", hidden_states, self.gate_up_proj)          # [E, T, 2I]
    gate, up = gu.chunk(2, dim=-1)
    h = self.act_fn(gate) * up
    y = torch.einsum("eti,ehi->eth", h, self.down_proj)                          # [E, T, H]
    out = torch.einsum("eth,te->th", y, w.to(y.dtype))
    return out.to(hidden_states.dtype)


def load_u16(path):
    """Raw little-endian uint16 tokens from path, or from path + '.gz' (smaller to ship)."""
    if os.path.exists(path):
        return np.fromfile(path, dtype="<u2")
    import gzip
    with gzip.open(path + ".gz", "rb") as f:
        return np.frombuffer(f.read(), dtype="<u2").copy()


def chunk_windows(tokens, seq):
    n = (len(tokens) - 1) // seq
    return n


def get_batch(tokens_dev, starts, seq):
    idx = starts[:, None] + torch.arange(seq + 1, device=starts.device)[None, :]
    x = tokens_dev[idx].long()
    return x[:, :-1], x[:, 1:]


@torch.no_grad()
def evaluate(model, tokens_dev, seq, n_windows, batch, device, autocast_dtype=None):
    """Mean NLL (nats/token) over held-out windows i = 0..n_windows-1 (inputs tokens[i*seq:(i+1)*seq],
    targets shifted by one)."""
    model.eval()
    total, count = 0.0, 0
    for b0 in range(0, n_windows, batch):
        starts = torch.arange(b0, min(b0 + batch, n_windows), device=device) * seq
        x, y = get_batch(tokens_dev, starts, seq)
        with torch.autocast(device_type=device.type, dtype=autocast_dtype, enabled=autocast_dtype is not None):
            logits = model(input_ids=x).logits
        nll = F.cross_entropy(logits.float().reshape(-1, logits.shape[-1]), y.reshape(-1), reduction="sum")
        total += nll.item()
        count += y.numel()
    model.train()
    return total / count


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", default="demo-build")
    ap.add_argument("--out", default=os.environ.get("OUT", "demo-build/checkpoint"))
    ap.add_argument("--seed", type=int, default=1234)
    ap.add_argument("--seq", type=int, default=512)
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--lr", type=float, default=3e-3)
    ap.add_argument("--min-lr-frac", type=float, default=0.1)
    ap.add_argument("--warmup", type=int, default=200)
    ap.add_argument("--weight-decay", type=float, default=0.1)
    ap.add_argument("--aux-coef", type=float, default=0.01)
    ap.add_argument("--steps", type=int, default=0, help="0: estimate from --budget-s")
    ap.add_argument("--budget-s", type=float, default=420.0, help="training wall-clock budget")
    ap.add_argument("--log-every", type=int, default=25)
    ap.add_argument("--eval-every", type=int, default=500)
    ap.add_argument("--eval-windows-during", type=int, default=128)
    ap.add_argument("--ref-window", type=int, default=256)
    ap.add_argument("--max-eval-windows", type=int, default=0, help="0: all held-out windows")
    ap.add_argument("--tiny", action="store_true", help="CPU smoke test with a tiny config")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = ap.parse_args()

    t_start = time.time()
    torch.manual_seed(args.seed)
    np.random.seed(args.seed)
    device = torch.device(args.device)
    amp = torch.bfloat16  # bf16 autocast for training (also on the CPU, for the smoke test)
    # no TF32: the float32 evaluations (random init, reference) must be real float32
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    os.makedirs(args.out, exist_ok=True)

    from tokenizers import Tokenizer
    from transformers import Gemma4ForCausalLM

    tok = Tokenizer.from_file(os.path.join(args.data, "tokenizer.json"))
    vocab = tok.get_vocab_size()
    train_np = load_u16(os.path.join(args.data, "train.u16"))
    held_np = load_u16(os.path.join(args.data, "heldout.u16"))
    train_dev = torch.from_numpy(train_np.astype(np.int32)).to(device)
    held_dev = torch.from_numpy(held_np.astype(np.int32)).to(device)
    n_chunks = chunk_windows(train_np, args.seq)
    n_eval = (len(held_np) - 1) // args.seq
    if args.max_eval_windows:
        n_eval = min(n_eval, args.max_eval_windows)
    print(f"vocab {vocab}; train {len(train_np)} tokens = {n_chunks} chunks; held-out {len(held_np)} tokens, "
          f"{n_eval} eval windows of {args.seq}", flush=True)

    config = make_config(vocab, tiny=args.tiny)
    config._attn_implementation = "sdpa"
    model = Gemma4ForCausalLM(config).to(device)
    n_params = sum(p.numel() for p in model.parameters())  # tied embedding counted once
    named_shapes = [(k, tuple(v.shape)) for k, v in model.state_dict().items() if k != "lm_head.weight"]
    n_state = sum(int(np.prod(s)) for _, s in named_shapes)
    size4 = mlx_4bit_bytes(named_shapes)
    n_expert = sum(int(np.prod(s)) for k, s in named_shapes if ".experts." in k)
    n_active = n_state - n_expert + n_expert * config.top_k_experts // config.num_experts
    print(f"params {n_params} (state {n_state}, experts {n_expert}, active/token {n_active}); "
          f"bf16 {2 * n_state / 1e6:.2f} MB; MLX 4-bit g64 ~{size4 / 1e6:.2f} MB", flush=True)

    # training-only changes (see the docstring)
    for layer in model.model.layers:
        layer.experts.forward = types.MethodType(dense_experts_forward, layer.experts)
        v = layer.layer_scalar.detach().clone()
        del layer._buffers["layer_scalar"]
        layer.layer_scalar = torch.nn.Parameter(v)
    router_stats = []

    def router_hook(mod, inp, out):
        probs, _, idx = out
        router_stats.append((probs, idx))

    for layer in model.model.layers:
        layer.router.register_forward_hook(router_hook)

    # random-init perplexity (the initial weights of this very run), float32
    router_stats.clear()
    nll_random = evaluate(model, held_dev, args.seq, n_eval, 32, device, None)
    router_stats.clear()
    print(f"random init: held-out NLL {nll_random:.4f} ppl {math.exp(nll_random):.1f} "
          f"({time.time() - t_start:.0f}s)", flush=True)

    decay, no_decay = [], []
    for name, p in model.named_parameters():
        (decay if p.ndim >= 2 else no_decay).append(p)
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": args.weight_decay},
                             {"params": no_decay, "weight_decay": 0.0}],
                            lr=args.lr, betas=(0.9, 0.95), eps=1e-8, fused=device.type == "cuda")

    total_steps = args.steps if args.steps else 10**9

    def lr_at(step):
        if step < args.warmup:
            return args.lr * (step + 1) / args.warmup
        prog = min(1.0, (step - args.warmup) / max(1, total_steps - args.warmup))
        return args.lr * (args.min_lr_frac + (1 - args.min_lr_frac) * 0.5 * (1 + math.cos(math.pi * prog)))

    gen = torch.Generator()
    epoch, perm, pos = 0, None, n_chunks
    log, evals = [], []
    acc_loss = acc_aux = 0.0
    acc_n = 0
    t_train0 = time.time()
    stop_reason = "steps"
    step = 0
    model.train()
    while step < total_steps:
        if pos + args.batch > n_chunks:
            gen.manual_seed(args.seed + epoch)
            perm = torch.randperm(n_chunks, generator=gen)
            epoch += 1
            pos = 0
        starts = (perm[pos:pos + args.batch] * args.seq).to(device)
        pos += args.batch
        x, y = get_batch(train_dev, starts, args.seq)
        for g in opt.param_groups:
            g["lr"] = lr_at(step)
        router_stats.clear()
        with torch.autocast(device_type=device.type, dtype=amp, enabled=amp is not None):
            logits = model(input_ids=x).logits
        loss = F.cross_entropy(logits.float().reshape(-1, logits.shape[-1]), y.reshape(-1))
        aux = 0.0
        for probs, idx in router_stats:
            E = probs.shape[-1]
            frac = torch.zeros(E, device=device).scatter_add_(0, idx.reshape(-1), torch.ones(idx.numel(), device=device))
            frac = frac / idx.numel()
            aux = aux + E * (frac * probs.float().mean(0)).sum()
        aux = aux / max(1, len(router_stats))
        (loss + args.aux_coef * aux).backward()
        gnorm = torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        step += 1
        acc_loss += loss.detach()
        acc_aux += aux.detach() if torch.is_tensor(aux) else aux
        acc_n += 1

        if step % args.log_every == 0 or step == total_steps:
            elapsed = time.time() - t_train0
            rec = {"step": step, "loss": round(float(acc_loss) / acc_n, 4), "aux": round(float(acc_aux) / acc_n, 4),
                   "lr": lr_at(step - 1), "grad_norm": round(float(gnorm), 3), "epoch": epoch,
                   "tokens": step * args.batch * args.seq, "elapsed_s": round(elapsed, 1)}
            log.append(rec)
            acc_loss = acc_aux = 0.0
            acc_n = 0
            if step % (args.log_every * 8) == 0 or step == args.log_every:
                print(json.dumps(rec), flush=True)
        if step == 20:
            if device.type == "cuda":
                torch.cuda.synchronize()
            t20 = time.time()
        if step == 100 and not args.steps:  # still inside the warmup, so nothing before changes
            if device.type == "cuda":
                torch.cuda.synchronize()
            dt = (time.time() - t20) / 80
            total_steps = step + int((args.budget_s - (time.time() - t_train0)) / (dt * 1.04))
            total_steps -= (total_steps // args.eval_every) * 2  # room for the in-training evals
            print(f"step time {dt * 1000:.1f} ms -> total_steps {total_steps}", flush=True)
        if args.eval_every and step % args.eval_every == 0 and step < total_steps:
            router_stats.clear()
            e = evaluate(model, held_dev, args.seq, min(n_eval, args.eval_windows_during), 32, device, amp)
            router_stats.clear()
            evals.append({"step": step, "heldout_nll": round(e, 4), "heldout_ppl": round(math.exp(e), 3),
                          "windows": min(n_eval, args.eval_windows_during)})
            print(json.dumps(evals[-1]), flush=True)
        if time.time() - t_train0 > 1.05 * args.budget_s:
            stop_reason = "wall-clock budget"
            break
    if device.type == "cuda":
        torch.cuda.synchronize()
    train_s = time.time() - t_train0
    if not args.steps and total_steps == 10**9:
        total_steps = step
    print(f"trained {step} steps in {train_s:.0f}s ({stop_reason})", flush=True)

    # final held-out loss of the training weights (bf16 autocast, fast), all windows
    router_stats.clear()
    nll_train_amp = evaluate(model, held_dev, args.seq, n_eval, 32, device, amp)
    router_stats.clear()

    # save the stock layout in bf16
    layer_scalars = [float(l.layer_scalar.item()) for l in model.model.layers]
    per_expert_scale = [[round(float(v), 4) for v in l.router.per_expert_scale.detach().cpu()] for l in model.model.layers]
    sd = {k: v.detach().to(torch.bfloat16) for k, v in model.state_dict().items()}
    stock = Gemma4ForCausalLM(config).to(torch.bfloat16)
    missing, unexpected = stock.load_state_dict(sd, strict=False)
    assert not unexpected and all(k == "lm_head.weight" for k in missing), (missing, unexpected)
    stock.tie_weights()
    stock.config.dtype = "bfloat16"
    stock.save_pretrained(args.out, max_shard_size="15MB")
    del stock
    hubify_config(os.path.join(args.out, "config.json"), config)

    # reference: reload the saved bf16 checkpoint in float32, eager attention (the stock code)
    ref = Gemma4ForCausalLM.from_pretrained(args.out, dtype=torch.float32, attn_implementation="eager").to(device)
    ref.eval()
    for i, t in enumerate(config.layer_types):  # the Hub-style config.json must mean the same model
        a, b = ref.model.layers[i].self_attn, model.model.layers[i].self_attn
        assert (a.head_dim, a.k_proj.out_features, a.v_proj is None, a.sliding_window) == \
            (b.head_dim, b.k_proj.out_features, b.v_proj is None, b.sliding_window), i
    sys.path.insert(0, HERE)
    from evaluate import reference as build_reference

    reference = build_reference(ref, held_np, tok, args.seq, n_eval, args.ref_window, device,
                                "transformers 5.17 Gemma4ForCausalLM, the saved bf16 weights run in float32 "
                                "with eager attention")
    nll_ref = reference["heldout"]["mean_nll"]
    expert_load = reference["expert_load"]
    margins = [reference["greedy"]["min_margin"]]
    with open(os.path.join(args.out, "reference.json"), "w") as f:
        json.dump(reference, f)

    result = {
        "config": config.to_dict(),
        "args": vars(args),
        "device": torch.cuda.get_device_name(0) if device.type == "cuda" else "cpu",
        "torch": torch.__version__,
        "params": n_params, "params_active_per_token": n_active, "params_experts": n_expert,
        "mlx_4bit_g64_bytes_est": size4,
        "steps": step, "total_steps": total_steps, "stop_reason": stop_reason,
        "train_seconds": round(train_s, 1), "tokens_seen": step * args.batch * args.seq,
        "train_tokens": int(len(train_np)), "epochs": round(step * args.batch / n_chunks, 3),
        "loss_curve": log, "evals": evals,
        "heldout_nll_random_init": nll_random, "heldout_ppl_random_init": math.exp(nll_random),
        "heldout_nll_trained_bf16_autocast": nll_train_amp, "heldout_ppl_trained_bf16_autocast": math.exp(nll_train_amp),
        "heldout_nll_trained_fp32_ref": nll_ref, "heldout_ppl_trained_fp32_ref": math.exp(nll_ref),
        "heldout_windows": n_eval,
        "layer_scalars": layer_scalars, "per_expert_scale": per_expert_scale, "expert_load": expert_load,
        "total_seconds": round(time.time() - t_start, 1),
    }
    with open(os.path.join(args.out, "train_log.json"), "w") as f:
        json.dump(result, f, indent=1)
    print(f"held-out ppl: random {math.exp(nll_random):.1f}, trained {math.exp(nll_ref):.3f} (fp32 ref), "
          f"{math.exp(nll_train_amp):.3f} (bf16 autocast); window ppl {reference['window']['ppl']:.3f}; "
          f"greedy min margin {min(margins):.3f}; total {time.time() - t_start:.0f}s", flush=True)
    print("greedy text:", repr(reference["greedy"]["text"][-300:]), flush=True)


if __name__ == "__main__":
    sys.exit(main())
