#!/usr/bin/env python3
"""Reference encodings for the C++ tokenizer's tests (tests/unit/test_tokenizer.cpp).

For each zoo tokenizer (zoo/models/tokenizers/{qwen2,bert,wordlevel}, made by
zoo/tokenizer_zoo.py) the `tokenizers` library encodes the same seeded corpus
of >= 10,000 strings: chat prompts, plain prompts, Unicode text (accents,
combining marks, CJK, Hangul, Arabic, Devanagari, emoji with ZWJ sequences,
NBSP and other Unicode spaces), whitespace runs, numbers, contractions,
special tokens inside text, the empty string and random UTF-8 soup.

  OUT/<name>.jsonl   one object a line:
      {"text": s, "ids": [...], "offsets": [[b, e], ...]}        encode(s), add_special_tokens=True;
                                                                  offsets in bytes of s's UTF-8
      {"text": a, "pair": b, "ids": [...]}                        encode(a, b) (bert only)
      {"decode": [...], "skip_special": bool, "text": s}          decode(ids)
      {"chat": [{"role": r, "content": [{"type": "text", "text": t} | {"type": "image", "tokens": n}]}],
       "add_generation_prompt": bool, "prompt": s, "ids": [...]}   (qwen2 only) the chat template rendered
                                                                  by transformers, each image's <|image_pad|>
                                                                  widened to n, then encoded

And the same (5,000 strings) for four tokenizers built here, OUT/<name>.json
with OUT/<name>.jsonl, that use the parts of tokenizer.json the zoo's do not
(see option_tokenizers).

usage: .venv-hf/bin/python zoo/tokenizer_fixtures.py --out DIR   (zoo/setup_hf_venv.sh makes the venv)
"""
import argparse
import json
import os
import random
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
# zoo/ is sys.path[0] for this script; keep it from shadowing installed packages.
sys.path = [p for p in sys.path if os.path.abspath(p or ".") != HERE]

from tokenizers import (AddedToken, Regex, Tokenizer, decoders, models,  # noqa: E402
                        normalizers, pre_tokenizers, processors, trainers)

MODELS = os.path.join(HERE, "models", "tokenizers")

COLOURS = ["red", "green", "blue", "yellow", "orange", "purple", "Black", "WHITE", "grey", "pink", "teal"]
SHAPES = ["circle", "square", "triangle", "star", "hexagon", "rectangle", "cross", "diamond", "ellipse"]
WORDS = ["the", "a", "is", "are", "there", "how", "many", "count", "image", "left", "of", "right", "above",
         "below", "next", "to", "and", "or", "not", "zebra", "quux", "xylophone", "Tokenization", "unbelievable"]
UNICODE_WORDS = [
    "café", "cafe\u0301", "naïve", "Straße", "ÅNGSTRÖM", "Øre", "ﬁne", "Ⅻ", "½", "²", "ﬀ", "İstanbul", "ΣΊΣΥΦΟΣ",
    "e\u0308\u0301", "a\u030a", "\u1e9b\u0323", "Ω", "Å", "ｆｕｌｌｗｉｄｔｈ",
    "赤い丸", "有多少个", "正方形", "東京", "漢字かなカナ", "빨간", "원은", "한국어", "\u1100\u1161\u11a8",
    "الدوائر", "مربع", "العربية", "कितने", "लाल", "वृत्त", "हिन्दी", "Сколько", "кругов", "Ελληνικά",
    "🙂", "🔴", "🟦", "⭐", "👍🏽", "👩\u200d💻", "👨\u200d👩\u200d👧\u200d👦", "🏳️\u200d🌈", "🇫🇷", "1\ufe0f\u20e3",
    "\u2764\ufe0f", "🫠", "“quoted”", "‘single’", "…", "•", "→", "—", "–", "«»", "¿", "¡", "€", "£", "¥", "©", "™",
    "\ue000", "\U000f0000", "\u0378", "\u08d4", "\u2e43", "\u1df6", "\ufffd", "\u00ad", "\u200b", "\ufeff",
]
SPACES = [" ", "  ", "\t", "\n", "\r\n", "\r", "\n\n", " \n ", "\u00a0", "\u2009", "\u3000", "\u202f", "\u2028",
          "\u0085", "\u000b", "\u000c", "\u200a", "   \t  ", "\t\t", "\n \n"]
