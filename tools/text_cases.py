"""Strings that the text-encoder fixtures tokenize: shared by make_text_fixtures.py and
make_minilm_reference.py so the tiny and the real vocabularies see the same hard cases."""

TRICKY_STRINGS = [
    "a photo of a dog",
    "A Photo  of   a DOG!!",
    "don't stop, it's 2024; we're here & they'll go. I'd say I'm sure you've DON'T",
    "Ünïcödé, punctuation!",
    "café naïve résumé façade e\u0301 A\u030A",
    "emoji 🐶🚗👩\u200d👩\u200d👧 and 中文字符 and ｆｕｌｌｗｉｄｔｈ",
    "numbers 12345 3.14 1,000,000 #1 50% 0x1F",
    "  leading and trailing\t tabs\nnewlines\r\n  ",
    "hyphen-ated words, (parentheses) [brackets] {braces} \"quotes\" 'single' `back`",
    "ß straße İstanbul ΣΊΣΥΦΟΣ ǅ ﬁ ①②",
    "zero\u200bwidth no\u00a0break\u3000ideographic\u2028line \u0085nel \u0000nul \ufffd repl \u00adsoft",
    "special <|endoftext|> and <|startoftext|> and [MASK] [CLS] <|ENDOFTEXT|> tokens, hello! wow!!",
    "",
    "$5 + 3 = 8 ^_^ ~tilde~ |pipe| @user <html>&amp; a/b\\c",
    "unaffable supercalifragilisticexpialidocious " + "x" * 101 + " " + "y" * 100,
    "'''s ''quoted'' it''s 'sup 'S 'LL",
    "Ⅻ roman ½ fraction x² superscript ٣ arabic digit",
    "日本語のテキスト 한국어 텍스트",
    "\U0001F600\U0001F3FB skin tone, flag 🇫🇷, new 🫠🪿",
    "العربية עִבְרִית ภาษาไทย ṩ̂ combining",
    "CamelCaseWords and UPPER_snake_case",
    "a very long prompt " * 30,
]
