#!/usr/bin/env python3
"""Tiny attention models for the tap tests, with float64 references.

Each is a 2-block ViT on 3 x 32 x 32 images (patch 8: a CLS token and a 4 x 4
grid, width 32, 4 heads, 5 classes) with seeded random weights, exported
traced and scripted, in the two ways attention is written in the wild:

  vit_timm   q @ k^T * scale, Tensor.softmax, then self.attn_drop (a module)
  vit_hf     F.softmax(..., dtype=float32).to(dtype), then F.dropout (functional)
  mha        nn.MultiheadAttention called with need_weights=True: the per-head
             probabilities are element [1] of the tuple it returns
  siamese    forward(query, reference) = cosine(enc(query), enc(reference)):
             one encoder on two parallel branches
  branchy    (scripted only) its softmax sits in an if: not tappable

For a fixed input (taps_input.npy, 2 images; taps_reference.npy for the
siamese one) the float64 references are computed by a separate
reimplementation of the forward from the weights (checked against the
module), and written as float32 .npy:

  <model>_probs<b>.npy    block b's attention probabilities, B x heads x 17 x 17
  <model>_grad<b>.npy     d(sum_b logit[b, 3]) / d probabilities of block b
  siamese_grad_q.npy, siamese_grad_r.npy   d(sum cosine) / d enc output, per branch
  <model>_attention1.npy  block 1's attention, heads averaged, the CLS row: B x 17
  <model>_rollout.npy     attention rollout (heads averaged, nothing discarded), CLS row
  <model>_rollout_max_d0.5.npy   rollout with max fusion, the lowest half discarded
  <model>_relevancy.npy   gradient-weighted relevancy for logit 3, CLS row
(rollout and relevancy as SPEC section 6 states them, in numpy float64.)
  siamese_query.png, siamese_reference.png   two 32 x 32 RGB images
  siamese_cam_q.npy, siamese_cam_r.npy       float64 Grad-CAM of cosine(query, reference) at
                                             enc.blocks.0@0 (query) and @1 (reference), CLS dropped,
                                             4 x 4, min-max normalised; input x / 255 - 0.5, over 0.25

usage: python3 zoo/attention_models.py --out DIR [--force]
"""
import argparse
import os

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

