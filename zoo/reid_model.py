#!/usr/bin/env python3
"""A PromptSG-shaped person re-identification model, trained on zoo/reid_data.py's pedestrians.

Architecture (random init, small, trained here; the layer names are what the
re-ID plugin's layer types resolve to):
  vit          transformers' CLIPVisionModel (eager attention, torchscript config):
               patch 16, 4 layers, width 128, 4 heads; its 8 x 8 position table is
               interpolated to the 8 x 4 grid of a 128 x 64 input (as CLIP re-ID
               models do for pedestrian crops)
  vit_proj     a linear projection of every token (CLIP's visual projection)
  mim          the multimodal interaction module: a learned prompt query
               cross-attends to the projected patch tokens (mim.q / mim.k / mim.v /
               mim.out; mim.softmax is the post-softmax attention, B x heads x 1 x N)
  post         two self-attention blocks over [prompt token, CLS, patches]
  bottleneck   BNNeck (BatchNorm1d without a learned shift) of the prompt token
  classifier   the identity classifier (training only)
Losses: identity cross-entropy (label smoothing 0.1) on the BNNeck output, and a
batch-hard triplet loss (margin 0.3) on the feature before it; P x K batches.

Model contract (any re-ID model the plugin takes meets it): in eval mode,
forward(images B x 3 x H x W, normalised with CLIP's mean and std) returns the
embeddings B x D.

Outputs:
  MODELS/reid_promptsg_traced.pt   torch.jit.trace of the eval model (1 x 3 x 128 x 64)
  MODELS/reid_promptsg.json        geometry, normalisation, layer names, and the
                                   held-out mAP / Rank-1 of this training run

usage: .venv-hf/bin/python zoo/reid_model.py --data DIR [--out-models DIR] [--epochs N] [--seed S]
       (zoo/setup_hf_venv.sh makes the venv; zoo/reid_data.py writes DIR)
"""
import argparse
import glob
import json
import os
import re
import time

import cv2
import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from transformers import CLIPVisionConfig, CLIPVisionModel

MEAN = (0.48145466, 0.4578275, 0.40821073)  # CLIP's
STD = (0.26862954, 0.26130258, 0.27577711)
SIZE = (128, 64)
PATCH = 16
WIDTH = 128
HEADS = 4
REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
NAME = re.compile(r"^(-1|\d{4})_c(\d)s\d_\d{6}_\d{2}\.jpg$")


