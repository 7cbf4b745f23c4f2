#!/usr/bin/env python3
"""Text-encoder parity fixtures: tiny CLIP and BERT models and tokenizers, made offline.

Writes Tests/DiffusionTests/Fixtures/text/:
  clip_vocab/            vocab.json + merges.txt of a tiny byte-level BPE (bytes, bytes</w>,
                         merges learned here from CORPUS, then <|startoftext|>, <|endoftext|>)
  clip_sd1/              diffusers layout, SD1.x-like: text_encoder/{config.json,
                         model.safetensors} (keys with the `text_model.` prefix plus the legacy
                         `position_ids` buffer; quick_gelu; eos_token_id 2, so the pooled output
                         is taken at the highest id) and tokenizer/ (pad <|endoftext|>)
  clip_sd2/              SD2-like: keys without prefix, gelu, eos_token_id = id of <|endoftext|>
                         (pooled at the first eos), vocab larger than the tokenizer's; tokenizer
                         pads with "!"
  bert/                  sentence-transformers layout: config.json, model.safetensors (with the
                         `embeddings.position_ids` buffer), vocab.txt, tokenizer_config.json,
                         sentence_bert_config.json, modules.json, 1_Pooling/config.json
  clip_reference.safetensors, bert_reference.safetensors
                         inputs, outputs and gradients (keys listed in text_fixtures.json)
  text_fixtures.json     the tokenizer cases (text, ids, attention mask per tokenizer) and the
                         index of the reference tensors
  unicode_classes.json   how the tokenizers' normalizers and pre-tokenizers treat every code
                         point up to U+323AF (plus tags, variation selectors and a little private
                         use), as runs [first, class, count]: "clip" (pre-tokenizer on "a?b" and
                         "!?!": L letter, N number, S whitespace, O other), "bert_split" (BERT
                         pre-tokenizer on "a?b": P punctuation, S whitespace, - neither),
                         "bert_normalize" (BERT normalizer on "a?b": R removed, S space,
                         C spaced out as CJK, K kept). These pin the Unicode versions the
                         libraries use (Oniguruma 16.0, unicode_categories 8.0).

Models are random (fixed seeds) with weights scaled up from the usual init so that attention is
far from uniform. The reference runs in float64 from the stored float32 weights; everything is
stored as float32 (ids as I64). Gradients are of sum(out * gout) for random `gout`:
  <m>.grad.embeds        d/d(token-embedding output)  (the input embeddings)
  <m>.grad.token_rows    d/d(token-embedding weight), the rows of <m>.grad.token_ids only
  <m>.grad.<param>       d/d(a parameter), name after the prefix

Tokenizer ids come from transformers' own CLIPTokenizer(vocab, merges) / BertTokenizer(vocab),
and are cross-checked against AutoTokenizer.from_pretrained on the written folders.

Run:  .venv-tools/bin/python tools/make_text_fixtures.py [--out-dir DIR]
"""
import argparse
import json
import os
import shutil
import sys
from collections import Counter

import numpy as np
import torch
from safetensors.numpy import save_file
from transformers import (AutoTokenizer, BertConfig, BertModel, BertTokenizer, CLIPTextConfig,
                          CLIPTextModel, CLIPTokenizer)

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from text_cases import TRICKY_STRINGS  # noqa: E402

torch.set_num_threads(2)
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DEFAULT_OUT = os.path.join(ROOT, "Tests", "DiffusionTests", "Fixtures", "text")

# Text the tiny BPE merges are learned from (not the test strings, so that those split into
# several pieces).
CORPUS = """
A photo of a dog. A photo of a cat. A photograph of a puppy on the grass. A painting of a car.
An automobile parked on the street; a truck, a bus and a bicycle. The sneaker, the sandal and
the ankle boot are shoes. A shirt, a pullover, a dress, a coat and a trouser are clothes.
A bag, a handbag, a purse and a tote. Don't photograph the cat, it's sleeping; we're sure
they'll wake up. I'd say you've seen it. The quick brown fox jumps over the lazy dog.
Stable diffusion draws pictures from words: a portrait in the style of an old painter, a
landscape with mountains and rivers, a city at night with lights. 12 dogs, 3 cats, 2024 photos.
Hello world! How are you? Fine, thanks. Very long prompts are cut at seventy seven tokens.
Special characters: punctuation, numbers and letters with accents like cafe and resume.
"""

