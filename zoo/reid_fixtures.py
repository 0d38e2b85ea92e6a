#!/usr/bin/env python3
"""Float64 references and foreign ViT exports for the re-ID plugin's tests.

From the committed zoo model (zoo/models/reid_promptsg_traced.pt) and test
split (zoo/data/reid/), with the eager PromptSG rebuilt in float64 from the
traced model's weights:
  OUT/pairs.json                 the query / gallery pairs below, paths relative to zoo/data/reid
  OUT/promptsg_cam_q.npy         P x 8 x 4: Grad-CAM at vit_last (tokens after the CLS) of
                                 cos(f(query), f(gallery)) with the gallery's side detached
  OUT/promptsg_cam_r.npy         the same on the gallery image, the query's side detached
  OUT/promptsg_mim.npy           P x 8 x 4: the prompt's attention over the patches (mim.softmax),
                                 heads averaged, min-max normalised
  OUT/promptsg_identity.json     each query's top identity (argmax of the classifier's logits)
  OUT/promptsg_cam_id.npy        P x 8 x 4: Grad-CAM at vit_last of that identity's logit
And two ViTs of other naming, random init, each with the Grad-CAM of its
embedding's norm at its last block for the first pair's query:
  OUT/timm_vit_small.pt          timm 0.6.13 vit_small_patch16 at 128 x 64, no head, scripted
  OUT/hf_vit.pt                  transformers' ViTModel (4 blocks, width 192), CLS embedding, traced
  OUT/timm_vit_small_cam.npy, OUT/hf_vit_cam.npy   8 x 4 each
For these two and the zoo model, the per-head attention statistics of the
first pair's query in float64 (docs/attention.md, "Images"; distances in
pixels between patch centres, the CLS token as prefix, window 2):
  OUT/attention_stats.json       {model file: {"layers": [taps], "heads": [[stats per head] per layer]}}

usage: .venv-hf/bin/python zoo/reid_fixtures.py --out DIR   (zoo/setup_hf_venv.sh makes the venv)
"""
import argparse
import glob
import json
import os
import sys

import cv2
import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
import reid_model  # noqa: E402  (the zoo model's architecture)

DATA = os.path.join(HERE, "data", "reid")
GRID = (8, 4)


def image(rel):
    rgb = cv2.cvtColor(cv2.imread(os.path.join(DATA, rel)), cv2.COLOR_BGR2RGB).astype(np.float64) / 255.0
    x = (rgb - np.array(reid_model.MEAN)) / np.array(reid_model.STD)
    return torch.from_numpy(x.transpose(2, 0, 1).copy())[None]


def normalised(cam):
    lo, hi = cam.min(), cam.max()
    return (cam - lo) / (hi - lo + 1e-7)


def grad_cam(tokens, grads, prefix):
    """Grad-CAM on 1 x N x C tokens: the grid after `prefix` tokens, 8 x 4."""
    a, g = tokens[0, prefix:], grads[0, prefix:]
    cam = torch.relu((a * g.mean(0, keepdim=True)).sum(-1)).reshape(GRID)
    return normalised(cam).numpy()


def pairs():
    """Three same-identity pairs (the query's first gallery image of its identity
    on another camera) and one pair of different identities."""
    queries = sorted(os.path.basename(f) for f in glob.glob(os.path.join(DATA, "query", "*.jpg")))
    gallery = sorted(os.path.basename(f) for f in glob.glob(os.path.join(DATA, "bounding_box_test", "*.jpg")))
    out = []
    for q in queries[:6:2]:
        pid, cam = q.split("_")[0], q.split("_")[1][:2]
        g = next(g for g in gallery if g.split("_")[0] == pid and g.split("_")[1][:2] != cam)
        out.append(("query/" + q, "bounding_box_test/" + g))
    other = next(g for g in gallery if g.split("_")[0] not in ("0000", "-1", queries[0].split("_")[0]))
    out.append(("query/" + queries[0], "bounding_box_test/" + other))
    return out


