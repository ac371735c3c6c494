#!/usr/bin/env python3
"""Data split, tokenizer and token files for the gemmoe demo model.

Corpus: the hand-written Go source of the Go standard library of this machine's
Go installation ($(go env GOROOT)/src, BSD-3-Clause, see $(go env GOROOT)/LICENSE).

  * files: every *.go file under GOROOT/src, skipping any path with a `testdata` or
    `vendor` directory and skipping generated files (those with a line matching Go's
    convention `^// Code generated .* DO NOT EDIT\\.$`);
  * split: a file is held out iff int(sha256(relpath)[:16], 16) % 10000 < 200 (2%),
    relpath being the path relative to GOROOT/src with '/' separators;
  * tokenizer: a Gemma-format BPE tokenizer (tokenizer.json) trained on the train files;
  * tokens: each file becomes <bos> + ids + <eos>; files are concatenated in sorted path
    order into one uint16 stream per split.

Outputs (default --out demo-build):
  tokenizer.json, train.u16, heldout.u16 (raw little-endian uint16), data_meta.json
and, tracked in the repo, tools/demo/heldout_files.txt and tools/demo/data_meta.json.

Everything is deterministic: no randomness is used anywhere.
"""
import argparse
import hashlib
import json
import os
import re
import subprocess
import sys
import time

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))

GENERATED_RE = re.compile(r"^// Code generated .* DO NOT EDIT\.$", re.M)
HELDOUT_PER_10000 = 200

# Gemma 4's special ids (the same ids as ../shared/fixtures/tokenizer/gemma4style-tokenizer):
# 0..3 pad/eos/bos/unk; the chat and tool tokens at Gemma 4's ids; the rest of 0..106
# filled with Gemma's placeholder names (plain vocabulary entries, never produced by BPE).
SPECIAL = {
    0: "<pad>", 1: "<eos>", 2: "<bos>", 3: "<unk>",
    46: "<|tool>", 47: "<tool|>", 48: "<|tool_call>", 49: "<tool_call|>",
    50: "<|tool_response>", 51: "<tool_response|>", 52: '<|"|>',
    98: "<|think|>", 100: "<|channel>", 101: "<channel|>", 105: "<|turn>", 106: "<turn|>",
}
NUM_RESERVED = 107  # ids 0..106
FILLER = {4: "<mask>", 5: "[multimodal]"}


def reserved_names():
    names = []
    for i in range(NUM_RESERVED):
        if i in SPECIAL:
            names.append(SPECIAL[i])
        elif i in FILLER:
            names.append(FILLER[i])
        else:
            names.append(f"<unused{i - 6}>")
    return names


BYTE_PIECES = [f"<0x{b:02X}>" for b in range(256)]

# Pre-tokenization used ONLY while training the BPE merges (SentencePiece-like: words keep
# one leading space, newline runs keep the following indentation tabs). The saved tokenizer
# uses Gemma's own pipeline (Replace " "->"▁", Split(" ", MergedWithPrevious), which is a
# no-op after the normalizer), so merges apply over the whole text as in Gemma.
TRAIN_SPLIT_REGEX = (
    r"\n+\t*"                       # newline run + indentation:  "\n", "\n\t\t", "\n\n\t"
    r"|\t+"                         # other tab runs
    r"|▁?[A-Za-z_][A-Za-z_0-9]*"    # identifiers / keywords with an optional leading space
    r"|▁?[0-9]+"                    # numbers
    r"|▁?[^\sA-Za-z_0-9▁]+"         # punctuation / other symbols
    r"|▁+"                          # remaining space runs (alignment)
)


def go_info():
    goroot = subprocess.check_output(["go", "env", "GOROOT"], text=True).strip()
    version = subprocess.check_output(["go", "version"], text=True).strip()
    return goroot, version


def is_heldout(relpath):
    h = hashlib.sha256(relpath.encode("utf-8")).hexdigest()
    return int(h[:16], 16) % 10000 < HELDOUT_PER_10000


def list_files(src):
    files, skipped_generated = [], []
    for dirpath, dirnames, filenames in os.walk(src):
        dirnames[:] = sorted(d for d in dirnames if d not in ("testdata", "vendor"))
        for fn in sorted(filenames):
            if not fn.endswith(".go"):
                continue
            full = os.path.join(dirpath, fn)
            rel = os.path.relpath(full, src).replace(os.sep, "/")
            with open(full, "rb") as f:
                data = f.read()
            text = data.decode("utf-8", errors="strict")
            if GENERATED_RE.search(text):
                skipped_generated.append(rel)
                continue
            files.append((rel, text))
    files.sort(key=lambda x: x[0])
    return files, sorted(skipped_generated)