BERT_WORDS = """
a an the of on in at and or to is are it its photo photograph dog dogs cat puppy car
automobile sneaker sandal boot shoe shirt dress coat bag purse hello world wow stop here
they we you i say sure go don t s ll d m ve re special tokens and numbers long prompt very
leading trailing tabs new lines words quotes single back roman fraction superscript combining
camel case upper snake unicode punctuation cafe naive resume facade emoji full width zero
break line soft user html amp pipe tilde skin tone flag arabic digit hyphen ated parentheses
brackets braces
""".split()
BERT_PIECES = """
un ##aff ##able super ##cal ##if ##rag ##ili ##stic ##ex ##pi ##ali ##doc ##ious photo ##graph
##s ##ed ##ing ##er ##ly ##tion ##uation punct ##ua wid ##th ##e ##words ##case st ##ra ##ße
istanbul ##bul ##tan is σ ##ι ##σ ##υ ##φ ##ο ﬁ 中 文 字 日 本 語 한 ##국 ##어 ##s ##t
""".split()


def bytes_to_unicode():
    """GPT-2 / CLIP byte → printable character table."""
    printable = (list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1))
                 + list(range(ord("®"), ord("ÿ") + 1)))
    chars = printable[:]
    extra = 0
    for b in range(256):
        if b not in printable:
            printable.append(b)
            chars.append(256 + extra)
            extra += 1
    return [(b, chr(c)) for b, c in zip(printable, chars)]


def learn_bpe(pieces, merges_wanted):
    """Plain BPE on byte-level pieces; ties go to the smallest pair so the result is fixed."""
    words = Counter(pieces)
    seqs = {w: tuple(w[:-1]) + (w[-1] + "</w>",) for w in words}
    merges = []
    for _ in range(merges_wanted):
        pairs = Counter()
        for w, n in words.items():
            s = seqs[w]
            for a, b in zip(s, s[1:]):
                pairs[(a, b)] += n
        if not pairs:
            break
        best = min(pairs, key=lambda p: (-pairs[p], p))
        merges.append(best)
        for w in words:
            s, out, i = seqs[w], [], 0
            while i < len(s):
                if i + 1 < len(s) and (s[i], s[i + 1]) == best:
                    out.append(s[i] + s[i + 1])
                    i += 2
                else:
                    out.append(s[i])
                    i += 1
            seqs[w] = tuple(out)
    return merges


def write_json(path, obj, indent=None):
    with open(path, "w", encoding="utf-8") as f:
        json.dump(obj, f, ensure_ascii=False, indent=indent)
        f.write("\n")


def compact_json(obj, depth=0):
    """JSON with one line per list item or key at the outer levels and each case on one line."""
    pad = " " * (depth + 1)
    if isinstance(obj, dict) and depth < 3 and not ("text" in obj):
        items = [f"{pad}{json.dumps(k, ensure_ascii=False)}: {compact_json(v, depth + 1)}" for k, v in obj.items()]
        return "{\n" + ",\n".join(items) + "\n" + " " * depth + "}"
    if isinstance(obj, list) and obj and isinstance(obj[0], dict):
        return "[\n" + ",\n".join(pad + compact_json(v, depth + 1) for v in obj) + "\n" + " " * depth + "]"
    return json.dumps(obj, ensure_ascii=False, separators=(",", ":"))


def special(content):
    """A special token entry as SD's tokenizer_config.json / special_tokens_map.json hold them."""
    return {"content": content, "lstrip": False, "normalized": True, "rstrip": False, "single_word": False}