def promptsg(out):
    traced = torch.jit.load(os.path.join(HERE, "models", "reid_promptsg_traced.pt"))
    sd = traced.state_dict()
    model = reid_model.PromptSG(sd["classifier.weight"].shape[0])
    missing, _ = model.load_state_dict(sd, strict=False)  # the traced copy also holds buffers (position_ids)
    assert not missing, f"the traced model lacks {missing}"
    model = model.double().eval()
    keep = {}
    model.vit.vision_model.encoder.layers[3].register_forward_hook(lambda m, i, o: keep.__setitem__("last", o[0]))
    model.mim.softmax.register_forward_hook(lambda m, i, o: keep.__setitem__("mim", o))
    ps = pairs()
    cam_q, cam_r, mim, cam_id, ids = [], [], [], [], []
    for q_rel, g_rel in ps:
        q, g = image(q_rel), image(g_rel)
        with torch.no_grad():
            err = (traced(q.float()).double() - model(q)).abs().max().item()
        assert err < 1e-4, f"float64 PromptSG differs from the traced model by {err}"
        for side in ("q", "r"):
            fq = model(q)
            tq = keep["last"]
            mim_q = keep["mim"].detach()
            fg = model(g)
            tg = keep["last"]
            if side == "q":  # the map on the query, the gallery's embedding detached
                y, tokens = F.cosine_similarity(fq, fg.detach(), dim=1), tq
            else:
                y, tokens = F.cosine_similarity(fq.detach(), fg, dim=1), tg
            (grad,) = torch.autograd.grad(y.sum(), tokens)
            (cam_q if side == "q" else cam_r).append(grad_cam(tokens.detach(), grad, 1))
        mim.append(normalised(mim_q[0].mean(0)[0].reshape(GRID)).numpy())
        emb = model(q)
        logits = emb @ model.classifier.weight.t()
        c = int(logits[0].argmax())
        (grad,) = torch.autograd.grad(logits[0, c], keep["last"])
        cam_id.append(grad_cam(keep["last"].detach(), grad, 1))
        ids.append(c)
    for name, arr in (("cam_q", cam_q), ("cam_r", cam_r), ("mim", mim), ("cam_id", cam_id)):
        np.save(os.path.join(out, f"promptsg_{name}.npy"), np.stack(arr).astype(np.float32))
    with open(os.path.join(out, "pairs.json"), "w") as f:
        json.dump([{"query": q, "gallery": g} for q, g in ps], f, indent=1)
    with open(os.path.join(out, "promptsg_identity.json"), "w") as f:
        json.dump(ids, f)


def norm_cam(model, block, x, prefix, pick=lambda o: o):
    keep = {}
    block.register_forward_hook(lambda m, i, o: keep.__setitem__("t", pick(o)))
    y = model(x).norm(dim=1)
    (grad,) = torch.autograd.grad(y.sum(), keep["t"])
    return grad_cam(keep["t"].detach(), grad, prefix)


class HfEmbedder(nn.Module):
    """transformers' ViTModel with the CLS token's last state as the embedding."""

    def __init__(self):
        super().__init__()
        from transformers import ViTConfig, ViTModel
        cfg = ViTConfig(hidden_size=192, num_hidden_layers=4, num_attention_heads=3, intermediate_size=384,
                        image_size=(128, 64), patch_size=16, torchscript=True, attn_implementation="eager")
        self.vit = ViTModel(cfg, add_pooling_layer=False)

    def forward(self, images):
        return self.vit(pixel_values=images)[0][:, 0]


