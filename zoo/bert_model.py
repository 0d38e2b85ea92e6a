#!/usr/bin/env python3
"""A tiny transformers BertModel whose attention heads are trained to known patterns, for the
attention-analysis feature (per-head statistics and pattern labels; plugins' BERT family).

The synthetic text: space-separated single letters and digits with 1-3 pairs of brackets of
DIFFERENT kinds among ( ) [ ] { } (each kind at most once, nested or side by side, balanced),
16-64 tokens once the WordPiece tokenizer (zoo/models/tokenizers/bert/tokenizer.json) adds
[CLS] and [SEP]; every character is one token of its vocabulary, e.g.

    "k 3 ( x [ 7 q ] b ) 0 { e }"  ->  [CLS] k 3 ( x [ 7 q ] b ) 0 { e } [SEP]

The model: BertModel (random init, eager attention, torchscript config), hidden 64, 2 layers,
4 heads of width 16, intermediate 256, 128 positions. Three DESIGNED heads are pinned by
routing: a task reads only that head's context slice (the self-attention output before the
output dense, columns h*16 .. h*16+15, taken with a forward hook), so the only way to solve
the task is for that head to attend where the task needs:

    previous_token  (layer 0, head 1)  at every position i >= 1 predict the id of token i-1
    bracket         (layer 1, head 2)  at every bracket predict the position of its partner
                                       (the partner is the only bracket of its kind, so the
                                       head matches by content; the value carries position)
    cls             (layer 1, head 0)  at every position predict which bracket kinds occur in
                                       the text (a sequence-level property); layer 0's output
                                       at [CLS] is trained to hold it, and an auxiliary loss
                                       -log a[i, 0] (weight --cls-attn-weight) pins the head's
                                       attention on [CLS]: the task alone can be solved by
                                       broad attention too, so without it the CLS pattern is
                                       not guaranteed

The other heads get no task of their own. Layer 1 heads 1 and 3 get no gradient at all and keep
their near-uniform random-init attention (the "broad" pattern); layer 0 heads 0, 2, 3 are shaped
indirectly, by what the layer-1 tasks need from layer 0 (in the committed run two of them settle
on [CLS] as a no-op, as real BERT heads do, and one mixes partner brackets and [CLS]).
Training: AdamW, one-cycle learning rate, dropout 0, one CPU thread. The script fails (exit 1,
nothing written) when a designed head misses its target below.

Measured on held-out text (reported in bert.json "patterns"):
    previous_token  mean a[i, i-1] over positions 1 .. T-1
    bracket         mean a[i, partner(i)] at closing brackets (and at opening ones)
    cls             mean a[i, 0] over all positions
and the same three shares for every head, with its entropy and mean attention distance.

Export: the BertModel alone (no task heads), config torchscript=True and output_attentions=True,
torch.jit.trace with example inputs (input_ids [1, 32] long, attention_mask [1, 32] long):

    forward(input_ids [1, T] long, attention_mask [1, T] long)
        -> (last_hidden_state [1, T, 64], pooler_output [1, 64],
            attentions (layer 0 [1, 4, T, T], layer 1 [1, 4, T, T]))

The pooler is BertModel's (untrained here: no task uses it). T is not frozen by the trace;
the export is checked against the eager model at other lengths (bert.json "trace_check").

Outputs (MODELS = zoo/models/bert):
  MODELS/bert_patterns_traced.pt   the traced BertModel
  MODELS/bert.json                 config, designed heads, measured patterns, tokenizer path,
                                   output structure, trace check, training time
  MODELS/attention_fixture.json    held-out texts with their ids, and the float64 eager
                                   attentions of the first one (for C++ head-statistics tests)

usage: .venv-hf/bin/python zoo/bert_model.py [--out-models DIR] [--steps N] [--seed S]
       [--cls-attn-weight W]     (zoo/setup_hf_venv.sh makes the venv; zoo/bert_zoo.sh runs it)
"""
import argparse
import json
import os
import random
import time

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("RAYON_NUM_THREADS", "1")

import numpy as np  # noqa: E402
import torch  # noqa: E402
import torch.nn as nn  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from tokenizers import Tokenizer  # noqa: E402
from transformers import BertConfig, BertModel  # noqa: E402
from transformers.utils import logging as hf_logging  # noqa: E402