IMAGE, PATCH, DIM, HEADS, DEPTH, CLASSES = 32, 8, 32, 4, 2, 5
TOKENS = (IMAGE // PATCH) ** 2 + 1
TARGET_CLASS = 3


class TimmAttention(nn.Module):
    def __init__(self):
        super().__init__()
        self.num_heads = HEADS
        self.scale = (DIM // HEADS) ** -0.5
        self.qkv = nn.Linear(DIM, DIM * 3)
        self.attn_drop = nn.Dropout(0.1)
        self.proj = nn.Linear(DIM, DIM)

    def forward(self, x):
        B, N, C = x.shape
        qkv = self.qkv(x).reshape(B, N, 3, self.num_heads, C // self.num_heads).permute(2, 0, 3, 1, 4)
        q, k, v = qkv[0], qkv[1], qkv[2]
        attn = (q @ k.transpose(-2, -1)) * self.scale
        attn = attn.softmax(dim=-1)
        attn = self.attn_drop(attn)
        x = (attn @ v).transpose(1, 2).reshape(B, N, C)
        return self.proj(x)


class HfAttention(nn.Module):
    def __init__(self):
        super().__init__()
        self.num_heads = HEADS
        self.head_dim = DIM // HEADS
        self.q_proj = nn.Linear(DIM, DIM)
        self.k_proj = nn.Linear(DIM, DIM)
        self.v_proj = nn.Linear(DIM, DIM)
        self.out_proj = nn.Linear(DIM, DIM)
        self.dropout = 0.1

    def forward(self, x):
        B, N, C = x.shape
        q = self.q_proj(x).view(B, N, self.num_heads, self.head_dim).transpose(1, 2)
        k = self.k_proj(x).view(B, N, self.num_heads, self.head_dim).transpose(1, 2)
        v = self.v_proj(x).view(B, N, self.num_heads, self.head_dim).transpose(1, 2)
        w = torch.matmul(q, k.transpose(2, 3)) / (self.head_dim ** 0.5)
        w = F.softmax(w, dim=-1, dtype=torch.float32).to(q.dtype)
        w = F.dropout(w, p=self.dropout, training=self.training)
        out = torch.matmul(w, v).transpose(1, 2).reshape(B, N, C)
        return self.out_proj(out)


class MhaAttention(nn.Module):
    def __init__(self):
        super().__init__()
        self.attn = nn.MultiheadAttention(DIM, HEADS, batch_first=True)

    def forward(self, x):
        out, _ = self.attn(x, x, x, need_weights=True, average_attn_weights=False)
        return out


class BranchyAttention(TimmAttention):
    def forward(self, x):
        B, N, C = x.shape
        qkv = self.qkv(x).reshape(B, N, 3, self.num_heads, C // self.num_heads).permute(2, 0, 3, 1, 4)
        q, k, v = qkv[0], qkv[1], qkv[2]
        attn = (q @ k.transpose(-2, -1)) * self.scale
        if N > 1:
            attn = attn.softmax(dim=-1)
        else:
            attn = torch.ones_like(attn)
        x = (attn @ v).transpose(1, 2).reshape(B, N, C)
        return self.proj(x)


ATTENTION = {"vit_timm": TimmAttention, "vit_hf": HfAttention, "mha": MhaAttention, "branchy": BranchyAttention}


class Block(nn.Module):
    def __init__(self, attention):
        super().__init__()
        self.norm1 = nn.LayerNorm(DIM)
        self.attn = attention()
        self.norm2 = nn.LayerNorm(DIM)
        self.mlp = nn.Sequential(nn.Linear(DIM, 2 * DIM), nn.GELU(), nn.Linear(2 * DIM, DIM))

    def forward(self, x):
        x = x + self.attn(self.norm1(x))
        return x + self.mlp(self.norm2(x))


class Encoder(nn.Module):
    """Patch embedding, CLS token, position embedding, blocks, final norm: B x TOKENS x DIM."""

    def __init__(self, attention):
        super().__init__()
        self.patch_embed = nn.Conv2d(3, DIM, PATCH, PATCH)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, DIM))
        self.pos_embed = nn.Parameter(torch.zeros(1, TOKENS, DIM))
        self.blocks = nn.Sequential(*[Block(attention) for _ in range(DEPTH)])
        self.norm = nn.LayerNorm(DIM)

    def forward(self, x):
        x = self.patch_embed(x).flatten(2).transpose(1, 2)
        x = torch.cat([self.cls_token.expand(x.shape[0], -1, -1), x], dim=1) + self.pos_embed
        return self.norm(self.blocks(x))


class ViT(nn.Module):
    def __init__(self, attention):
        super().__init__()
        self.encoder = Encoder(attention)
        self.head = nn.Linear(DIM, CLASSES)

    def forward(self, x):
        return self.head(self.encoder(x)[:, 0])


class Siamese(nn.Module):
    def __init__(self):
        super().__init__()
        self.enc = Encoder(TimmAttention)

    def forward(self, query, reference):
        return F.cosine_similarity(self.enc(query)[:, 0], self.enc(reference)[:, 0], dim=1)


def seeded(model, seed):
    rng = np.random.RandomState(seed)
    with torch.no_grad():
        for name, p in model.state_dict().items():
            if name.endswith("norm1.weight") or name.endswith("norm2.weight") or name.endswith("norm.weight"):
                values = rng.uniform(0.5, 1.5, size=p.shape)
            elif p.dim() > 1 and not name.endswith(("cls_token", "pos_embed")):
                values = rng.normal(0.0, 1.0, size=p.shape) * np.sqrt(2.0 / np.prod(p.shape[1:]))
            else:
                values = rng.normal(0.0, 0.2, size=p.shape)
            p.copy_(torch.from_numpy(values.astype(np.float32)))
    return model.eval()


# ---- float64 reimplementation, from the weights alone --------------------------

def ref_attention(kind, sd, prefix, x, keep):
    B, N, C = x.shape
    hd = C // HEADS
    lin = lambda t, name: t @ sd[f"{prefix}{name}.weight"].T + sd[f"{prefix}{name}.bias"]
    if kind == "mha":
        w_in, b_in = sd[f"{prefix}attn.in_proj_weight"], sd[f"{prefix}attn.in_proj_bias"]
        q, k, v = (x @ w_in.T + b_in).split(C, dim=-1)
        out_name = "attn.out_proj"
    elif kind == "vit_hf":
        q, k, v = lin(x, "q_proj"), lin(x, "k_proj"), lin(x, "v_proj")
        out_name = "out_proj"
    else:
        q, k, v = lin(x, "qkv").split(C, dim=-1)
        out_name = "proj"
    heads = lambda t: t.reshape(B, N, HEADS, hd).transpose(1, 2)
    q, k, v = heads(q), heads(k), heads(v)
    probs = torch.softmax(q @ k.transpose(-2, -1) / hd ** 0.5, dim=-1)
    probs.retain_grad()
    keep.append(probs)
    return lin((probs @ v).transpose(1, 2).reshape(B, N, C), out_name)


def ref_encoder(kind, sd, x, keep, prefix="", block_outputs=None):
    ln = lambda t, name: F.layer_norm(t, (DIM,), sd[f"{prefix}{name}.weight"], sd[f"{prefix}{name}.bias"])
    t = F.conv2d(x, sd[f"{prefix}patch_embed.weight"], sd[f"{prefix}patch_embed.bias"], stride=PATCH)
    t = t.flatten(2).transpose(1, 2)
    t = torch.cat([sd[f"{prefix}cls_token"].expand(t.shape[0], -1, -1), t], dim=1) + sd[f"{prefix}pos_embed"]
    for b in range(DEPTH):
        p = f"{prefix}blocks.{b}."
        t = t + ref_attention(kind, sd, p + "attn.", ln(t, f"blocks.{b}.norm1"), keep)
        m = ln(t, f"blocks.{b}.norm2")
        m = F.gelu(m @ sd[p + "mlp.0.weight"].T + sd[p + "mlp.0.bias"])
        t = t + m @ sd[p + "mlp.2.weight"].T + sd[p + "mlp.2.bias"]
        if block_outputs is not None:
            t.retain_grad()
            block_outputs.append(t)
    return ln(t, "norm")


def fuse(p, fusion):
    return {"mean": p.mean(1), "max": p.max(1), "min": p.min(1)}[fusion]


def rollout_ref(probs, fusion="mean", discard=0.0, query=0):
    B, _, N, _ = probs[0].shape
    R = np.broadcast_to(np.eye(N), (B, N, N))
    for p in probs:
        f = fuse(p, fusion).copy()
        if discard > 0:
            keep = np.zeros((N, N), bool)
            keep[query, :] = keep[:, query] = True
            candidates = np.flatnonzero(~keep.ravel())
            k = min(int(N * N * discard), candidates.size)
            for b in range(B):
                flat = f[b].reshape(-1)
                flat[candidates[np.argsort(flat[candidates], kind="stable")[:k]]] = 0.0
        a = 0.5 * f + 0.5 * np.eye(N)
        a = a / a.sum(-1, keepdims=True)
        R = a @ R
    return R[:, query, :]


def relevancy_ref(probs, grads, query=0):
    B, _, N, _ = probs[0].shape
    R = np.broadcast_to(np.eye(N), (B, N, N)).copy()
    for p, g in zip(probs, grads):
        R = R + np.clip(g * p, 0, None).mean(1) @ R
    return R[:, query, :]


def save_attention_references(out, kind, probs, grads):
    save(os.path.join(out, f"{kind}_attention1.npy"), torch.from_numpy(probs[1].mean(1)[:, 0, :]))
    save(os.path.join(out, f"{kind}_rollout.npy"), torch.from_numpy(rollout_ref(probs)))
    save(os.path.join(out, f"{kind}_rollout_max_d0.5.npy"), torch.from_numpy(rollout_ref(probs, "max", 0.5)))
    save(os.path.join(out, f"{kind}_relevancy.npy"), torch.from_numpy(relevancy_ref(probs, grads)))


def double_state(model):
    return {k: v.detach().double().requires_grad_(False) for k, v in model.state_dict().items()}


def save(path, t):
    np.save(path, t.detach().numpy().astype(np.float32))


def export_vit(kind, out, x, force):
    model = seeded(ViT(ATTENTION[kind]), seed=len(kind))
    traced, scripted = (os.path.join(out, f"{kind}_{v}.pt") for v in ("traced", "scripted"))
    if kind != "branchy" and (force or not os.path.exists(traced)):
        # Traced with autograd on, as a model is traced for training: under
        # no_grad nn.MultiheadAttention takes its fused path, which returns no
        # weights to a caller that drops them.
        # (check_trace off: its re-trace differs in mangled type names only;
        # the exported files are checked against the model below.)
        torch.jit.trace(model, x, check_trace=False).save(traced)
    if force or not os.path.exists(scripted):
        torch.jit.script(model).save(scripted)
    if kind == "branchy":
        return
    sd = {k.replace("encoder.", "", 1): v for k, v in double_state(model).items()}
    keep = []
    logits = ref_encoder(kind, sd, x.double().requires_grad_(), keep)[:, 0] @ sd["head.weight"].T + sd["head.bias"]
    with torch.no_grad():
        err = (model(x).double() - logits).abs().max().item()
    assert err < 1e-4, f"{kind}: float64 reference differs from the module by {err}"
    with torch.no_grad():
        for path in (traced, scripted):
            err = (torch.jit.load(path)(x) - model(x)).abs().max().item()
            assert err < 1e-6, f"{path} differs from the module by {err}"
    logits[:, TARGET_CLASS].sum().backward()
    for b, probs in enumerate(keep):
        save(os.path.join(out, f"{kind}_probs{b}.npy"), probs)
        save(os.path.join(out, f"{kind}_grad{b}.npy"), probs.grad)
    save_attention_references(out, kind, [p.detach().numpy() for p in keep], [p.grad.numpy() for p in keep])


def export_siamese(out, q, r, force):
    model = seeded(Siamese(), seed=7)
    traced, scripted = (os.path.join(out, f"siamese_{v}.pt") for v in ("traced", "scripted"))
    if force or not os.path.exists(traced):
        with torch.no_grad():
            torch.jit.trace(model, (q, r)).save(traced)
    if force or not os.path.exists(scripted):
        torch.jit.script(model).save(scripted)
    sd = {k.replace("enc.", "", 1): v for k, v in double_state(model).items()}
    fq = ref_encoder("vit_timm", sd, q.double().requires_grad_(), [])
    fr = ref_encoder("vit_timm", sd, r.double().requires_grad_(), [])
    fq.retain_grad()
    fr.retain_grad()
    cos = F.cosine_similarity(fq[:, 0], fr[:, 0], dim=1)
    with torch.no_grad():
        err = (model(q, r).double() - cos).abs().max().item()
    assert err < 1e-5, f"siamese: float64 reference differs from the module by {err}"
    cos.sum().backward()
    save(os.path.join(out, "siamese_grad_q.npy"), fq.grad)
    save(os.path.join(out, "siamese_grad_r.npy"), fr.grad)


def grad_cam_tokens(tokens, grads):
    """Grad-CAM on B x N x C tokens (CLS first, then a 4 x 4 grid): B x 4 x 4, min-max normalised."""
    a, g = tokens[:, 1:, :], grads[:, 1:, :]
    cam = np.maximum((a * g.mean(1, keepdims=True)).sum(-1), 0).reshape(-1, 4, 4)
    lo, hi = cam.min((1, 2), keepdims=True), cam.max((1, 2), keepdims=True)
    return (cam - lo) / (hi - lo + 1e-7)


def export_siamese_maps(out):
    """The two images and the float64 Grad-CAM of each branch of the exported siamese model."""
    import cv2
    rng = np.random.RandomState(11)
    imgs = [rng.randint(0, 256, size=(IMAGE, IMAGE, 3)).astype(np.uint8) for _ in range(2)]
    for name, im in zip(("query", "reference"), imgs):
        cv2.imwrite(os.path.join(out, f"siamese_{name}.png"), im[:, :, ::-1])
    model = torch.jit.load(os.path.join(out, "siamese_scripted.pt"))
    sd = {k.replace("enc.", "", 1): v.detach().double() for k, v in model.state_dict().items()}
    xs = [torch.from_numpy((im.astype(np.float64) / 255.0 - 0.5) / 0.25).permute(2, 0, 1)[None] for im in imgs]
    bq, br = [], []
    fq = ref_encoder("vit_timm", sd, xs[0].requires_grad_(), [], block_outputs=bq)
    fr = ref_encoder("vit_timm", sd, xs[1].requires_grad_(), [], block_outputs=br)
    F.cosine_similarity(fq[:, 0], fr[:, 0], dim=1).sum().backward()
    # Block 0's output: block 1's attention still mixes its patch tokens into
    # the CLS token (the encoder's own output reaches the score through CLS only).
    for tag, f in (("q", bq[0]), ("r", br[0])):
        cam = grad_cam_tokens(f.detach().numpy(), f.grad.numpy())
        save(os.path.join(out, f"siamese_cam_{tag}.npy"), torch.from_numpy(cam))


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", required=True)
    ap.add_argument("--force", action="store_true")
    args = ap.parse_args()
    os.makedirs(args.out, exist_ok=True)
    torch.manual_seed(0)
    x = torch.randn(2, 3, IMAGE, IMAGE)
    ref = torch.randn(2, 3, IMAGE, IMAGE)
    save(os.path.join(args.out, "taps_input.npy"), x)
    save(os.path.join(args.out, "taps_reference.npy"), ref)
    for kind in ATTENTION:
        export_vit(kind, args.out, x, args.force)
    export_siamese(args.out, x, ref, args.force)
    export_siamese_maps(args.out)
    print(f"attention models and references in {args.out}")


if __name__ == "__main__":
    main()