CONTRACTIONS = ["it's", "they'LL", "I'M", "we'Re", "don't", "you've", "she'd", "'s", "'T", "can't", "o'clock",
                "rock'n'roll", "'ll", "' s", "''"]
CODE = ["def f(x):\n    return x[0] + 1\n", "for (int i = 0; i < n; ++i) { a[i] = b[i] * 2; }",
        "{\"box\": [1, 2, 3, 4], \"ok\": true}", "if (a && (b || !c)) { return {k: [v]}; }", "x = y ** 2 // 3 % 4",
        "print('hello, world!')", "<div class=\"x\">&amp;</div>", "#include <vector>", "a->b::c<d>(e);",
        "([{}])", "((()))", "[[[]]]", "{[()()]}", "})]([{"]


def specials_for(name):
    if name == "bytelevel_options":
        return ["<mask>", "<s>", "</s>", "[NEW]", "[new]", "word", "sword", "word!", "<rs>", "<pad>", "  <mask>",
                "<mask>  ", "<rs>   x"]
    if name in ("metaspace_options", "split_options"):
        return ["<unk>", "<s>", "</s>", "[UNK]", "[SEP]", "▁", "▁▁"]
    if name == "qwen2":
        return ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|object_ref_start|>", "<|object_ref_end|>",
                "<|box_start|>", "<|box_end|>", "<|quad_start|>", "<|quad_end|>", "<|vision_start|>",
                "<|vision_end|>", "<|vision_pad|>", "<|image_pad|>", "<|video_pad|>", "<|im_start", "<|",
                "|>", "<|IM_START|>"]
    return ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "[mask]", "[CLS", "MASK]", "[ SEP ]"]


def number(rng):
    k = rng.randrange(7)
    if k == 0:
        return str(rng.randrange(20))
    if k == 1:
        return "".join(rng.choice("0123456789") for _ in range(rng.randrange(5, 40)))
    if k == 2:
        return f"{rng.uniform(-1000, 1000):.{rng.randrange(1, 6)}f}"
    if k == 3:
        return f"{rng.randrange(10**9):,}"
    if k == 4:
        return rng.choice(["1e-5", "3.14159", "0.5", "2,5", "1/2", "10%", "#42", "v1.2.3", "0x1F", "٣", "५", "１２"])
    if k == 5:
        return " ".join(str(rng.randrange(20)) for _ in range(rng.randrange(2, 8)))
    return str(rng.randrange(20)) + rng.choice(["", "th", "st", "px", "%", "."])


def soup(rng):
    """Random code points from the planes text uses, controls and unassigned ones included."""
    ranges = [(0x20, 0x7e), (0x00, 0x1f), (0x7f, 0x2ff), (0x300, 0x36f), (0x370, 0x52f), (0x590, 0x6ff),
              (0x900, 0x97f), (0x1100, 0x11ff), (0x2000, 0x206f), (0x2190, 0x2bff), (0x3000, 0x30ff),
              (0x4e00, 0x9fff), (0xac00, 0xd7a3), (0xe000, 0xe0ff), (0xf900, 0xfaff), (0xfe00, 0xfe0f),
              (0xff00, 0xffef), (0x1f300, 0x1faff), (0x10000, 0x1007f), (0x20000, 0x2000f), (0xe0000, 0xe007f)]
    out = []
    for _ in range(rng.randrange(1, 30)):
        lo, hi = rng.choice(ranges)
        out.append(chr(rng.randint(lo, hi)))
    return "".join(out)


def prompt(rng):
    c, s, k = rng.choice(COLOURS), rng.choice(SHAPES), rng.randrange(20)
    return rng.choice([
        f"How many {c} {s}s are there?",
        f"how many {c} {s}s are there in the image? Answer with a number.",
        f"There are {k} {c} {s}s.",
        f"Describe the image.",
        f"Is the {c} {s} left of the {rng.choice(SHAPES)}?",
        f"COUNT THE {c.upper()} {s.upper()}S!!!",
        f"A photo of {k} {s}s, {c} and {rng.choice(COLOURS)}; {k + 1}? no: {k}.",
    ])