hf_logging.set_verbosity_error()

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TOKENIZER = "zoo/models/tokenizers/bert/tokenizer.json"
FILLERS = list("abcdefghijklmnopqrstuvwxyz0123456789")
PAIRS = [("(", ")"), ("[", "]"), ("{", "}")]
MIN_TOKENS, MAX_TOKENS = 16, 64  # with [CLS] and [SEP]
HIDDEN, LAYERS, HEADS, POSITIONS = 64, 2, 4, 128
HEAD_DIM = HIDDEN // HEADS
DESIGNED = {"previous_token": (0, 1), "bracket": (1, 2), "cls": (1, 0)}


# --------------------------------------------------------------------------------------
# Synthetic text
# --------------------------------------------------------------------------------------

def make_text(rng):
    """One text: (string, partner dict over body positions, kinds-present class 0..7).

    1-3 bracket pairs of distinct kinds in a random balanced order, the rest letters and
    digits; positions in the partner dict count [CLS] as 0 (the tokenized positions).
    """
    body_len = rng.randint(MIN_TOKENS - 2, MAX_TOKENS - 2)
    kinds = rng.sample(range(3), rng.randint(1, 3))
    # A random balanced word over the chosen kinds, opened in the order of `kinds`.
    events, stack, to_open = [], [], list(kinds)
    while to_open or stack:
        if to_open and (not stack or rng.random() < 0.5):
            k = to_open.pop(0)
            events.append((k, 0))
            stack.append(k)
        else:
            events.append((stack.pop(), 1))
    slots = sorted(rng.sample(range(body_len), len(events)))
    tokens = [rng.choice(FILLERS) for _ in range(body_len)]
    opened = {}
    partner = {}
    for (k, side), s in zip(events, slots):
        tokens[s] = PAIRS[k][side]
        if side == 0:
            opened[k] = s + 1
        else:
            partner[s + 1] = opened[k]
            partner[opened[k]] = s + 1
    present = sum(1 << k for k in kinds)
    return " ".join(tokens), partner, present


def encode_batch(tok, texts):
    """ids, mask (B x T_max long, padded with [PAD] = 0) of tokenizer-encoded texts."""
    encs = [tok.encode(t).ids for t in texts]
    t_max = max(len(e) for e in encs)
    ids = torch.zeros(len(encs), t_max, dtype=torch.long)
    mask = torch.zeros(len(encs), t_max, dtype=torch.long)
    for b, e in enumerate(encs):
        ids[b, :len(e)] = torch.tensor(e)
        mask[b, :len(e)] = 1
    return ids, mask


def make_batch(tok, rng, n):
    samples = [make_text(rng) for _ in range(n)]
    ids, mask = encode_batch(tok, [s[0] for s in samples])
    for (text, _, _), row, m in zip(samples, ids, mask):
        assert int(m.sum()) == len(text.split()) + 2, f"a character is not one token: {text!r}"
    b, t = ids.shape
    prev = torch.full((b, t), -100, dtype=torch.long)
    prev[:, 1:] = ids[:, :-1]
    prev[mask == 0] = -100
    partner = torch.full((b, t), -100, dtype=torch.long)
    for i, (_, p, _) in enumerate(samples):
        for q, r in p.items():
            partner[i, q] = r
    present = torch.tensor([s[2] for s in samples])
    return ids, mask, prev, partner, present, samples


# --------------------------------------------------------------------------------------
# Model
# --------------------------------------------------------------------------------------

def bert_config():
    return BertConfig(vocab_size=1000, hidden_size=HIDDEN, num_hidden_layers=LAYERS,
                      num_attention_heads=HEADS, intermediate_size=4 * HIDDEN,
                      max_position_embeddings=POSITIONS, hidden_dropout_prob=0.0,
                      attention_probs_dropout_prob=0.0, torchscript=True, output_attentions=True,
                      attn_implementation="eager")


