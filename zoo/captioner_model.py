#!/usr/bin/env python3
"""A CNN-LSTM captioner trained on zoo/captioner_data.py's scenes.

Architecture (random init, trained here; the names are what the captioner
plugin's layer type `encoder` resolves to):
  encoder      a small ResNet: stem conv 3x3/2 (24), then basic residual blocks
               layer1 (32, /2), layer2 (64, /2), layer3 (96, /2): 96 x 8 x 8 at 128 x 128
  bridge       the pooled image features: 1x1 conv to 32, average pool to 4 x 4,
               Linear(512, 128) -> f; the LSTM's initial state tanh(Linear(f))
  decoder      one step: LSTMCell over [embedding(token) (32), f (128)], hidden
               128, then Linear to the vocabulary. The image enters through the
               initial state and through f at every step.
Loss: cross-entropy of the next token (teacher forced), plus, in training only, a
multi-label loss on which colours and shapes the scene holds, from a 1 x 1 classifier
at every position of the encoder's output, max-pooled (an attribute head, as
attribute-aided captioners have): it makes the encoder's channels say, where an object
is, its colour and shape, which the word maps then localise (docs/captioner.md gives
the held-out pointing game without it, with an average-pooled head, and with this one).

Model contract (the captioner plugin's, plugins/captioner/README.md):
  forward(images B x 3 x H x W, tokens B x T int64, detach_state 0-d float)
      -> logits B x T x V, teacher forced: logits[:, t] predicts tokens[:, t + 1].
      detach_state 1 cuts the gradient of the recurrent state between steps
      (d * s.detach() + (1 - d) * s: the values are the same either way).
  encode(images) -> state (f, h, c) and step(token B, *state) -> (logits B x V, *state):
      the generation methods the plugin decodes with.

Outputs:
  MODELS/captioner_scripted.pt   torch.jit.script of the eval model
  MODELS/captioner_traced.pt     torch.jit.trace_module (forward, encode, step);
                                 its forward is unrolled for 16 tokens (pad_to: 16)
  MODELS/captioner_vocab.txt     one token a line, id = line number from 0
  MODELS/captioner.json          geometry, normalisation, layers, and this run's
                                 held-out exact match and BLEU-4

usage: python3 zoo/captioner_model.py --data DIR [--out-models DIR] [--epochs N] [--train N] [--seed S]
       (DIR: a held-out set written by zoo/captioner_data.py)
"""
import argparse
import json
import math
import os
import time
from collections import Counter
from typing import Tuple

import cv2
import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

import captioner_data as data

MEAN = (0.485, 0.456, 0.406)
STD = (0.229, 0.224, 0.225)
LENGTH = 15          # <start> + at most 13 words + <end>
TRACE_LENGTH = 16    # the traced forward's token count
HIDDEN = 128
FEATURE = 128
EMBED = 32


class Block(nn.Module):
    def __init__(self, cin, cout, stride):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.shortcut = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))

    def forward(self, x):
        y = F.relu(self.bn1(self.conv1(x)))
        return F.relu(self.bn2(self.conv2(y)) + self.shortcut(x))


class Encoder(nn.Module):
    def __init__(self):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 24, 3, 2, 1, bias=False), nn.BatchNorm2d(24), nn.ReLU())
        self.layer1 = Block(24, 32, 2)
        self.layer2 = Block(32, 64, 2)
        self.layer3 = Block(64, 96, 2)

    def forward(self, x):
        return self.layer3(self.layer2(self.layer1(self.stem(x))))


class Bridge(nn.Module):
    def __init__(self):
        super().__init__()
        self.reduce = nn.Conv2d(96, 32, 1)
        self.pool = nn.AdaptiveAvgPool2d(4)
        self.project = nn.Linear(32 * 16, FEATURE)
        self.init = nn.Linear(FEATURE, 2 * HIDDEN)

    def forward(self, a) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        f = F.relu(self.project(torch.flatten(self.pool(F.relu(self.reduce(a))), 1)))
        h, c = torch.tanh(self.init(f)).chunk(2, 1)
        return f, h, c


class Decoder(nn.Module):
    def __init__(self, vocab):
        super().__init__()
        self.embed = nn.Embedding(vocab, EMBED)
        self.lstm = nn.LSTMCell(EMBED + FEATURE, HIDDEN)
        self.fc = nn.Linear(HIDDEN, vocab)

    def forward(self, token, f, h, c) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        h, c = self.lstm(torch.cat([self.embed(token), f], 1), (h, c))
        return self.fc(h), f, h, c


