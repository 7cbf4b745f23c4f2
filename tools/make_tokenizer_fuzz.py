#!/usr/bin/env python3
"""Random hard strings with transformers' ids under SD's real CLIP tokenizer and all-MiniLM-L6-v2,
for a long comparison with the Swift tokenizers (not committed: written to /tmp by default).

Needs the two folders the optional tests use: ~/.cache/score/clip-tokenizer (made by
make_clip_tokenizer_reference.py) and ~/.cache/score/minilm (see make_minilm_reference.py), or
SCORE_CLIP_TOKENIZER_DIR / SCORE_MINILM_DIR. Then:

    .venv-tools/bin/python tools/make_tokenizer_fuzz.py --seed 1 --count 3000
    SCORE_TOKENIZER_FUZZ=/tmp/score-tokenizer-fuzz.json swift test -c release --filter TokenizerFuzzTests

Strings mix words, contractions, special-token texts, every kind of whitespace, accents and
combining marks, CJK/Hangul/kana, fullwidth forms, scripts with marks, digits of many scripts,
emoji sequences, control/format/private-use characters, and random code points from all planes.
"""
import argparse
import json
import os
import random

from transformers import AutoTokenizer


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--count", type=int, default=3000)
    parser.add_argument("--out", default="/tmp/score-tokenizer-fuzz.json")
    args = parser.parse_args()
    rng = random.Random(args.seed)
    clip_dir = os.environ.get("SCORE_CLIP_TOKENIZER_DIR", os.path.expanduser("~/.cache/score/clip-tokenizer"))
    bert_dir = os.environ.get("SCORE_MINILM_DIR", os.path.expanduser("~/.cache/score/minilm"))
    clip, bert = AutoTokenizer.from_pretrained(clip_dir), AutoTokenizer.from_pretrained(bert_dir)
    pools = [
        "".join(chr(rng.randint(0x80, 0x2FFF)) for _ in range(400)),
        "".join(chr(rng.randint(0x3000, 0xD7FF)) for _ in range(400)),
        "".join(chr(rng.randint(0xE000, 0xFFFD)) for _ in range(200)),
        "".join(chr(rng.randint(0x10000, 0x1FFFF)) for _ in range(400)),
        "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ", "0123456789", "!\"#$%&'()*+,-./:;<=>?@[\\]^_`{|}~",
        " \t\n\r\u00a0\u2000\u2003\u3000\u2028\u2029\u0085\u000b\u000c\u180e\u200b\u200c\u200d\u2060\ufeff",
        "àáâãäåæçèéêëìíîïñòóôõöøùúûüýÿÀÁÂÃÄÅÆÇÈÉÊËÌÍÎÏÑÒÓÔÕÖØÙÚÛÜÝßẞİıŁłŒœŠšŽžǅǈǋ",
        "\u0300\u0301\u0302\u0303\u0308\u030a\u0323\u0327\u0338\u20dd\u0488",
        "中文字符日本語漢字한국어텍스트ひらがなカタカナｶﾀｶﾅ", "ＡＢＣａｂｃ１２３！？", "ΑΒΓΣΊΣΥΦΟΣαβγσςάέ", "АБВабвЁё",
        "العربيةעִבְרִית", "ภาษาไทย", "हिन्दी", "①②½²³⁴Ⅻⅻ٣੩", "€£¥¢©®™°±×÷∞≠≤≥√∑∫", "«»‹›“”‘’„‚–—…·•",
        "🐶🚗👩‍👧🏻🇫🇷🫠🪿❤️✨", "\u0000\u0001\u001f\u007f\u0080\u009f\ufffd\ue000\U000f0000\u0378\u00ad", "ﬁﬂﬀ",
        "\U0002B820\U0002B900\U0002CEAF\U00020000",
    ]
    atoms = ["'", "<|endoftext|>", "<|startoftext|>", "[MASK]", "[CLS]", "'s", "'T", "'ll"]
    words = ["photo", "dog", "don't", "it's", "we're", "PUPPY", "Café", "naïve", "résumé", "hello", "world", "sneaker"]
    cases = []
    for _ in range(args.count):
        parts = []
        for _ in range(rng.randint(1, 12)):
            r = rng.random()
            if r < 0.3:
                parts.append(rng.choice(words))
            elif r < 0.45:
                parts.append(" ")
            elif r < 0.55:
                parts.append(rng.choice(atoms))
            else:
                pool = rng.choice(pools)
                parts.append("".join(rng.choice(pool) for _ in range(rng.randint(1, 5))))
        text = "".join(parts)
        cases.append({"text": text, "clip": clip(text)["input_ids"], "bert": bert(text)["input_ids"]})
    with open(args.out, "w", encoding="utf-8") as f:
        json.dump(cases, f, ensure_ascii=False)
    print(f"{len(cases)} strings → {args.out}")


if __name__ == "__main__":
    main()