def make_clip_vocab(out):
    table = bytes_to_unicode()
    vocab = {}
    for _, c in table:
        vocab[c] = len(vocab)
    for _, c in table:
        vocab[c + "</w>"] = len(vocab)
    with open(os.path.join(out, "vocab.json"), "w") as f:
        json.dump({**vocab, "<|startoftext|>": len(vocab), "<|endoftext|>": len(vocab) + 1}, f)
    with open(os.path.join(out, "merges.txt"), "w") as f:
        f.write("#version: 0.2\n")
    base = CLIPTokenizer(os.path.join(out, "vocab.json"), os.path.join(out, "merges.txt"))
    backend = base.backend_tokenizer
    pieces = [p for p, _ in backend.pre_tokenizer.pre_tokenize_str(backend.normalizer.normalize_str(CORPUS))]
    merges = learn_bpe(pieces, 300)
    for a, b in merges:
        if a + b not in vocab:
            vocab[a + b] = len(vocab)
    vocab["<|startoftext|>"] = len(vocab)
    vocab["<|endoftext|>"] = len(vocab)
    write_json(os.path.join(out, "vocab.json"), vocab)
    with open(os.path.join(out, "merges.txt"), "w", encoding="utf-8") as f:
        f.write("#version: 0.2\n" + "".join(f"{a} {b}\n" for a, b in merges))
    return vocab


def write_clip_tokenizer(folder, vocab_dir, pad):
    os.makedirs(folder, exist_ok=True)
    for name in ("vocab.json", "merges.txt"):
        shutil.copy(os.path.join(vocab_dir, name), os.path.join(folder, name))
    bos, eos = special("<|startoftext|>"), special("<|endoftext|>")
    write_json(os.path.join(folder, "tokenizer_config.json"), {
        "add_prefix_space": False, "bos_token": bos, "do_lower_case": True, "eos_token": eos,
        "errors": "replace", "model_max_length": 77, "pad_token": pad,
        "tokenizer_class": "CLIPTokenizer", "unk_token": eos}, indent=2)
    write_json(os.path.join(folder, "special_tokens_map.json"),
               {"bos_token": bos, "eos_token": eos, "pad_token": pad, "unk_token": eos}, indent=2)


def tokenizer_cases(tok, max_length):
    cases = []
    for text in TRICKY_STRINGS:
        enc = tok(text, padding="max_length", max_length=max_length, truncation=True)
        cases.append({"text": text, "input_ids": enc["input_ids"], "attention_mask": enc["attention_mask"],
                      "tokens": tok.convert_ids_to_tokens(enc["input_ids"][:sum(enc["attention_mask"])]),
                      "full_ids": tok(text)["input_ids"]})
    return cases


