#!/usr/bin/env python3
"""The zoo's three small tokenizers, trained here with Hugging Face `tokenizers`
on synthetic text made below (counting prompts, colour and shape words,
captions, digits, a little mixed-language / Unicode text, code-ish lines):

  zoo/models/tokenizers/qwen2/tokenizer.json          byte-level BPE laid out as Qwen2-VL's:
                                                      NFC, the Qwen2 Split regex + ByteLevel,
                                                      ByteLevel decoder, Qwen2-VL's 14 added
                                                      tokens in their order after the vocabulary
  zoo/models/tokenizers/qwen2/tokenizer_config.json   ChatML chat template (Qwen2-VL's shape)
  zoo/models/tokenizers/bert/tokenizer.json           WordPiece, BertNormalizer (lowercase),
                                                      BertPreTokenizer, [CLS] $A [SEP] template
  zoo/models/tokenizers/wordlevel/tokenizer.json      WordLevel, Whitespace pre-tokenizer, [UNK]

Deterministic: the same files on every run (one seed, one thread).
The file is not called tokenizers.py: scripts in zoo/ have zoo/ first on
sys.path, and that name would shadow the `tokenizers` package for them.

usage: .venv-hf/bin/python zoo/tokenizer_zoo.py [--out zoo/models/tokenizers]
       (zoo/setup_hf_venv.sh makes the venv)
"""
import argparse
import json
import os
import random

os.environ["RAYON_NUM_THREADS"] = "1"
os.environ["TOKENIZERS_PARALLELISM"] = "false"

from tokenizers import (AddedToken, Regex, Tokenizer, decoders, models,  # noqa: E402
                        normalizers, pre_tokenizers, processors, trainers)

HERE = os.path.dirname(os.path.abspath(__file__))

# Qwen2's pre-tokenizer pattern (its tokenizer.json, Split, Isolated).
QWEN2_PATTERN = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}|"
                 r" ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+")

# Qwen2-VL's added tokens, in the order (and so with the ids relative to the
# vocabulary's end) of its tokenizer.json.
QWEN2_VL_SPECIAL = [
    "<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|object_ref_start|>", "<|object_ref_end|>",
    "<|box_start|>", "<|box_end|>", "<|quad_start|>", "<|quad_end|>", "<|vision_start|>",
    "<|vision_end|>", "<|vision_pad|>", "<|image_pad|>", "<|video_pad|>",
]

# ChatML as Qwen2-VL renders it: a default system turn when the first message
# is not one; content either a string or a list of {"type": "image"} /
# {"type": "text", "text": ...} parts; one <|image_pad|> per image (the
# processor widens it to the image's token count).
CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{% if loop.first and message['role'] != 'system' %}"
    "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n"
    "{% endif %}"
    "<|im_start|>{{ message['role'] }}\n"
    "{% if message['content'] is string %}{{ message['content'] }}"
    "{% else %}{% for part in message['content'] %}"
    "{% if part['type'] == 'image' %}<|vision_start|><|image_pad|><|vision_end|>"
    "{% elif part['type'] == 'text' %}{{ part['text'] }}{% endif %}"
    "{% endfor %}{% endif %}"
    "<|im_end|>\n"
    "{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)

COLOURS = ["red", "green", "blue", "yellow", "orange", "purple", "black", "white", "grey", "pink"]
SHAPES = ["circle", "square", "triangle", "star", "hexagon", "rectangle", "cross", "diamond"]
NUMBER_WORDS = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine",
                "ten", "eleven", "twelve", "thirteen", "fourteen", "fifteen", "sixteen",
                "seventeen", "eighteen", "nineteen"]
UNICODE_LINES = [
    "Café crème brûlée, naïve façade, Ångström, Øresund, Straße",
    "Zählen Sie die roten Kreise. Combien de carrés bleus ?",
    "¿Cuántos triángulos verdes hay? Quantos círculos vermelhos?",
    "赤い丸はいくつありますか？ 有多少个蓝色的正方形？",
    "빨간 원은 몇 개입니까? 파란 사각형",
    "كم عدد الدوائر الحمراء؟ مربع أزرق",
    "कितने लाल वृत्त हैं? नीला वर्ग",
    "Сколько красных кругов? Синий квадрат. Ελληνικά τρίγωνα",
    "emoji 🙂 🔴 🟦 ⭐ 👍🏽 👩‍💻 🇫🇷 — “quotes” ‘single’ … • →",
]
CODE_LINES = [
    "def count(shapes):\n    return sum(1 for s in shapes if s.colour == 'red')\n",
    "for (int i = 0; i < n; ++i) { total += boxes[i].area(); }",
    "{\"label\": \"circle\", \"box\": [12, 40, 33, 61], \"score\": 0.97}",
    "x = [a[i] * (b[j] + 3) for i in range(10) if f(i) != {k: v}]",
    "if (a && (b || c)) return map[key]; else throw std::runtime_error(\"no\");",
]