def choose_alphabet(train_texts, limit_alphabet):
    """The limit_alphabet most frequent characters (after " "->"▁"), ties by code point; always
    with "\n", "\t", "▁". Others are byte-fallback pieces."""
    import collections

    cnt = collections.Counter()
    for t in train_texts:
        cnt.update(t.replace(" ", "▁"))
    ranked = [c for c, _ in sorted(cnt.items(), key=lambda kv: (-kv[1], ord(kv[0])))]
    must = ["\n", "\t", "▁"]
    chosen = must + [c for c in ranked if c not in must][: limit_alphabet - len(must)]
    return sorted(chosen, key=ord)


def train_tokenizer(train_texts, vocab_size, alphabet):
    from tokenizers import Regex, Tokenizer, models, normalizers, pre_tokenizers, trainers

    n_learned = vocab_size - NUM_RESERVED - len(BYTE_PIECES)
    tok = Tokenizer(models.BPE(unk_token="<unk>", byte_fallback=True, fuse_unk=True))
    tok.normalizer = normalizers.Replace(" ", "▁")
    tok.pre_tokenizer = pre_tokenizers.Split(Regex(TRAIN_SPLIT_REGEX), behavior="isolated")
    trainer = trainers.BpeTrainer(
        vocab_size=n_learned,
        min_frequency=2,
        show_progress=False,
        special_tokens=[],
        # the alphabet is given in full (the trainer's own limit_alphabet breaks frequency ties
        # differently from run to run); every given character is kept
        limit_alphabet=len(alphabet),
        initial_alphabet=list(alphabet),
    )
    tok.train_from_iterator(train_texts, trainer=trainer, length=len(train_texts))
    trained = json.loads(tok.to_str())
    tv = trained["model"]["vocab"]
    learned = [p for p, _ in sorted(tv.items(), key=lambda kv: kv[1])]
    merges = trained["model"]["merges"]
    merges = [m if isinstance(m, list) else m.split(" ", 1) for m in merges]

    names = reserved_names() + BYTE_PIECES
    taken = set(names)
    vocab = {n: i for i, n in enumerate(names)}
    for p in learned:
        if p in taken:
            continue
        vocab[p] = len(vocab)
    if len(vocab) != vocab_size:
        # the trainer stops early when it runs out of pairs; keep the vocab exactly vocab_size
        # by adding unused placeholders at the end (never produced by BPE)
        k = 0
        while len(vocab) < vocab_size:
            vocab[f"<unused_tail{k}>"] = len(vocab)
            k += 1

    added = [
        {"id": i, "content": c, "single_word": False, "lstrip": False, "rstrip": False,
         "normalized": False, "special": True}
        for i, c in sorted(SPECIAL.items())
    ]
    out = {
        "version": "1.0",
        "truncation": None,
        "padding": None,
        "added_tokens": added,
        "normalizer": {"type": "Replace", "pattern": {"String": " "}, "content": "▁"},
        "pre_tokenizer": {"type": "Split", "pattern": {"String": " "}, "behavior": "MergedWithPrevious",
                          "invert": False},
        "post_processor": {
            "type": "TemplateProcessing",
            "single": [{"SpecialToken": {"id": "<bos>", "type_id": 0}}, {"Sequence": {"id": "A", "type_id": 0}}],
            "pair": [{"SpecialToken": {"id": "<bos>", "type_id": 0}}, {"Sequence": {"id": "A", "type_id": 0}},
                     {"SpecialToken": {"id": "<bos>", "type_id": 1}}, {"Sequence": {"id": "B", "type_id": 1}}],
            "special_tokens": {"<bos>": {"id": "<bos>", "ids": [2], "tokens": ["<bos>"]}},
        },
        "decoder": {"type": "Sequence", "decoders": [
            {"type": "Replace", "pattern": {"String": "▁"}, "content": " "},
            {"type": "ByteFallback"},
            {"type": "Fuse"},
        ]},
        "model": {
            "type": "BPE", "dropout": None, "unk_token": "<unk>", "continuing_subword_prefix": None,
            "end_of_word_suffix": None, "fuse_unk": True, "byte_fallback": True, "ignore_merges": False,
            "vocab": vocab, "merges": merges,
        },
    }
    return out


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default="demo-build")
    ap.add_argument("--vocab-size", type=int, default=8192)
    ap.add_argument("--limit-alphabet", type=int, default=160)
    ap.add_argument("--alphabet", default=os.path.join(HERE, "alphabet.json"),
                    help="JSON list of the base characters (the one the demo was trained with); "
                         "'' to choose the --limit-alphabet most frequent ones")
    ap.add_argument("--max-files", type=int, default=0, help="testing only: use the first N files")
    args = ap.parse_args()
    os.makedirs(args.out, exist_ok=True)
    t0 = time.time()

    goroot, goversion = go_info()
    src = os.path.join(goroot, "src")
    files, skipped_generated = list_files(src)
    if args.max_files:
        files = files[: args.max_files]
    train = [(p, t) for p, t in files if not is_heldout(p)]
    held = [(p, t) for p, t in files if is_heldout(p)]
    print(f"{goversion}; {len(files)} files ({len(skipped_generated)} generated skipped): "
          f"{len(train)} train, {len(held)} held out", flush=True)

    if args.alphabet and not args.max_files:
        with open(args.alphabet, encoding="utf-8") as f:
            alphabet = json.load(f)
    else:
        alphabet = choose_alphabet([t for _, t in train], args.limit_alphabet)
    tj = train_tokenizer([t for _, t in train], args.vocab_size, alphabet)
    tok_path = os.path.join(args.out, "tokenizer.json")
    with open(tok_path, "w", encoding="utf-8") as f:
        json.dump(tj, f, ensure_ascii=False, indent=1)
    print(f"tokenizer: {len(tj['model']['vocab'])} pieces, {len(tj['model']['merges'])} merges "
          f"({time.time() - t0:.0f}s)", flush=True)

    from tokenizers import Tokenizer
    tok = Tokenizer.from_file(tok_path)
    bos, eos = tok.token_to_id("<bos>"), tok.token_to_id("<eos>")
    assert (bos, eos, tok.token_to_id("<pad>"), tok.token_to_id("<unk>")) == (2, 1, 0, 3)

    stats = {}
    for name, part in (("train", train), ("heldout", held)):
        encs = tok.encode_batch([t for _, t in part], add_special_tokens=True)  # <bos> + ids
        n_unk = 0
        chunks = []
        for (p, t), e in zip(part, encs):
            ids = e.ids
            assert ids[0] == bos
            n_unk += sum(1 for i in ids if i == 3)
            chunks.append(np.asarray(ids + [eos], dtype=np.uint16))
        arr = np.concatenate(chunks)
        arr.astype("<u2").tofile(os.path.join(args.out, f"{name}.u16"))
        nbytes = sum(len(t.encode("utf-8")) for _, t in part)
        stats[name] = {"files": len(part), "bytes": nbytes, "tokens": int(arr.size), "unk_tokens": n_unk,
                       "bytes_per_token": round(nbytes / arr.size, 4)}
        print(f"{name}: {stats[name]} ({time.time() - t0:.0f}s)", flush=True)

    # round-trip check on every held-out file (decode(encode(x)) == x)
    bad = 0
    for p, t in held:
        if tok.decode(tok.encode(t, add_special_tokens=False).ids, skip_special_tokens=False) != t:
            bad += 1
    print(f"held-out round-trip failures: {bad}", flush=True)

    def sha256(path):
        with open(path, "rb") as f:
            return hashlib.sha256(f.read()).hexdigest()

    meta = {
        "go_version": goversion,
        "goroot_src": "$(go env GOROOT)/src",
        "license": "BSD-3-Clause, $(go env GOROOT)/LICENSE (Copyright 2009 The Go Authors)",
        "file_rule": "*.go under GOROOT/src, no testdata/ or vendor/ directories, no generated files "
                     "(line matching ^// Code generated .* DO NOT EDIT\\.$)",
        "split_rule": f"held out iff int(sha256(relpath).hexdigest()[:16], 16) % 10000 < {HELDOUT_PER_10000}",
        "generated_files_skipped": len(skipped_generated),
        "document_format": "<bos>=2 + tokens + <eos>=1 per file, files in sorted path order",
        "token_files": "raw little-endian uint16",
        "vocab_size": args.vocab_size,
        "alphabet_size": len(alphabet),
        "train_split_regex": TRAIN_SPLIT_REGEX,
        "heldout_roundtrip_failures": bad,
        **stats,
        "sha256": {fn: sha256(os.path.join(args.out, fn)) for fn in ("tokenizer.json", "train.u16", "heldout.u16")},
    }
    with open(os.path.join(args.out, "data_meta.json"), "w") as f:
        json.dump(meta, f, indent=1)
    if not args.max_files:
        with open(os.path.join(HERE, "data_meta.json"), "w") as f:
            json.dump(meta, f, indent=1)
            f.write("\n")
        with open(os.path.join(HERE, "heldout_files.txt"), "w") as f:
            f.write(f"# {goversion}; paths relative to $(go env GOROOT)/src; {len(held)} files\n")
            for p, _ in held:
                f.write(p + "\n")
    print(f"done in {time.time() - t0:.0f}s")


if __name__ == "__main__":
    sys.exit(main())