def mixed(rng, name):
    pools = [WORDS, UNICODE_WORDS, SPACES, CONTRACTIONS, CODE, specials_for(name)]
    parts = []
    for _ in range(rng.randrange(1, 14)):
        r = rng.random()
        if r < 0.1:
            parts.append(number(rng))
        elif r < 0.15:
            parts.append(prompt(rng))
        else:
            parts.append(rng.choice(rng.choice(pools)))
        if rng.random() < 0.6:
            parts.append(rng.choice([" ", " ", " ", "", rng.choice(SPACES)]))
    return "".join(parts)


def corpus(name, rng, n):
    """n strings, each kind in turn."""
    fixed = ["", " ", "  ", "\n", "\t", "a", "A", "0", "19", "12345678901234567890", " leading", "trailing ",
             "  both  ", "\r\n\r\n", "it's 5 o'clock", "I'M HERE", "we'LL see", "hello world", "Hello World!",
             "héllo wörld", "e\u0301", "日本語のテキスト", "한국어 텍스트", "مرحبا بالعالم", "नमस्ते दुनिया",
             "👩\u200d💻 codes", "a\u00a0b", "a\u3000b", "a\u2009b"]
    fixed += [f"{s}" for s in specials_for(name)]
    fixed += [f"x{s}y" for s in specials_for(name)] + [f"x {s} y" for s in specials_for(name)]
    fixed += [f"{s}{s}" for s in specials_for(name)] + [f" {s} " for s in specials_for(name)]
    out = list(fixed)
    kinds = ["prompt", "unicode", "spaces", "numbers", "contractions", "specials", "soup", "code", "mixed", "mixed"]
    i = 0
    while len(out) < n:
        kind = kinds[i % len(kinds)]
        i += 1
        if kind == "prompt":
            s = prompt(rng)
        elif kind == "unicode":
            s = rng.choice([" ", "", "\u00a0", "\u3000"]).join(rng.choice(UNICODE_WORDS)
                                                                for _ in range(rng.randrange(1, 8)))
        elif kind == "spaces":
            s = "".join(rng.choice(SPACES + ["x", "yz", "7", "."]) for _ in range(rng.randrange(1, 10)))
        elif kind == "numbers":
            s = " ".join(number(rng) for _ in range(rng.randrange(1, 5)))
        elif kind == "contractions":
            s = " ".join(rng.choice(CONTRACTIONS + WORDS) for _ in range(rng.randrange(1, 8)))
        elif kind == "specials":
            sp = specials_for(name)
            s = "".join(rng.choice([rng.choice(sp), rng.choice(WORDS), " ", "  ", "\n", rng.choice(sp) + " "])
                        for _ in range(rng.randrange(1, 8)))
        elif kind == "soup":
            s = soup(rng)
        elif kind == "code":
            s = rng.choice(CODE) + rng.choice(["", " ", "\n"]) + rng.choice(CODE)
        else:
            s = mixed(rng, name)
        out.append(s)
    return out


def byte_offsets(text, offsets):
    """The library's character offsets as byte offsets into text's UTF-8."""
    at = [0]
    for ch in text:
        at.append(at[-1] + len(ch.encode("utf-8")))
    return [[at[b], at[e]] for b, e in offsets]