def synthetic_text(seed: int, n: int) -> list:
    rng = random.Random(seed)
    lines = []
    for i in range(n):
        kind = i % 9
        c, s = rng.choice(COLOURS), rng.choice(SHAPES)
        k = rng.randrange(20)
        if kind == 0:
            lines.append(f"How many {c} {s}s are there?")
        elif kind == 1:
            lines.append(f"There are {k} {c} {s}s and {NUMBER_WORDS[rng.randrange(20)]} "
                         f"{rng.choice(COLOURS)} {rng.choice(SHAPES)}s in the image.")
        elif kind == 2:
            lines.append(f"A {c} {s} is left of a {rng.choice(COLOURS)} {rng.choice(SHAPES)}; "
                         f"it's {k} pixels away. The answer is {k}.")
        elif kind == 3:
            lines.append(" ".join(str(rng.randrange(20)) for _ in range(rng.randrange(3, 12))))
        elif kind == 4:
            lines.append(rng.choice(UNICODE_LINES))
        elif kind == 5:
            lines.append(rng.choice(CODE_LINES))
        elif kind == 6:
            # brackets and letter / digit runs (BERT's copy and bracket tasks)
            seq = "".join(rng.choice("abcdefghij0123456789") for _ in range(rng.randrange(2, 8)))
            br = "".join(rng.choice("()[]{}") for _ in range(rng.randrange(2, 10)))
            lines.append(f"copy {seq} {' '.join(seq)} match {br} ( {seq} ) [ {k} ] {{ {c} }}")
        elif kind == 7:
            lines.append(f"Count the {s}s: {k}. I'm sure they're {c}; we'll see, you've "
                         f"got {k + 1}, haven't you? It'd be {3.5 * k:.1f}%.")
        else:
            lines.append(f"caption: a {c} {s} next to {NUMBER_WORDS[k]} {rng.choice(SHAPES)}s"
                         f"\n\tat ({rng.randrange(128)}, {rng.randrange(128)})  ")
    return lines


def build_qwen2(text: list) -> Tokenizer:
    tok = Tokenizer(models.BPE())
    tok.normalizer = normalizers.NFC()
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(QWEN2_PATTERN), behavior="isolated", invert=False),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
    ])
    tok.decoder = decoders.ByteLevel()
    tok.post_processor = processors.ByteLevel(trim_offsets=False)
    trainer = trainers.BpeTrainer(vocab_size=1500, min_frequency=2, show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(text, trainer=trainer)
    tok.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in QWEN2_VL_SPECIAL])
    return tok


def qwen2_config(tok: Tokenizer) -> dict:
    decoder = {}
    for t in QWEN2_VL_SPECIAL:
        decoder[str(tok.token_to_id(t))] = {"content": t, "lstrip": False, "normalized": False,
                                            "rstrip": False, "single_word": False, "special": True}
    return {
        "add_prefix_space": False,
        "added_tokens_decoder": decoder,
        "additional_special_tokens": QWEN2_VL_SPECIAL[1:],
        "bos_token": None,
        "chat_template": CHAT_TEMPLATE,
        "clean_up_tokenization_spaces": False,
        "eos_token": "<|im_end|>",
        "errors": "replace",
        "model_max_length": 32768,
        "pad_token": "<|endoftext|>",
        "split_special_tokens": False,
        "tokenizer_class": "Qwen2Tokenizer",
        "unk_token": None,
    }


def build_bert(text: list) -> Tokenizer:
    """WordPiece with a vocabulary chosen here (the library's WordPiece trainer
    breaks ties differently from run to run): the special tokens, every
    character seen (alone and as a ##continuation), the most frequent
    suffixes, then the most frequent words."""
    specials = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    normalizer = normalizers.BertNormalizer(lowercase=True)
    pre = pre_tokenizers.BertPreTokenizer()
    words = {}
    for line in text:
        for w, _ in pre.pre_tokenize_str(normalizer.normalize_str(line)):
            words[w] = words.get(w, 0) + 1
    by_count = sorted(words.items(), key=lambda kv: (-kv[1], kv[0]))
    chars = sorted({c for w in words for c in w})
    suffixes = {}
    for w, n in words.items():
        for k in (1, 2, 3):
            if len(w) > k + 1:
                suffixes["##" + w[-k:]] = suffixes.get("##" + w[-k:], 0) + n
    candidates = list(specials) + chars + ["##" + c for c in chars]
    candidates += [s for s, _ in sorted(suffixes.items(), key=lambda kv: (-kv[1], kv[0]))[:120]]
    candidates += [w for w, _ in by_count]
    vocab = list(dict.fromkeys(candidates))[:1000]
    tok = Tokenizer(models.WordPiece(vocab={t: i for i, t in enumerate(vocab)}, unk_token="[UNK]"))
    tok.add_special_tokens(specials)
    tok.normalizer = normalizer
    tok.pre_tokenizer = pre
    tok.decoder = decoders.WordPiece(prefix="##")
    cls, sep = tok.token_to_id("[CLS]"), tok.token_to_id("[SEP]")
    tok.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]", pair="[CLS] $A [SEP] $B:1 [SEP]:1",
        special_tokens=[("[CLS]", cls), ("[SEP]", sep)])
    return tok


def build_wordlevel(text: list) -> Tokenizer:
    tok = Tokenizer(models.WordLevel(unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    trainer = trainers.WordLevelTrainer(vocab_size=600, show_progress=False, special_tokens=["[UNK]"])
    tok.train_from_iterator(text, trainer=trainer)
    return tok


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default=os.path.join(HERE, "models", "tokenizers"))
    args = ap.parse_args()
    text = synthetic_text(seed=20240611, n=6000)
    built = {"qwen2": build_qwen2(text), "bert": build_bert(text), "wordlevel": build_wordlevel(text)}
    for name, tok in built.items():
        os.makedirs(os.path.join(args.out, name), exist_ok=True)
        path = os.path.join(args.out, name, "tokenizer.json")
        tok.save(path, pretty=False)
        print(f"{path}: vocab {tok.get_vocab_size(with_added_tokens=True)}, {os.path.getsize(path)} bytes")
    with open(os.path.join(args.out, "qwen2", "tokenizer_config.json"), "w", encoding="utf-8") as f:
        json.dump(qwen2_config(built["qwen2"]), f, indent=2, ensure_ascii=False)
        f.write("\n")


if __name__ == "__main__":
    main()