def scale_init(model, seed):
    """Random weights of order one (the usual 0.02-scale init makes attention nearly uniform)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "embedding" in name:
                p.copy_(torch.randn(p.shape, generator=g))
            elif "norm" in name.lower() and name.endswith("weight"):
                p.copy_(1 + 0.2 * torch.randn(p.shape, generator=g))
            elif name.endswith("bias"):
                p.copy_(0.2 * torch.randn(p.shape, generator=g))
            else:
                p.copy_(torch.randn(p.shape, generator=g) * (1.5 / p.shape[-1] ** 0.5))


def f32(t):
    return t.detach().to(torch.float32).numpy().copy()


def clip_case(name, config, input_ids, seed, rng, tensors, attention_mask=None):
    torch.manual_seed(seed)
    model = CLIPTextModel(config)
    scale_init(model, seed)
    weights = {k: f32(v) for k, v in model.state_dict().items()}
    model = model.double().eval()
    ids = torch.tensor(input_ids)
    captured = {}

    def keep(_module, _inputs, output):
        output.retain_grad()
        captured["embeds"] = output

    hook = model.embeddings.token_embedding.register_forward_hook(keep)
    out = model(input_ids=ids, output_hidden_states=True)
    hook.remove()
    last, pooled = out.last_hidden_state, out.pooler_output
    assert len(out.hidden_states) == config.num_hidden_layers + 1
    g_last = torch.from_numpy(rng.standard_normal(last.shape).astype(np.float32).astype(np.float64))
    g_pool = torch.from_numpy(rng.standard_normal(pooled.shape).astype(np.float32).astype(np.float64))
    ((last * g_last).sum() + (pooled * g_pool).sum()).backward()
    token_ids = sorted(set(int(i) for i in ids.flatten()))
    n = config.num_hidden_layers
    tensors.update({
        f"{name}.input_ids": ids.numpy().astype(np.int64),
        f"{name}.last_hidden_state": f32(last),
        f"{name}.pooled": f32(pooled),
        f"{name}.penultimate": f32(out.hidden_states[-2]),
        f"{name}.embeddings": f32(out.hidden_states[0]),
        f"{name}.gout.last_hidden_state": f32(g_last),
        f"{name}.gout.pooled": f32(g_pool),
        f"{name}.grad.embeds": f32(captured["embeds"].grad),
        f"{name}.grad.token_ids": np.array(token_ids, dtype=np.int64),
        f"{name}.grad.token_rows": f32(model.embeddings.token_embedding.weight.grad[token_ids]),
        f"{name}.grad.encoder.layers.0.self_attn.q_proj.weight": f32(model.encoder.layers[0].self_attn.q_proj.weight.grad),
        f"{name}.grad.encoder.layers.{n - 1}.mlp.fc1.weight": f32(model.encoder.layers[n - 1].mlp.fc1.weight.grad),
        f"{name}.grad.embeddings.position_embedding.weight": f32(model.embeddings.position_embedding.weight.grad),
        f"{name}.grad.final_layer_norm.weight": f32(model.final_layer_norm.weight.grad),
    })
    if attention_mask is not None:
        with torch.no_grad():
            masked = model(input_ids=ids, attention_mask=torch.tensor(attention_mask))
        tensors[f"{name}.attention_mask"] = np.array(attention_mask, dtype=np.int64)
        tensors[f"{name}.masked.last_hidden_state"] = f32(masked.last_hidden_state)
    return weights


def bert_case(name, config, input_ids, attention_mask, seed, rng, tensors):
    torch.manual_seed(seed)
    model = BertModel(config)
    scale_init(model, seed)
    weights = {k: f32(v) for k, v in model.state_dict().items()}
    model = model.double().eval()
    ids, mask = torch.tensor(input_ids), torch.tensor(attention_mask)
    captured = {}

    def keep(_module, _inputs, output):
        output.retain_grad()
        captured["embeds"] = output

    hook = model.embeddings.word_embeddings.register_forward_hook(keep)
    out = model(input_ids=ids, attention_mask=mask)
    hook.remove()
    last = out.last_hidden_state
    m = mask.unsqueeze(-1).to(last.dtype)
    mean = (last * m).sum(1) / m.sum(1).clamp(min=1e-9)
    normalized = torch.nn.functional.normalize(mean, p=2, dim=1)
    g_last = torch.from_numpy(rng.standard_normal(last.shape).astype(np.float32).astype(np.float64))
    g_norm = torch.from_numpy(rng.standard_normal(normalized.shape).astype(np.float32).astype(np.float64))
    ((last * g_last).sum() + (normalized * g_norm).sum()).backward()
    token_ids = sorted(set(int(i) for i in ids.flatten()))
    tensors.update({
        f"{name}.input_ids": ids.numpy().astype(np.int64),
        f"{name}.attention_mask": mask.numpy().astype(np.int64),
        f"{name}.last_hidden_state": f32(last),
        f"{name}.pooler_output": f32(out.pooler_output),
        f"{name}.mean_pooled": f32(mean),
        f"{name}.normalized": f32(normalized),
        f"{name}.gout.last_hidden_state": f32(g_last),
        f"{name}.gout.normalized": f32(g_norm),
        f"{name}.grad.embeds": f32(captured["embeds"].grad),
        f"{name}.grad.token_ids": np.array(token_ids, dtype=np.int64),
        f"{name}.grad.token_rows": f32(model.embeddings.word_embeddings.weight.grad[token_ids]),
        f"{name}.grad.encoder.layer.0.attention.self.query.weight": f32(model.encoder.layer[0].attention.self.query.weight.grad),
        f"{name}.grad.encoder.layer.1.output.LayerNorm.weight": f32(model.encoder.layer[1].output.LayerNorm.weight.grad),
    })
    return weights


def unicode_classes(clip_tok, bert_tok):
    cpre, bpre = clip_tok.backend_tokenizer.pre_tokenizer, bert_tok.backend_tokenizer.pre_tokenizer
    bnorm = bert_tok.backend_tokenizer.normalizer
    points = [c for c in list(range(0x323B0)) + list(range(0xE0000, 0xE01F0)) + list(range(0xF0000, 0xF0010))
              if not 0xD800 <= c <= 0xDFFF]
    tables = {"clip": [], "bert_split": [], "bert_normalize": []}

    def add(name, c, cls):
        runs = tables[name]
        if runs and runs[-1][1] == cls and runs[-1][0] + runs[-1][2] == c:
            runs[-1][2] += 1
        else:
            runs.append([c, cls, 1])

    for c in points:
        ch = chr(c)
        if len(cpre.pre_tokenize_str("a" + ch + "b")) == 1:
            add("clip", c, "L")
        else:
            n = len(cpre.pre_tokenize_str("!" + ch + "!"))
            add("clip", c, "O" if n == 1 else "S" if n == 2 else "N")
        n = len(bpre.pre_tokenize_str("a" + ch + "b"))
        add("bert_split", c, "P" if n == 3 else "S" if n == 2 else "-")
        y = bnorm.normalize_str("a" + ch + "b")
        add("bert_normalize", c, "R" if y == "ab" else "S" if y == "a b" else "C" if y == f"a {ch} b" else "K")
    return tables


def save_tensors(path, tensors, generator):
    save_file({k: np.ascontiguousarray(v) for k, v in sorted(tensors.items())}, path,
              metadata={"generator": generator})


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--out-dir", default=DEFAULT_OUT)
    args = parser.parse_args()
    out = args.out_dir
    # Replace what this script makes; leave the other scripts' references (minilm_reference.json,
    # clip_real_reference.json) alone.
    for name in ("clip_sd1", "clip_sd2", "bert", "clip_vocab"):
        shutil.rmtree(os.path.join(out, name), ignore_errors=True)
    os.makedirs(out, exist_ok=True)
    rng = np.random.default_rng(2024)
    generator = f"tools/make_text_fixtures.py, torch {torch.__version__}, float64 reference"
    index = {"clip_tokenizers": {}, "bert_tokenizer": {}, "models": {}}

    # --- CLIP tokenizer -------------------------------------------------------------------
    vocab_dir = os.path.join(out, "clip_vocab")  # scratch: each tokenizer folder gets a copy
    os.makedirs(vocab_dir)
    vocab = make_clip_vocab(vocab_dir)
    eos_id = vocab["<|endoftext|>"]
    clip_tokenizers = {}
    for tag, pad in (("sd1", "<|endoftext|>"), ("sd2", "!")):
        folder = os.path.join(out, f"clip_{tag}", "tokenizer")
        write_clip_tokenizer(folder, vocab_dir, pad)
        # From the folder, special tokens marked "normalized" in tokenizer_config.json are also
        # found after lower-casing; built from the two files, they match the raw text only.
        tok = AutoTokenizer.from_pretrained(folder)
        files = CLIPTokenizer(os.path.join(vocab_dir, "vocab.json"), os.path.join(vocab_dir, "merges.txt"), pad_token=pad)
        cases = tokenizer_cases(tok, 77)
        for c in cases:
            c["input_ids_files"] = files(c["text"], padding="max_length", max_length=77, truncation=True)["input_ids"]
        index["clip_tokenizers"][tag] = {"pad_token": pad, "pad_token_id": tok.pad_token_id, "max_length": 77,
                                         "cases": cases}
        clip_tokenizers[tag] = tok
    shutil.rmtree(vocab_dir)

    # --- CLIP models ----------------------------------------------------------------------
    tensors = {}
    prompts = ["a photo of a dog", "A painting of a CAT, don't you think? " * 2]
    sd1 = clip_tokenizers["sd1"](prompts, padding="max_length", max_length=77, truncation=True)
    config1 = CLIPTextConfig(vocab_size=len(vocab), hidden_size=32, intermediate_size=64, num_hidden_layers=3,
                             num_attention_heads=4, max_position_embeddings=77, hidden_act="quick_gelu",
                             layer_norm_eps=1e-5, bos_token_id=0, eos_token_id=2, pad_token_id=1,
                             projection_dim=32, attn_implementation="eager")
    w1 = clip_case("sd1", config1, sd1["input_ids"], 11, rng, tensors)
    sd2 = clip_tokenizers["sd2"](prompts[:1], padding="max_length", max_length=77, truncation=True)
    # Row 1 holds ids above the eos id before its eos: the pooled state must come from the
    # first eos, not from the highest id.
    crafted = [vocab["<|startoftext|>"], 70, len(vocab) + 3, 200, len(vocab) + 7, eos_id, 5, eos_id] + [0] * 69
    config2 = CLIPTextConfig(vocab_size=len(vocab) + 8, hidden_size=32, intermediate_size=48, num_hidden_layers=2,
                             num_attention_heads=2, max_position_embeddings=77, hidden_act="gelu",
                             layer_norm_eps=1e-5, bos_token_id=vocab["<|startoftext|>"], eos_token_id=eos_id,
                             pad_token_id=1, projection_dim=32, attn_implementation="eager")
    mask2 = [sd2["attention_mask"][0], [1] * 8 + [0] * 69]
    w2 = clip_case("sd2", config2, [sd2["input_ids"][0], crafted], 12, rng, tensors, attention_mask=mask2)
    save_tensors(os.path.join(out, "clip_reference.safetensors"), tensors, generator)

    for tag, config, weights, prefixed in (("sd1", config1, w1, True), ("sd2", config2, w2, False)):
        folder = os.path.join(out, f"clip_{tag}", "text_encoder")
        os.makedirs(folder)
        config.to_json_file(os.path.join(folder, "config.json"), use_diff=False)
        stored = {("text_model." if prefixed else "") + k: v for k, v in weights.items()}
        if prefixed:  # the buffer old checkpoints carry
            stored["text_model.embeddings.position_ids"] = np.arange(77, dtype=np.int64)[None]
        save_file(stored, os.path.join(folder, "model.safetensors"), metadata={"format": "pt"})
        index["models"][f"clip_{tag}"] = sorted(weights)
        # transformers must read back what was written, prefixed or not
        back = CLIPTextModel.from_pretrained(folder).eval()
        with torch.no_grad():
            got = back(input_ids=torch.tensor(tensors[f"{tag}.input_ids"])).last_hidden_state.numpy()
        assert np.allclose(got, tensors[f"{tag}.last_hidden_state"], atol=1e-4), tag

    # --- BERT -----------------------------------------------------------------------------
    bert_dir = os.path.join(out, "bert")
    os.makedirs(os.path.join(bert_dir, "1_Pooling"))
    seen, bert_vocab = set(), []
    for t in (["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"] + list("!\"#$%&'()*+,-./:;<=>?@[\\]^_`{|}~")
              + list("0123456789") + list("abcdefghijklmnopqrstuvwxyz")
              + ["##" + c for c in "abcdefghijklmnopqrstuvwxyz0123456789"] + BERT_WORDS + BERT_PIECES):
        if t not in seen:
            seen.add(t)
            bert_vocab.append(t)
    with open(os.path.join(bert_dir, "vocab.txt"), "w", encoding="utf-8") as f:
        f.write("".join(t + "\n" for t in bert_vocab))
    write_json(os.path.join(bert_dir, "tokenizer_config.json"), {
        "do_lower_case": True, "unk_token": "[UNK]", "sep_token": "[SEP]", "pad_token": "[PAD]",
        "cls_token": "[CLS]", "mask_token": "[MASK]", "tokenize_chinese_chars": True, "strip_accents": None,
        "tokenizer_class": "BertTokenizer", "model_max_length": 512})
    write_json(os.path.join(bert_dir, "special_tokens_map.json"), {
        "unk_token": "[UNK]", "sep_token": "[SEP]", "pad_token": "[PAD]", "cls_token": "[CLS]", "mask_token": "[MASK]"})
    write_json(os.path.join(bert_dir, "sentence_bert_config.json"), {"max_seq_length": 48, "do_lower_case": False})
    write_json(os.path.join(bert_dir, "modules.json"), [
        {"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"},
        {"idx": 1, "name": "1", "path": "1_Pooling", "type": "sentence_transformers.models.Pooling"},
        {"idx": 2, "name": "2", "path": "2_Normalize", "type": "sentence_transformers.models.Normalize"}], indent=2)
    write_json(os.path.join(bert_dir, "1_Pooling", "config.json"), {
        "word_embedding_dimension": 32, "pooling_mode_cls_token": False, "pooling_mode_mean_tokens": True,
        "pooling_mode_max_tokens": False, "pooling_mode_mean_sqrt_len_tokens": False}, indent=2)
    btok = BertTokenizer(os.path.join(bert_dir, "vocab.txt"))
    bauto = AutoTokenizer.from_pretrained(bert_dir)
    bcases = tokenizer_cases(btok, 48)
    for c in bcases:  # folder and file give the same ids here
        assert bauto(c["text"], padding="max_length", max_length=48, truncation=True)["input_ids"] == c["input_ids"]
    index["bert_tokenizer"] = {"max_length": 48, "cases": bcases}

    tensors = {}
    sentences = ["a photo of a dog", "Ünïcödé, punctuation! unaffable words", "hello"]
    enc = btok(sentences, padding="longest", truncation=True, max_length=48)
    bconfig = BertConfig(vocab_size=len(bert_vocab), hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                         intermediate_size=64, hidden_act="gelu", max_position_embeddings=64, type_vocab_size=2,
                         layer_norm_eps=1e-12, pad_token_id=0, attn_implementation="eager")
    wb = bert_case("bert", bconfig, enc["input_ids"], enc["attention_mask"], 13, rng, tensors)
    index["bert_sentences"] = sentences
    save_tensors(os.path.join(out, "bert_reference.safetensors"), tensors, generator)
    bconfig.to_json_file(os.path.join(bert_dir, "config.json"), use_diff=False)
    stored = dict(wb)
    stored["embeddings.position_ids"] = np.arange(64, dtype=np.int64)[None]
    save_file(stored, os.path.join(bert_dir, "model.safetensors"), metadata={"format": "pt"})
    index["models"]["bert"] = sorted(wb)

    with open(os.path.join(out, "unicode_classes.json"), "w") as f:
        tables = unicode_classes(clip_tokenizers["sd1"], btok)
        f.write("{\n" + ",\n".join(f" {json.dumps(k)}: {json.dumps(v, separators=(',', ':'))}"
                                   for k, v in tables.items()) + "\n}\n")

    index["generator"] = generator
    with open(os.path.join(out, "text_fixtures.json"), "w", encoding="utf-8") as f:
        f.write(compact_json(index) + "\n")
    total = 0
    for dirpath, _, files in os.walk(out):
        for f in files:
            total += os.path.getsize(os.path.join(dirpath, f))
    print(f"CLIP vocab {len(vocab)} tokens, BERT vocab {len(bert_vocab)} tokens; {out}: {total} bytes")


if __name__ == "__main__":
    main()