def foreign(out):
    import timm
    q = image(pairs()[0][0])
    torch.manual_seed(0)
    vit = timm.create_model("vit_small_patch16_224", img_size=(128, 64), num_classes=0).eval()
    torch.jit.script(vit).save(os.path.join(out, "timm_vit_small.pt"))
    np.save(os.path.join(out, "timm_vit_small_cam.npy"),
            norm_cam(vit.double(), vit.blocks[11], q, 1).astype(np.float32))
    torch.manual_seed(0)
    hf = HfEmbedder().eval()
    with torch.no_grad():
        torch.jit.trace(hf, q.float(), check_trace=False).save(os.path.join(out, "hf_vit.pt"))
    np.save(os.path.join(out, "hf_vit_cam.npy"),
            norm_cam(hf.double(), hf.vit.encoder.layer[3], q, 1, pick=lambda o: o[0]).astype(np.float32))
    traced = torch.jit.load(os.path.join(HERE, "models", "reid_promptsg_traced.pt"))
    zoo = reid_model.PromptSG(traced.state_dict()["classifier.weight"].shape[0])
    zoo.load_state_dict(traced.state_dict(), strict=False)
    zoo = zoo.double().eval()
    with torch.no_grad():
        zoo_attn = zoo.vit(pixel_values=q, interpolate_pos_encoding=True, output_attentions=True,
                           return_dict=True).attentions
        hf_attn = hf.vit(pixel_values=q, output_attentions=True)[-1]
    attention_references(out, {
        "reid_promptsg_traced.pt": ([f"vit.vision_model.encoder.layers.{i}.self_attn/softmax" for i in range(4)],
                                    zoo_attn),
        "timm_vit_small.pt": ([f"blocks.{i}.attn/softmax" for i in range(12)], timm_attentions(vit, q)),
        "hf_vit.pt": ([f"vit.encoder.layer.{i}.attention.attention/softmax" for i in range(4)], hf_attn)})


def head_stats(attn, prefix, patch, grid, window=2):
    """Statistics of one layer's attention (heads x N x N, float64) with the
    tokens after `prefix` on the grid, row-major, distances in pixels."""
    heads, n, _ = attn.shape
    k = np.arange(n) - prefix
    on = k >= 0
    cy = np.where(on, (k // grid[1] + 0.5) * patch, np.nan)
    cx = np.where(on, (k % grid[1] + 0.5) * patch, np.nan)
    img = np.nonzero(on)[0]
    dy = np.abs(cy[img][:, None] - cy[img][None, :])
    dx = np.abs(cx[img][:, None] - cx[img][None, :])
    out = []
    for p in attn:
        rows = -np.where(p > 0, p * np.log(np.where(p > 0, p, 1)), 0).sum(1)
        sub = p[np.ix_(img, img)]
        out.append({
            "entropy": rows.mean(), "entropy_norm": (rows / np.log(n)).mean(),
            "mean_distance": (sub * np.hypot(dy, dx)).sum(1).mean(),
            "cls_share": p[:, :prefix].sum(1).mean(), "sep_share": 0.0,
            "diagonal_share": np.diag(p).mean(),
            "previous_share": np.diag(p, -1).mean(), "next_share": np.diag(p, 1).mean(),
            "local_share": (sub * ((dy <= window * patch) & (dx <= window * patch))).sum(1).mean(),
            "causal_share": np.tril(p).sum(1).mean()})
    return [{key: float(v) for key, v in h.items()} for h in out]


def attention_references(out, models):
    """models: {file: (taps, per-layer attentions 1 x heads x N x N)}."""
    refs = {}
    for name, (taps, layers) in models.items():
        refs[name] = {"layers": taps,
                      "heads": [head_stats(a[0].detach().numpy(), 1, 16, GRID) for a in layers]}
    with open(os.path.join(out, "attention_stats.json"), "w") as f:
        json.dump(refs, f, indent=1)


def timm_attentions(vit, x):
    keep = []
    hooks = [b.attn.attn_drop.register_forward_hook(lambda m, i, o: keep.append(i[0])) for b in vit.blocks]
    with torch.no_grad():
        vit(x)
    for h in hooks:
        h.remove()
    return keep


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", required=True)
    a = ap.parse_args()
    os.makedirs(a.out, exist_ok=True)
    torch.set_num_threads(2)
    promptsg(a.out)
    foreign(a.out)
    print(f"re-ID fixtures in {a.out}")


if __name__ == "__main__":
    main()