class Captioner(nn.Module):
    def __init__(self, vocab=len(data.VOCAB)):
        super().__init__()
        self.encoder = Encoder()
        self.bridge = Bridge()
        self.decoder = Decoder(vocab)
        self.vocab = list(data.VOCAB)  # the plugin reads the vocabulary from the model

    def forward(self, images, tokens, detach_state):
        f, h, c = self.bridge(self.encoder(images))
        out = []
        for t in range(tokens.size(1)):
            if t > 0:
                h = detach_state * h.detach() + (1 - detach_state) * h
                c = detach_state * c.detach() + (1 - detach_state) * c
            logits, f, h, c = self.decoder(tokens[:, t], f, h, c)
            out.append(logits)
        return torch.stack(out, 1)

    def encode(self, images) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        return self.bridge(self.encoder(images))

    def step(self, token, f, h, c) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        return self.decoder(token, f, h, c)


class ScriptedCaptioner(Captioner):
    """The same model with its generation methods marked for torch.jit.script (the
    marks would clash with torch.jit.trace_module's own tracing of them)."""

    @torch.jit.export
    def encode(self, images) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        return self.bridge(self.encoder(images))

    @torch.jit.export
    def step(self, token, f, h, c) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        return self.decoder(token, f, h, c)


def normalise(rgb_uint8, dtype=torch.float32):
    x = torch.from_numpy(np.ascontiguousarray(rgb_uint8)).to(dtype).div(255).permute(0, 3, 1, 2)
    mean = torch.tensor(MEAN, dtype=dtype).view(1, 3, 1, 1)
    std = torch.tensor(STD, dtype=dtype).view(1, 3, 1, 1)
    return (x - mean) / std


def greedy(model, images, max_words=LENGTH):
    """Greedy captions (lists of words) through encode/step."""
    end = data.INDEX["<end>"]
    with torch.no_grad():
        f, h, c = model.encode(images)
        token = torch.full((images.size(0),), data.INDEX["<start>"], dtype=torch.long)
        words = [[] for _ in range(images.size(0))]
        done = [False] * images.size(0)
        for _ in range(max_words):
            logits, f, h, c = model.step(token, f, h, c)
            token = logits.argmax(1)
            for b, t in enumerate(token.tolist()):
                if done[b]:
                    continue
                if t == end:
                    done[b] = True
                else:
                    words[b].append(data.VOCAB[t])
            if all(done):
                break
    return words


def bleu4(hypotheses, references):
    """Corpus BLEU-4 (one reference each, uniform weights, brevity penalty, no smoothing), float64."""
    matches, totals = [0] * 4, [0] * 4
    hyp_len = ref_len = 0
    for hyp, ref in zip(hypotheses, references):
        hyp_len += len(hyp)
        ref_len += len(ref)
        for n in range(1, 5):
            h = Counter(tuple(hyp[i:i + n]) for i in range(len(hyp) - n + 1))
            r = Counter(tuple(ref[i:i + n]) for i in range(len(ref) - n + 1))
            matches[n - 1] += sum(min(k, r[g]) for g, k in h.items())
            totals[n - 1] += max(len(hyp) - n + 1, 0)
    if min(matches) == 0 or hyp_len == 0:
        return 0.0
    log_p = sum(math.log(m / t) for m, t in zip(matches, totals)) / 4
    bp = 1.0 if hyp_len > ref_len else math.exp(1 - ref_len / hyp_len)
    return bp * math.exp(log_p)


def read_set(folder):
    images, captions = [], []
    with open(os.path.join(folder, "manifest.jsonl")) as f:
        for line in f:
            item = json.loads(line)
            bgr = cv2.imread(os.path.join(folder, item["image"]), cv2.IMREAD_COLOR)
            images.append(cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB))
            captions.append(item["reference"].split())
    return np.stack(images), captions


