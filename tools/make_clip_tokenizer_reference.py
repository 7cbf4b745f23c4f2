#!/usr/bin/env python3
"""The real CLIP tokenizer of Stable Diffusion, rebuilt offline, and reference ids for it.

SD1.x/SD2 ship `tokenizer/vocab.json` + `merges.txt` of OpenAI's CLIP BPE (49408 tokens). The
same BPE is in the PyPI wheel of open_clip_torch (`open_clip/bpe_simple_vocab_16e6.txt.gz`), and
the two files follow from it: the first 48894 merges after the header, and a vocabulary of the
256 byte characters, the same with `</w>`, each merge joined, then <|startoftext|> and
<|endoftext|> (ids 49406, 49407). This script writes that folder (with SD1.5's
tokenizer_config.json / special_tokens_map.json, or SD2's pad "!" with --pad "!") and, with
transformers' tokenizer loaded from the folder, the ids of the hard strings of text_cases.py
to Tests/DiffusionTests/Fixtures/text/clip_real_reference.json.

    python -m pip download --no-deps -d /tmp/oc open_clip_torch==3.3.0
    .venv-tools/bin/python tools/make_clip_tokenizer_reference.py --wheel /tmp/oc/open_clip_torch-3.3.0-py3-none-any.whl

The folder goes to ~/.cache/score/clip-tokenizer (or --folder), where the Swift test
TokenizerTests.testRealCLIPVocabularyMatchesTransformers looks (or SCORE_CLIP_TOKENIZER_DIR).
"""
import argparse
import gzip
import io
import json
import os
import sys
import zipfile

from transformers import AutoTokenizer

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from text_cases import TRICKY_STRINGS  # noqa: E402
from make_text_fixtures import bytes_to_unicode, special, write_json  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
OUT = os.path.join(ROOT, "Tests", "DiffusionTests", "Fixtures", "text", "clip_real_reference.json")


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--wheel", required=True, help="open_clip_torch wheel (or the .txt.gz itself)")
    parser.add_argument("--folder", default=os.path.expanduser("~/.cache/score/clip-tokenizer"))
    parser.add_argument("--out", default=OUT)
    args = parser.parse_args()
    if args.wheel.endswith(".gz"):
        raw = open(args.wheel, "rb").read()
    else:
        with zipfile.ZipFile(args.wheel) as z:
            raw = z.read("open_clip/bpe_simple_vocab_16e6.txt.gz")
    lines = gzip.GzipFile(fileobj=io.BytesIO(raw)).read().decode("utf-8").split("\n")
    merges = [tuple(line.split()) for line in lines[1:49152 - 256 - 2 + 1]]
    chars = [c for _, c in bytes_to_unicode()]
    tokens = chars + [c + "</w>" for c in chars] + ["".join(m) for m in merges] + ["<|startoftext|>", "<|endoftext|>"]
    vocab = {t: i for i, t in enumerate(tokens)}
    assert len(vocab) == 49408, len(vocab)

    os.makedirs(args.folder, exist_ok=True)
    write_json(os.path.join(args.folder, "vocab.json"), vocab)
    with open(os.path.join(args.folder, "merges.txt"), "w", encoding="utf-8") as f:
        f.write("#version: 0.2\n" + "".join(f"{a} {b}\n" for a, b in merges))
    bos, eos = special("<|startoftext|>"), special("<|endoftext|>")
    write_json(os.path.join(args.folder, "tokenizer_config.json"), {
        "add_prefix_space": False, "bos_token": bos, "do_lower_case": True, "eos_token": eos, "errors": "replace",
        "model_max_length": 77, "pad_token": "<|endoftext|>", "tokenizer_class": "CLIPTokenizer", "unk_token": eos},
        indent=2)
    write_json(os.path.join(args.folder, "special_tokens_map.json"),
               {"bos_token": bos, "eos_token": eos, "pad_token": "<|endoftext|>", "unk_token": eos}, indent=2)

    tok = AutoTokenizer.from_pretrained(args.folder)
    cases = [{"text": t, "input_ids": tok(t, padding="max_length", max_length=77, truncation=True)["input_ids"]}
             for t in TRICKY_STRINGS]
    with open(args.out, "w", encoding="utf-8") as f:
        f.write("{\n \"source\": \"open_clip/bpe_simple_vocab_16e6.txt.gz (open_clip_torch wheel) → SD1.5 tokenizer/\",\n"
                " \"cases\": [\n" + ",\n".join("  " + json.dumps(c, ensure_ascii=False) for c in cases) + "\n ]\n}\n")
    print(f"{args.folder}: vocab {len(vocab)}, merges {len(merges)}; wrote {args.out} ({os.path.getsize(args.out)} bytes)")


if __name__ == "__main__":
    main()
