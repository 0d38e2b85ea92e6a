#!/usr/bin/env python3
"""References for the captioner plugin's tests, from the committed zoo model
(zoo/models/captioner_scripted.pt) on the committed held-out scenes
(zoo/data/captioner):

  OUT/reference.json
    greedy, beam3        each image's caption from the scripted float32 model, decoded
                         as the plugin decodes (greedy: the argmax until <end>; beam:
                         width 3, log-softmax in float32 summed in float64, beams
                         shrinking as hypotheses end, the best finished sum wins)
    greedy64, beam3_64   the same from the model in float64
    exact, bleu4         greedy captions against the references (corpus BLEU-4, float64)
    maps                 for the first MAPS images: per word of the float64 greedy caption,
                         Grad-CAM at encoder.layer3 (8 x 8) of the
                         word's logit, of its logit with the recurrent state detached
                         between steps, and of its log-probability; float64
                         (min-max normalised with SPEC's 1e-7 in the range), and each
                         word's probability
  OUT/captioner_forward_only.pt   the model scripted without encode/step (decoding
                                  re-runs forward)
  OUT/captioner_two_inputs.pt     forward(images, tokens) only (no detach_state)

usage: python3 zoo/captioner_fixtures.py --out DIR
"""
import argparse
import json
import os
import sys

import numpy as np
import torch
import torch.nn as nn

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import captioner_data as data  # noqa: E402
import captioner_model as cm  # noqa: E402

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MAPS = 4
MAX_WORDS = 20


def beam_search(model, images, width, dtype):
    """The plugin's beam search (width 1 is greedy), on one image at a time."""
    start, end = data.INDEX["<start>"], data.INDEX["<end>"]
    out = []
    with torch.no_grad():
        for b in range(images.size(0)):
            state = [s.repeat_interleave(width, 0) for s in model.encode(images[b:b + 1].to(dtype))]
            seqs = [[] for _ in range(width)]
            scores = [0.0] + [float("-inf")] * (width - 1)
            alive = [True] + [False] * (width - 1)
            last = torch.full((width,), start, dtype=torch.long)
            done = []
            for _ in range(MAX_WORDS):
                if not any(alive):
                    break
                logits, *state = model.step(last, *state)
                lp = torch.log_softmax(logits, 1).double().tolist()
                cand = [(scores[w] + lp[w][v], w * len(lp[w]) + v) for w in range(width) if alive[w]
                        for v in range(len(lp[w]))]
                cand.sort(key=lambda c: (-c[0], c[1]))
                room = width - len(done)
                parent = [0] * width
                new_seqs, new_scores, new_alive = [[] for _ in range(width)], [float("-inf")] * width, [False] * width
                new_last = [start] * width
                slot = 0
                for score, key in cand[:room]:
                    r, v = divmod(key, len(lp[0]))
                    tokens = seqs[r] + [v]
                    if v == end:
                        done.append((score, tokens))
                        continue
                    parent[slot], new_seqs[slot], new_scores[slot], new_alive[slot] = r, tokens, score, True
                    new_last[slot] = v
                    slot += 1
                seqs, scores, alive = new_seqs, new_scores, new_alive
                last = torch.tensor(new_last, dtype=torch.long)
                index = torch.tensor(parent, dtype=torch.long)
                state = [s.index_select(0, index) for s in state]
            done += [(scores[w], seqs[w]) for w in range(width) if alive[w]]
            best = max(done, key=lambda d: d[0])  # the first of equal sums
            out.append(" ".join(data.VOCAB[t] for t in best[1] if t != end))
    return out


def word_maps(model, image, words, detach, logprob):
    """Grad-CAM at encoder.layer3 of each word, float64, min-max normalised (8 x 8 each)."""
    taps = []
    handle = model.encoder.layer3.register_forward_hook(lambda m, i, o: taps.append(o))
    tokens = torch.tensor([data.encode(words, len(words) + 2)], dtype=torch.long)
    logits = model(image.double(), tokens, torch.tensor(1.0 if detach else 0.0, dtype=torch.float64))
    handle.remove()
    a = taps[0]
    out, probability = [], []
    for k in range(len(words)):
        probability.append(torch.softmax(logits[0, k].detach(), 0)[tokens[0, k + 1]].item())
        row = logits[0, k]
        if logprob:
            row = torch.log_softmax(row, 0)
        (g,) = torch.autograd.grad(row[tokens[0, k + 1]], a, retain_graph=True)
        cam = torch.relu((g.mean((2, 3), keepdim=True) * a).sum(1))[0]
        cam = (cam - cam.min()) / (cam.max() - cam.min() + 1e-7)  # SPEC section 2: the epsilon shows when the
        # gradient is tiny (the log-probability of a word the model is sure of)
        out.append(cam.flatten().tolist())
    return out, probability


class TwoInputs(nn.Module):
    def __init__(self, model):
        super().__init__()
        self.model = model
        self.vocab = list(data.VOCAB)

    def forward(self, images, tokens):
        return self.model(images, tokens, torch.tensor(0.0))


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", required=True)
    a = ap.parse_args()
    os.makedirs(a.out, exist_ok=True)
    torch.set_num_threads(max(1, os.cpu_count() or 1))
    scripted = torch.jit.load(os.path.join(REPO, "zoo/models/captioner_scripted.pt"))
    model = cm.Captioner()
    model.load_state_dict(scripted.state_dict())
    model.eval()
    model64 = cm.Captioner()
    model64.load_state_dict(scripted.state_dict())
    model64 = model64.double().eval()

    folder = os.path.join(REPO, "zoo/data/captioner")
    images, refs = cm.read_set(folder)
    ids = [f"scene_{k:03d}" for k in range(len(images))]
    x = cm.normalise(images)
    ref = {"images": ids}
    ref["greedy"] = dict(zip(ids, beam_search(scripted, x, 1, torch.float32)))
    ref["greedy64"] = dict(zip(ids, beam_search(model64, x, 1, torch.float64)))
    ref["beam3"] = dict(zip(ids, beam_search(scripted, x, 3, torch.float32)))
    ref["beam3_64"] = dict(zip(ids, beam_search(model64, x, 3, torch.float64)))
    hyps = [ref["greedy"][i].split() for i in ids]
    ref["exact"] = float(np.mean([h == r for h, r in zip(hyps, refs)]))
    ref["bleu4"] = cm.bleu4(hyps, refs)
    ref["maps"] = {}
    for k in range(MAPS):
        words = ref["greedy64"][ids[k]].split()
        logit, probability = word_maps(model64, x[k:k + 1], words, False, False)
        ref["maps"][ids[k]] = {
            "words": words,
            "probability": probability,
            "logit": logit,
            "logit_detach": word_maps(model64, x[k:k + 1], words, True, False)[0],
            "logprob": word_maps(model64, x[k:k + 1], words, False, True)[0],
        }
    with open(os.path.join(a.out, "reference.json"), "w") as f:
        json.dump(ref, f)

    plain = cm.Captioner()
    plain.load_state_dict(scripted.state_dict())
    torch.jit.script(plain.eval()).save(os.path.join(a.out, "captioner_forward_only.pt"))
    torch.jit.script(TwoInputs(plain).eval()).save(os.path.join(a.out, "captioner_two_inputs.pt"))
    print(f"captioner fixtures: {len(ids)} images, exact {ref['exact']:.3f}, BLEU-4 {ref['bleu4']:.4f} -> {a.out}")


if __name__ == "__main__":
    main()