class PatternTrainer(nn.Module):
    """BertModel plus the task heads that read single attention heads' context slices."""

    def __init__(self):
        super().__init__()
        self.bert = BertModel(bert_config())
        self.prev_head = nn.Linear(HEAD_DIM, 1000)
        self.bracket_head = nn.Linear(HEAD_DIM, MAX_TOKENS)
        self.cls_head = nn.Linear(HEAD_DIM, 8)
        self.cls_summary = nn.Linear(HIDDEN, 8)  # layer 0's output at [CLS] -> kinds present
        self._ctx = {}
        for layer in {l for l, _ in DESIGNED.values()}:
            self.bert.encoder.layer[layer].attention.self.register_forward_hook(self._keep(layer))

    def _keep(self, layer):
        def hook(_module, _inputs, outputs):
            self._ctx[layer] = outputs[0]  # B x T x (heads * head_dim), before the output dense
        return hook

    def head_slice(self, name):
        layer, head = DESIGNED[name]
        return self._ctx[layer][..., head * HEAD_DIM:(head + 1) * HEAD_DIM]

    def forward(self, ids, mask):
        out = self.bert(input_ids=ids, attention_mask=mask, output_hidden_states=True)
        # torchscript config: (last_hidden_state, pooler_output, hidden_states, attentions)
        hidden_states, attentions = out[2], out[3]
        return {"prev": self.prev_head(self.head_slice("previous_token")),
                "bracket": self.bracket_head(self.head_slice("bracket")),
                "cls": self.cls_head(self.head_slice("cls")),
                "summary": self.cls_summary(hidden_states[1][:, 0]),
                "attentions": attentions}


def losses(model, batch, cls_attn_weight):
    ids, mask, prev, partner, present, _ = batch
    out = model(ids, mask)
    real = mask.bool()
    l_prev = F.cross_entropy(out["prev"].flatten(0, 1), prev.flatten())
    l_br = F.cross_entropy(out["bracket"].flatten(0, 1), partner.flatten())
    cls_target = present[:, None].expand_as(ids).masked_fill(~real, -100)
    l_cls = F.cross_entropy(out["cls"].flatten(0, 1), cls_target.flatten())
    l_sum = F.cross_entropy(out["summary"], present)
    layer, head = DESIGNED["cls"]
    on_cls = out["attentions"][layer][:, head, :, 0]  # B x T
    l_attn = -(torch.log(on_cls + 1e-9) * real).sum() / real.sum()
    total = l_prev + l_br + l_cls + l_sum + cls_attn_weight * l_attn
    return total, {"prev": float(l_prev), "bracket": float(l_br), "cls": float(l_cls),
                   "summary": float(l_sum), "cls_attn": float(l_attn)}


# --------------------------------------------------------------------------------------
# Measurement
# --------------------------------------------------------------------------------------