class CrossAttention(nn.Module):
    """One query sequence attending to key/value tokens, with its softmax a module."""

    def __init__(self, dim, heads):
        super().__init__()
        self.heads, self.scale = heads, (dim // heads) ** -0.5
        self.q, self.k, self.v, self.out = (nn.Linear(dim, dim) for _ in range(4))
        self.softmax = nn.Softmax(dim=-1)

    def forward(self, query, tokens):
        b, nq, d = query.shape
        n = tokens.shape[1]
        h = self.heads
        q = self.q(query).reshape(b, nq, h, d // h).transpose(1, 2)
        k = self.k(tokens).reshape(b, n, h, d // h).transpose(1, 2)
        v = self.v(tokens).reshape(b, n, h, d // h).transpose(1, 2)
        attn = self.softmax(torch.matmul(q, k.transpose(-1, -2)) * self.scale)  # B x h x nq x n
        return query + self.out(torch.matmul(attn, v).transpose(1, 2).reshape(b, nq, d))


class PromptSG(nn.Module):
    def __init__(self, num_ids):
        super().__init__()
        cfg = CLIPVisionConfig(hidden_size=WIDTH, intermediate_size=2 * WIDTH, num_hidden_layers=4,
                               num_attention_heads=HEADS, image_size=SIZE[0], patch_size=PATCH,
                               torchscript=True, attn_implementation="eager")
        self.vit = CLIPVisionModel(cfg)
        self.vit_proj = nn.Linear(WIDTH, WIDTH, bias=False)
        self.prompt = nn.Parameter(torch.randn(1, 1, WIDTH) * 0.02)
        self.mim = CrossAttention(WIDTH, HEADS)
        block = nn.TransformerEncoderLayer(WIDTH, HEADS, 2 * WIDTH, dropout=0.0, batch_first=True, norm_first=True)
        self.post = nn.TransformerEncoder(block, num_layers=2)
        self.bottleneck = nn.BatchNorm1d(WIDTH)
        self.bottleneck.bias.requires_grad_(False)
        self.classifier = nn.Linear(WIDTH, num_ids, bias=False)

    def forward(self, images):
        tokens = self.vit(pixel_values=images, interpolate_pos_encoding=True)[0]  # B x (1 + h*w) x C
        tokens = self.vit_proj(tokens)
        prompt = self.mim(self.prompt.expand(images.shape[0], -1, -1), tokens[:, 1:])
        seq = self.post(torch.cat([prompt, tokens], dim=1))
        feat = seq[:, 0]
        emb = self.bottleneck(feat)
        if self.training:
            return feat, self.classifier(emb)
        return emb


def load_split(folder):
    """Images (N x 3 x H x W float, normalised), pids, cameras of a Market-1501 folder."""
    files = sorted(f for f in glob.glob(os.path.join(folder, "*.jpg")) if NAME.match(os.path.basename(f)))
    ims, pids, cams = [], [], []
    for f in files:
        m = NAME.match(os.path.basename(f))
        rgb = cv2.cvtColor(cv2.imread(f), cv2.COLOR_BGR2RGB).astype(np.float32) / 255.0
        rgb = cv2.resize(rgb, (SIZE[1], SIZE[0]), interpolation=cv2.INTER_LINEAR)
        ims.append(((rgb - MEAN) / STD).transpose(2, 0, 1))
        pids.append(int(m.group(1)))
        cams.append(int(m.group(2)))
    return torch.tensor(np.stack(ims), dtype=torch.float32), np.array(pids), np.array(cams), files


def triplet_hard(feat, labels, margin=0.3):
    d = torch.cdist(feat, feat)
    same = labels[:, None] == labels[None, :]
    hardest_pos = (d * same).max(1).values
    hardest_neg = (d + 1e6 * same).min(1).values
    return F.relu(hardest_pos - hardest_neg + margin).mean()


def market_eval(q, g, qp, gp, qc, gc):
    """mAP and Rank-1 with the Market-1501 protocol (squared Euclidean distance)."""
    d = torch.cdist(q.double(), g.double()).pow(2).numpy()
    aps, r1 = [], []
    for i in range(len(qp)):
        order = np.argsort(d[i], kind="stable")
        keep = ~(((gp[order] == qp[i]) & (gc[order] == qc[i])) | (gp[order] == -1))
        match = (gp[order] == qp[i])[keep]
        if not match.any():
            continue
        hits = np.cumsum(match)
        aps.append(float((hits[match] / (np.nonzero(match)[0] + 1)).mean()))
        r1.append(float(match[0]))
    return float(np.mean(aps)), float(np.mean(r1))


def embed(model, x, batch=128):
    with torch.no_grad():
        return torch.cat([model(x[i:i + batch]) for i in range(0, len(x), batch)])


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--data", required=True)
    ap.add_argument("--out-models", default=os.path.join(REPO_ROOT, "zoo", "models"))
    ap.add_argument("--epochs", type=int, default=40)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=2)
    a = ap.parse_args()
    torch.manual_seed(a.seed)
    np.random.seed(a.seed)
    torch.set_num_threads(a.threads)

    x, pids, _, _ = load_split(os.path.join(a.data, "bounding_box_train"))
    ids = sorted(set(pids.tolist()))
    y = torch.tensor([ids.index(p) for p in pids])
    model = PromptSG(len(ids))
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-3, weight_decay=1e-4)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=1e-3, total_steps=a.epochs * (len(ids) // 16))
    by_id = {i: np.nonzero(y.numpy() == i)[0] for i in range(len(ids))}
    t0 = time.time()
    for epoch in range(a.epochs):
        model.train()
        order = np.random.permutation(len(ids))
        total = 0.0
        for s in range(len(ids) // 16):  # P = 16 identities x K = 4 images
            idx = np.concatenate([np.random.choice(by_id[i], 4, replace=len(by_id[i]) < 4)
                                  for i in order[16 * s:16 * s + 16]])
            xb = x[idx]
            if np.random.rand() < 0.5:
                xb = xb.flip(3)
            feat, logits = model(xb)
            loss = F.cross_entropy(logits, y[idx], label_smoothing=0.1) + triplet_hard(feat, y[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
            total += float(loss)
        print(f"epoch {epoch + 1}/{a.epochs} loss {total / (len(ids) // 16):.3f} ({time.time() - t0:.0f} s)", flush=True)

    model.eval()
    qx, qp, qc, _ = load_split(os.path.join(a.data, "query"))
    gx, gp, gc, _ = load_split(os.path.join(a.data, "bounding_box_test"))
    m_ap, rank1 = market_eval(embed(model, qx), embed(model, gx), qp, gp, qc, gc)
    print(f"held-out: mAP {m_ap:.3f}, Rank-1 {rank1:.3f} ({len(qp)} queries, {len(gp)} gallery images)")

    os.makedirs(a.out_models, exist_ok=True)
    example = qx[:1]
    traced = torch.jit.trace(model, example, check_trace=False)
    with torch.no_grad():
        err = (traced(qx[:8]) - model(qx[:8])).abs().max().item()
    assert err < 1e-4, f"the traced model differs from the eager one by {err}"
    path = os.path.join(a.out_models, "reid_promptsg_traced.pt")
    traced.save(path)
    meta = {"input": [3, SIZE[0], SIZE[1]], "patch": PATCH, "grid": [SIZE[0] // PATCH, SIZE[1] // PATCH],
            "prefix_tokens": {"vit": 1, "post": 2}, "mean": MEAN, "std": STD, "embedding": WIDTH,
            "layers": {"vit_last": "vit.vision_model.encoder.layers.3", "vit_proj": "vit_proj", "mim": "mim",
                       "mim_attention": "mim.softmax", "post": "post.layers.1", "bottleneck": "bottleneck"},
            "identities": len(ids), "epochs": a.epochs, "seed": a.seed,
            "held_out": {"mAP": round(m_ap, 4), "rank1": round(rank1, 4), "queries": int(len(qp)),
                         "gallery": int(len(gp))}}
    with open(os.path.join(a.out_models, "reid_promptsg.json"), "w") as f:
        json.dump(meta, f, indent=1)
    print(f"wrote {path} ({os.path.getsize(path) / 1e6:.1f} MB), max |traced - eager| {err:.2e}")


if __name__ == "__main__":
    main()