def chat_cases(tok_path, rng, n):
    from transformers import PreTrainedTokenizerFast
    with open(os.path.join(os.path.dirname(tok_path), "tokenizer_config.json"), encoding="utf-8") as f:
        template = json.load(f)["chat_template"]
    fast = PreTrainedTokenizerFast(tokenizer_file=tok_path)
    cases = []
    for _ in range(n):
        messages, ours = [], []
        if rng.random() < 0.3:
            text = rng.choice(["You count shapes.", "Be brief.", "Réponds en français. 🙂"])
            messages.append({"role": "system", "content": text})
            ours.append({"role": "system", "content": [{"type": "text", "text": text}]})
        widths = []
        for turn in range(rng.randrange(1, 4)):
            parts, mine = [], []
            for _ in range(rng.randrange(1, 4)):
                if rng.random() < 0.4:
                    w = rng.choice([1, 4, 16, 64, 256])
                    widths.append(w)
                    parts.append({"type": "image"})
                    mine.append({"type": "image", "tokens": w})
                else:
                    # other special tokens may appear in the text, <|image_pad|> stands for images only
                    t = rng.choice([prompt(rng), mixed(rng, "qwen2"), number(rng), " ", "\n"])
                    t = t.replace("<|image_pad|>", "")
                    parts.append({"type": "text", "text": t})
                    mine.append({"type": "text", "text": t})
            messages.append({"role": "user", "content": parts})
            ours.append({"role": "user", "content": mine})
            if turn + 1 < 3 and rng.random() < 0.5:
                t = str(rng.randrange(20))
                messages.append({"role": "assistant", "content": [{"type": "text", "text": t}]})
                ours.append({"role": "assistant", "content": [{"type": "text", "text": t}]})
        gen = rng.random() < 0.8
        rendered = fast.apply_chat_template(messages, chat_template=template, tokenize=False,
                                            add_generation_prompt=gen)
        pieces = rendered.split("<|image_pad|>")
        assert len(pieces) == len(widths) + 1
        prompt_text = pieces[0] + "".join("<|image_pad|>" * w + p for w, p in zip(widths, pieces[1:]))
        cases.append({"chat": ours, "add_generation_prompt": gen, "prompt": prompt_text})
    return cases


def training_text():
    rng = random.Random(7)
    return [mixed(rng, "training") for _ in range(3000)] + [prompt(rng) for _ in range(3000)]


def option_tokenizers():
    """Tokenizers built here (not in the zoo) for the tokenizer.json parts the
    zoo's three do not use: GPT-2 / RoBERTa style byte-level BPE with
    lstrip / rstrip / single_word / normalized added tokens; WordPiece behind
    NFD + StripAccents + Lowercase, WhitespaceSplit, Punctuation and Digits;
    Metaspace BPE with byte fallback and fused unknowns; BPE with a subword
    prefix and an end-of-word suffix behind Split pre-tokenizers."""
    text = training_text()
    built = {}

    t = Tokenizer(models.BPE())
    t.normalizer = normalizers.Sequence([normalizers.NFKC(), normalizers.Lowercase(),
                                         normalizers.Replace(Regex(" {3,}"), "  "),
                                         normalizers.Replace("``", "\"")])
    t.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=True, use_regex=True)
    t.decoder = decoders.ByteLevel()
    t.train_from_iterator(text, trainers.BpeTrainer(vocab_size=800, show_progress=False,
                                                    special_tokens=["<s>", "<pad>", "</s>"],
                                                    initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    t.add_tokens([AddedToken("[NEW]", normalized=True), AddedToken("word", single_word=True, normalized=False)])
    t.add_special_tokens([AddedToken("<mask>", lstrip=True, special=True),
                          AddedToken("<rs>", rstrip=True, special=True)])
    t.post_processor = processors.RobertaProcessing(("</s>", t.token_to_id("</s>")), ("<s>", t.token_to_id("<s>")),
                                                    trim_offsets=True, add_prefix_space=True)
    built["bytelevel_options"] = t

    t = Tokenizer(models.WordPiece(unk_token="[UNK]", max_input_chars_per_word=12))
    t.normalizer = normalizers.Sequence([normalizers.NFD(), normalizers.StripAccents(), normalizers.Lowercase()])
    t.pre_tokenizer = pre_tokenizers.Sequence([pre_tokenizers.WhitespaceSplit(),
                                               pre_tokenizers.Punctuation("contiguous"),
                                               pre_tokenizers.Digits(individual_digits=True)])
    t.decoder = decoders.WordPiece(prefix="##", cleanup=True)
    t.train_from_iterator(text, trainers.WordPieceTrainer(vocab_size=600, show_progress=False,
                                                          special_tokens=["[UNK]", "[CLS]", "[SEP]"]))
    t.post_processor = processors.BertProcessing(("[SEP]", t.token_to_id("[SEP]")), ("[CLS]", t.token_to_id("[CLS]")))
    built["wordpiece_options"] = t

    t = Tokenizer(models.BPE(unk_token="<unk>"))
    t.normalizer = normalizers.NFKD()
    t.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="first", split=True)
    t.decoder = decoders.Metaspace(replacement="▁", prepend_scheme="first")
    t.train_from_iterator(text, trainers.BpeTrainer(vocab_size=700, show_progress=False,
                                                    special_tokens=["<unk>", "<s>", "</s>"]))
    # byte fallback for some bytes, fused unknowns for the rest
    d = json.loads(t.to_str())
    vocab = d["model"]["vocab"]
    for b in list(range(0x20, 0x80)) + [0xC3, 0xA9, 0xE2, 0x80, 0x94]:
        vocab.setdefault(f"<0x{b:02X}>", len(vocab))
    d["model"]["byte_fallback"] = True
    d["model"]["fuse_unk"] = True
    built["metaspace_options"] = Tokenizer.from_str(json.dumps(d))

    t = Tokenizer(models.BPE(unk_token="[UNK]", continuing_subword_prefix="##", end_of_word_suffix="</w>"))
    t.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(r"\S+"), behavior="removed", invert=True),
        pre_tokenizers.Split(Regex(r"\d"), behavior="merged_with_next"),
        pre_tokenizers.Split("-", behavior="merged_with_previous"),
        pre_tokenizers.Split(Regex(r"[()\[\]{}]"), behavior="contiguous"),
        pre_tokenizers.Split(Regex(r"[.,!?;:]"), behavior="isolated"),
    ])
    t.decoder = decoders.BPEDecoder(suffix="</w>")
    t.train_from_iterator(text, trainers.BpeTrainer(vocab_size=700, show_progress=False, special_tokens=["[UNK]"],
                                                    continuing_subword_prefix="##", end_of_word_suffix="</w>"))
    d = json.loads(t.to_str())
    d["model"]["merges"] = [" ".join(m) for m in d["model"]["merges"]]  # the older "a b" form
    built["split_options"] = Tokenizer.from_str(json.dumps(d))
    return built