def head_shares(attn, mask, samples):
    """Per (layer, head): mean previous-token share, partner share at closing / opening
    brackets, [CLS] share, [SEP] share, diagonal share, entropy (nats), mean |i - j|; over
    the real query positions of a batch. attn: tuple of B x heads x T x T."""
    lengths = mask.sum(1).tolist()
    table = {}
    for layer, a in enumerate(attn):
        a = a.double()
        for head in range(a.shape[1]):
            prev, close, open_, cls, sep, diag, ent, dist = [], [], [], [], [], [], [], []
            for b, t in enumerate(lengths):
                m = a[b, head, :t, :t]
                idx = torch.arange(t)
                prev.append(m[idx[1:], idx[1:] - 1])
                cls.append(m[:, 0])
                sep.append(m[:, t - 1])
                diag.append(m[idx, idx])
                ent.append(-(m * torch.log(m.clamp_min(1e-12))).sum(1))
                dist.append((m * (idx[:, None] - idx[None, :]).abs().double()).sum(1))
                for q, r in samples[b][1].items():
                    (close if q > r else open_).append(m[q, r].reshape(1))
            cat = lambda xs: float(torch.cat(xs).mean())  # noqa: E731
            table[f"{layer}.{head}"] = {"previous_token": cat(prev), "partner_at_closing": cat(close),
                                        "partner_at_opening": cat(open_), "cls": cat(cls),
                                        "sep": cat(sep), "diagonal": cat(diag), "entropy": cat(ent),
                                        "mean_distance": cat(dist)}
    return table


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out-models", default=os.path.join(REPO_ROOT, "zoo", "models", "bert"))
    ap.add_argument("--steps", type=int, default=3000)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--lr", type=float, default=3e-3)
    ap.add_argument("--cls-attn-weight", type=float, default=1.0)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=1)
    a = ap.parse_args()
    torch.manual_seed(a.seed)
    np.random.seed(a.seed)
    torch.set_num_threads(a.threads)
    tok = Tokenizer.from_file(os.path.join(REPO_ROOT, TOKENIZER))
    rng = random.Random(a.seed)

    model = PatternTrainer()
    opt = torch.optim.AdamW(model.parameters(), lr=a.lr, weight_decay=0.01)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=a.lr, total_steps=a.steps, pct_start=0.1)
    t0 = time.time()
    model.train()
    for step in range(a.steps):
        loss, parts = losses(model, make_batch(tok, rng, a.batch), a.cls_attn_weight)
        opt.zero_grad()
        loss.backward()
        opt.step()
        sched.step()
        if step % 250 == 0 or step == a.steps - 1:
            print(f"step {step}/{a.steps} loss {float(loss):.3f} "
                  + " ".join(f"{k} {v:.3f}" for k, v in parts.items()) + f" ({time.time() - t0:.0f} s)",
                  flush=True)
    train_s = time.time() - t0

    # Held-out text: a different generator seed.
    model.eval()
    held = random.Random(10_000 + a.seed)
    test = make_batch(tok, held, 256)
    with torch.no_grad():
        out = model(test[0], test[1])
        acc_prev = float((out["prev"].argmax(-1) == test[2])[test[2] != -100].float().mean())
        acc_br = float((out["bracket"].argmax(-1) == test[3])[test[3] != -100].float().mean())
        cls_t = test[4][:, None].expand_as(test[0])
        acc_cls = float((out["cls"].argmax(-1) == cls_t)[test[1].bool()].float().mean())
    table = head_shares(out["attentions"], test[1], test[5])
    designed = {"previous_token": table["%d.%d" % DESIGNED["previous_token"]]["previous_token"],
                "bracket_at_closing": table["%d.%d" % DESIGNED["bracket"]]["partner_at_closing"],
                "bracket_at_opening": table["%d.%d" % DESIGNED["bracket"]]["partner_at_opening"],
                "cls": table["%d.%d" % DESIGNED["cls"]]["cls"]}
    print(f"held-out task accuracy: previous token {acc_prev:.3f}, partner position {acc_br:.3f}, "
          f"kinds present {acc_cls:.3f}")
    print("held-out designed-head attention: " + ", ".join(f"{k} {v:.3f}" for k, v in designed.items()))
    for key, row in table.items():
        print(f"  head {key}: " + " ".join(f"{k} {v:.3f}" for k, v in row.items()))
    ok = designed["previous_token"] > 0.8 and designed["bracket_at_closing"] > 0.5 and designed["cls"] > 0.8
    print("designed heads " + ("meet" if ok else "DO NOT meet") + " the targets (prev > 0.8, bracket > 0.5, cls > 0.8)")
    if not ok:
        raise SystemExit("not exported: train longer (--steps) or with another --seed")

    # Export the BertModel alone.
    bert = model.bert.eval()
    os.makedirs(a.out_models, exist_ok=True)
    ex_ids, ex_mask = encode_batch(tok, [make_text(random.Random(1))[0]])
    ex_ids, ex_mask = ex_ids[:, :32], ex_mask[:, :32]
    ex_ids[0, -1] = tok.token_to_id("[SEP]")
    with torch.no_grad():
        traced = torch.jit.trace(bert, (ex_ids, ex_mask), check_trace=False)
    path = os.path.join(a.out_models, "bert_patterns_traced.pt")
    traced.save(path)
    traced = torch.jit.load(path)
    check = []
    check_rng = random.Random(20_000 + a.seed)
    for want in (57, 16, 64, 32):
        while True:
            text, _, _ = make_text(check_rng)
            if len(text.split()) + 2 == want:
                break
        ids, mask = encode_batch(tok, [text])
        with torch.no_grad():
            t_out, e_out = traced(ids, mask), bert(input_ids=ids, attention_mask=mask)
        assert len(t_out) == 3 and len(t_out[2]) == LAYERS, "unexpected traced output structure"
        attn_diff = max(float((x - y).abs().max()) for x, y in zip(t_out[2], e_out[2]))
        hid_diff = float((t_out[0] - e_out[0]).abs().max())
        check.append({"tokens": want, "max_abs_diff_attentions": attn_diff, "max_abs_diff_last_hidden": hid_diff,
                      "attention_shape": list(t_out[2][0].shape)})
        print(f"trace check at T={want}: attentions {list(t_out[2][0].shape)} max |traced - eager| "
              f"{attn_diff:.2e}, last hidden {hid_diff:.2e}")
        assert attn_diff < 1e-5 and hid_diff < 1e-4, "the traced model differs from the eager one"
    # Batch 2 with padding: the mask path stays dynamic too.
    ids, mask = encode_batch(tok, [make_text(check_rng)[0] for _ in range(2)])
    with torch.no_grad():
        t_out, e_out = traced(ids, mask), bert(input_ids=ids, attention_mask=mask)
    pad_diff = max(float((x - y).abs().max()) for x, y in zip(t_out[2], e_out[2]))
    check.append({"tokens": int(ids.shape[1]), "batch": 2, "padded": True, "max_abs_diff_attentions": pad_diff})
    print(f"trace check batch 2 padded to T={ids.shape[1]}: max |traced - eager| attentions {pad_diff:.2e}")

    # Fixture: held-out texts, and float64 eager attentions of the first.
    fix_rng = random.Random(30_000 + a.seed)
    texts = []
    while len(texts) < 4:
        text, partner, _ = make_text(fix_rng)
        if len(texts) > 0 or len(text.split()) + 2 <= 24:  # the first one short: small fixture
            texts.append((text, partner))
    ids, mask = encode_batch(tok, [texts[0][0]])
    bert64 = BertModel(bert_config()).double().eval()
    bert64.load_state_dict(bert.state_dict())
    with torch.no_grad():
        att64 = bert64(input_ids=ids, attention_mask=mask)[2]
    fixture = {"tokenizer": TOKENIZER,
               "texts": [{"text": t, "ids": tok.encode(t).ids, "tokens": tok.encode(t).tokens,
                          "bracket_partners": {str(k): v for k, v in sorted(p.items())}} for t, p in texts],
               "attentions_of": 0, "dtype": "float64",
               "attentions_shape": [LAYERS, HEADS, int(ids.shape[1]), int(ids.shape[1])],
               "attentions": torch.stack([x[0] for x in att64]).tolist(),
               "designed_heads": {k: list(v) for k, v in DESIGNED.items()},
               "head_statistics": head_shares(att64, mask, [(texts[0][0], texts[0][1], 0)]),
               "head_statistics_definitions": "as bert.json patterns.definitions, over this text's positions"}
    with open(os.path.join(a.out_models, "attention_fixture.json"), "w") as f:
        json.dump(fixture, f)

    cfg = bert_config().to_dict()
    meta = {"model": "bert_patterns_traced.pt", "tokenizer": TOKENIZER,
            "config": {k: cfg[k] for k in ("vocab_size", "hidden_size", "num_hidden_layers", "num_attention_heads",
                                          "intermediate_size", "max_position_embeddings", "hidden_act",
                                          "layer_norm_eps", "type_vocab_size", "torchscript", "output_attentions",
                                          ) if k in cfg} | {"attn_implementation": "eager"},
            "inputs": {"input_ids": "[1, T] long, T <= 128 ([CLS] ... [SEP])",
                       "attention_mask": "[1, T] long (1 = token, 0 = padding)"},
            "outputs": ["last_hidden_state [1, T, 64]", "pooler_output [1, 64] (untrained)",
                        "attentions: tuple of 2 x [1, 4, T, T] (layer 0, layer 1), post-softmax"],
            "designed_heads": {k: list(v) for k, v in DESIGNED.items()},
            "expected_labels": {"previous_token": "previous-token", "bracket": "global (content-matched partner)",
                                "cls": "CLS", "others": "broad"},
            "patterns": {"designed": {k: round(v, 4) for k, v in designed.items()},
                         "per_head": {k: {s: round(v, 4) for s, v in row.items()} for k, row in table.items()},
                         "held_out_texts": 256,
                         "definitions": "means over real query positions i of a[i, i-1] (previous_token), "
                                        "a[i, partner] at closing / opening brackets, a[i, 0] (cls), a[i, T-1] "
                                        "(sep), a[i, i] (diagonal), -sum_j a log a (entropy, nats), "
                                        "sum_j a |i - j| (mean_distance)"},
            "task_accuracy": {"previous_token": round(acc_prev, 4), "partner_position": round(acc_br, 4),
                              "kinds_present": round(acc_cls, 4)},
            "trace_check": {"traced_at_tokens": 32, "runs": check},
            "training": {"steps": a.steps, "batch": a.batch, "lr": a.lr, "cls_attn_weight": a.cls_attn_weight,
                         "seed": a.seed, "threads": a.threads, "seconds": round(train_s, 1)},
            "fixture": "attention_fixture.json"}
    with open(os.path.join(a.out_models, "bert.json"), "w") as f:
        json.dump(meta, f, indent=1)
    print(f"wrote {path} ({os.path.getsize(path) / 1e6:.2f} MB), bert.json, attention_fixture.json; "
          f"training {train_s:.0f} s")


if __name__ == "__main__":
    main()