class Attributes(nn.Module):
    """Training only (not exported): which colours and shapes the scene holds, as a
    1 x 1 classifier at every position of the encoder's last feature map, max-pooled
    over the positions (multiple-instance: some position must see each attribute)."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(96, len(data.COLOURS) + len(data.SHAPES), 1)

    def forward(self, a):
        return self.conv(a).amax((2, 3))


def attribute_labels(scenes):
    names = list(data.COLOURS) + list(data.SHAPES)
    y = torch.zeros(len(scenes), len(names))
    for i, (_, _, objects) in enumerate(scenes):
        for o in objects:
            y[i, names.index(o["colour"])] = 1
            y[i, names.index(o["shape"])] = 1
    return y


def train(model, n_train, epochs, seed, batch=64, lr=3e-3):
    rng = np.random.RandomState(seed)
    scenes = [data.make_scene(rng) for _ in range(n_train)]
    x = np.stack([s[0] for s in scenes])
    y = torch.tensor([data.encode(s[1], LENGTH) for s in scenes], dtype=torch.long)
    attrs = attribute_labels(scenes)
    head = Attributes()
    taps = []
    hook = model.encoder.register_forward_hook(lambda m, i, o: taps.append(o))
    opt = torch.optim.AdamW(list(model.parameters()) + list(head.parameters()), lr=lr, weight_decay=1e-4)
    steps = epochs * (n_train // batch)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=steps, pct_start=0.15)
    g = torch.Generator().manual_seed(seed)
    zero = torch.tensor(0.0)
    for epoch in range(epochs):
        model.train()
        t0, total = time.time(), 0.0
        perm = torch.randperm(n_train, generator=g)
        for k in range(n_train // batch):
            idx = perm[k * batch:(k + 1) * batch]
            imgs = normalise(x[idx.numpy()])
            tok = y[idx]
            taps.clear()
            logits = model(imgs, tok[:, :-1], zero)
            loss = F.cross_entropy(logits.reshape(-1, logits.size(-1)), tok[:, 1:].reshape(-1),
                                   ignore_index=data.INDEX["<pad>"])
            loss = loss + F.binary_cross_entropy_with_logits(head(taps[0]), attrs[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
            total += loss.item()
        print(f"epoch {epoch + 1}/{epochs}: loss {total / (n_train // batch):.4f} ({time.time() - t0:.0f} s)",
              flush=True)
    hook.remove()
    model.eval()


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", required=True, help="held-out set (zoo/captioner_data.py --out)")
    ap.add_argument("--out-models", default=os.path.join(os.path.dirname(os.path.abspath(__file__)), "models"))
    ap.add_argument("--epochs", type=int, default=12)
    ap.add_argument("--train", type=int, default=12000)
    ap.add_argument("--seed", type=int, default=7)
    ap.add_argument("--from", dest="source", help="re-export this scripted model instead of training")
    a = ap.parse_args()
    torch.manual_seed(a.seed)
    torch.set_num_threads(max(1, os.cpu_count() or 1))
    model = Captioner()
    if a.source:
        model.load_state_dict(torch.jit.load(a.source).state_dict())
        model.eval()
    else:
        train(model, a.train, a.epochs, a.seed)
        os.makedirs(a.out_models, exist_ok=True)
        torch.save(model.state_dict(), os.path.join(a.out_models, "captioner_state.pt.tmp"))  # until exported

    images, refs = read_set(a.data)
    hyps = []
    for k in range(0, len(images), 50):
        hyps += greedy(model, normalise(images[k:k + 50]))
    exact = float(np.mean([h == r for h, r in zip(hyps, refs)]))
    bleu = bleu4(hyps, refs)
    print(f"held-out: exact match {exact:.3f}, BLEU-4 {bleu:.4f}")
    export(model, a.out_models, normalise(images[:2]), refs[:2])
    meta = {
        "size": [data.SIZE, data.SIZE], "mean": MEAN, "std": STD, "vocab": "captioner_vocab.txt",
        "tokens": {"start": "<start>", "end": "<end>", "pad": "<pad>", "unknown": "<unk>"},
        "layers": {"encoder": "encoder.layer3"}, "traced_length": TRACE_LENGTH,
        "train": {"scenes": a.train, "epochs": a.epochs, "seed": a.seed},
        "held_out": {"images": len(images), "exact_match": exact, "bleu4": bleu},
    }
    if a.source:
        with open(os.path.join(a.out_models, "captioner.json")) as fh:
            meta["train"] = json.load(fh)["train"]
    with open(os.path.join(a.out_models, "captioner.json"), "w") as fh:
        json.dump(meta, fh, indent=1)
        fh.write("\n")
    if os.path.exists(os.path.join(a.out_models, "captioner_state.pt.tmp")):
        os.remove(os.path.join(a.out_models, "captioner_state.pt.tmp"))


def export(model, out_models, img, refs):
    """Scripted and traced files, each holding the vocabulary as its `vocab` attribute."""
    os.makedirs(out_models, exist_ok=True)
    scriptable = ScriptedCaptioner()
    scriptable.load_state_dict(model.state_dict())
    torch.jit.script(scriptable.eval()).save(os.path.join(out_models, "captioner_scripted.pt"))
    tok = torch.tensor([data.encode(r, TRACE_LENGTH) for r in refs], dtype=torch.long)
    with torch.no_grad():
        state = model.encode(img)
        traced = torch.jit.trace_module(model, {"forward": (img, tok, torch.tensor(0.0)), "encode": (img,),
                                                "step": (tok[:, 0], *state)})
    traced._c._register_attribute("vocab", torch._C.ListType(torch._C.StringType.get()), list(data.VOCAB))
    traced.save(os.path.join(out_models, "captioner_traced.pt"))
    with open(os.path.join(out_models, "captioner_vocab.txt"), "w") as fh:
        fh.write("\n".join(data.VOCAB) + "\n")

if __name__ == "__main__":
    main()