def write_fixture(out_dir, name, tok, rng, n_strings, chat_path=None):
    lines = []
    texts = corpus(name, rng, n_strings)
    for text in texts:
        e = tok.encode(text, add_special_tokens=True)
        lines.append({"text": text, "ids": e.ids, "offsets": byte_offsets(text, e.offsets)})
    if name in ("bert", "wordpiece_options", "bytelevel_options"):
        for _ in range(500):
            a, b = rng.choice(texts), rng.choice(texts)
            lines.append({"text": a, "pair": b, "ids": tok.encode(a, b, add_special_tokens=True).ids})
    if chat_path:
        for case in chat_cases(chat_path, rng, 300):
            case["ids"] = tok.encode(case["prompt"], add_special_tokens=True).ids
            lines.append(case)
    vocab = tok.get_vocab_size(with_added_tokens=True)
    for k in range(2000):
        if k % 2 == 0:  # round trips of corpus strings
            ids = lines[k]["ids"]
        else:  # random ids: partial UTF-8 sequences, special tokens anywhere
            ids = [rng.randrange(vocab) for _ in range(rng.randrange(0, 20))]
        skip = k % 3 != 0
        lines.append({"decode": ids, "skip_special": skip, "text": tok.decode(ids, skip_special_tokens=skip)})
    out = os.path.join(out_dir, f"{name}.jsonl")
    with open(out, "w", encoding="utf-8") as f:
        for line in lines:
            f.write(json.dumps(line, ensure_ascii=False) + "\n")
    print(f"{out}: {len(texts)} strings, {len(lines)} lines")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", required=True)
    args = ap.parse_args()
    os.makedirs(args.out, exist_ok=True)
    for seed, name in enumerate(["qwen2", "bert", "wordlevel"]):
        path = os.path.join(MODELS, name, "tokenizer.json")
        write_fixture(args.out, name, Tokenizer.from_file(path), random.Random(1000 + seed), 10500,
                      chat_path=path if name == "qwen2" else None)
    for seed, (name, tok) in enumerate(option_tokenizers().items()):
        tok.save(os.path.join(args.out, f"{name}.json"), pretty=False)
        write_fixture(args.out, name, tok, random.Random(2000 + seed), 5000)


if __name__ == "__main__":
    main()
