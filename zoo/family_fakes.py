#!/usr/bin/env python3
"""Tiny stand-ins for the "image + prompt decoder" and "text-only" plugin
families, with float64 Grad-CAM references.

Both models have seeded random weights (no training); width 32, 4 heads of
dimension 8, pre-LayerNorm blocks:

  block(x) = x + attn(norm1(x)); then x + mlp(norm2(x))
  attn     = qkv Linear(32, 96) split into q, k, v (in that order, each 4 heads
             x 8), softmax(q k^T / sqrt(8) [+ causal mask]) v, heads
             concatenated, proj Linear(32, 32)
  mlp      = Linear(32, 64), GELU (erf), Linear(64, 32)

Each block returns a plain B x L x 32 tensor: the C++ tests tap `blocks.0`,
the output of that submodule call.

1. Fake decoder-only VLM (vlm_scripted.pt; vlm_traced.pt too when the trace
   holds for other image sizes and sequence lengths)

   forward(pixels: B x 3 x H x W float32, H and W multiples of 8,
           ids: B x L int64) -> logits B x L x 24
     img = patch(pixels)            Conv2d(3, 32, 8, stride 8), then flattened
                                    row-major over the gh x gw grid: B x gh*gw x 32
     x   = embed(ids)               Embedding(24, 32)
     x   = x.masked_scatter(ids == 2, img)   the image tokens replace the
                                    <img> positions, in order (each row holds
                                    exactly gh*gw <img> tokens)
     x   = x + pos(arange(L))       Embedding(128, 32): L <= 128
     x   = blocks.1(blocks.0(x))    causal: position i attends to 0..i
     logits = head(norm(x))         LayerNorm(32), Linear(32, 24)

   Vocabulary (vlm_vocab.txt, one token a line, id = line index from 0):
     0 <pad>  1 <bos>  2 <img>  3 <vision_start>  4 <vision_end>
     5 how  6 many  7 circles  8 squares  9 are  10 there  11 in  12 the
     13 image  14 ?  15 zero  16 one  17 two  18 three  19 four  20 five
     21 a  22 red  23 blue

   Sequence for an image with grid gh x gw and a prompt:
     [<bos>, <vision_start>] + [<img>] * (gh*gw) + [<vision_end>]
       + the prompt's words (lower-cased, split on whitespace, each looked up
         in the vocabulary)
   The test prompt is "how many circles are there ?" (ids 5 6 7 9 10 14), so
   L = gh*gw + 9 and the image rows are positions 2 .. gh*gw + 1.

   Preprocessing: per channel, RGB order, CHW, x = (pixel / 255 - 0.5) / 0.25.

   Target: the answer "two" (id 17) after the last prompt token, one image at
   a time (batch 1):  y = log_softmax(logits[0, L - 1, :])[17].

2. Fake text-only encoder (textcls_scripted.pt; textcls_traced.pt too when the
   trace holds for other lengths)

   forward(ids: B x T int64) -> logits B x 3
     x = embed(ids) + pos(arange(T))   Embedding(15, 32), Embedding(64, 32): T <= 64
     x = blocks.0(x)                   bidirectional (no mask)
     logits = head(norm(x).mean over T)   LayerNorm(32), Linear(32, 3)

   Vocabulary (textcls_vocab.txt, id = line index from 0):
     0 <pad>  1 <cls>  2 the  3 movie  4 was  5 great  6 bad  7 boring  8 fun
     9 plot  10 acting  11 and  12 but  13 not  14 very

   Sequence: [<cls>] + the sentence's words (lower-cased, split on whitespace).
     sentence 0 "the movie was great"                        -> 1 2 3 4 5
     sentence 1 "the plot was boring but the acting was fun" -> 1 2 9 4 7 12 2 10 4 8

   Target: class 1, the raw logit y = logits[0, 1], one sentence at a time.

Grad-CAM (both models) at the output A of blocks.0 (B x L x 32), G = dy/dA:
keep the rows of A and G at the image positions (VLM, N = gh*gw rows in
order) or the word positions 1 .. T-1 (text, the <cls> row dropped); w =
mean of G's kept rows (32 values); cam = max(0, A_kept @ w); then
(cam - min) / (max - min + 1e-7). The VLM's N values are reshaped gh x gw
row-major.

The references come from a separate float64 reimplementation of the forward
from the scripted file's weights; it is checked against that file's float32
logits, and the maps against a float32 Grad-CAM run through the file's own
submodules. Every .npy is float32.

Files written in --out:
  vlm_scripted.pt, vlm_traced.pt (when the trace generalises)
  vlm_vocab.txt
  vlm_wide.png            RGB, 48 high x 80 wide (grid 6 x 10, L = 69)
  vlm_tall.png            RGB, 88 high x 48 wide (grid 11 x 6, L = 75)
  vlm_cam_wide.npy        6 x 10
  vlm_cam_tall.npy        11 x 6
  vlm_score_wide.npy, vlm_score_tall.npy     y, 1 value each
  textcls_scripted.pt, textcls_traced.pt (when the trace generalises)
  textcls_vocab.txt
  textcls_cam_0.npy       4 values (the words of sentence 0)
  textcls_cam_1.npy       9 values (the words of sentence 1)
  textcls_logits_0.npy, textcls_logits_1.npy  the 3 logits of each sentence

Models are exported only when missing or with --force; the vocabularies,
images and references are written every run, from the models on disk.

usage: python3 zoo/family_fakes.py --out DIR [--force]
"""
import argparse
import os
import warnings

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

DIM, HEADS, HEAD_DIM, HIDDEN, PATCH = 32, 4, 8, 64, 8

VLM_VOCAB = ["<pad>", "<bos>", "<img>", "<vision_start>", "<vision_end>"] + (
    "how many circles squares are there in the image ? zero one two three four five a red blue".split())
BOS, IMG, VISION_START, VISION_END = 1, 2, 3, 4
VLM_POSITIONS, VLM_DEPTH = 128, 2
VLM_PROMPT, VLM_ANSWER = "how many circles are there ?", "two"
# name: (height, width) of the image
VLM_IMAGES = {"wide": (48, 80), "tall": (88, 48)}

TEXT_VOCAB = ["<pad>", "<cls>"] + "the movie was great bad boring fun plot acting and but not very".split()
CLS = 1
TEXT_POSITIONS, TEXT_DEPTH, TEXT_CLASSES, TEXT_TARGET = 64, 1, 3, 1
SENTENCES = ["the movie was great", "the plot was boring but the acting was fun"]


# ---- the models --------------------------------------------------------------

class Attention(nn.Module):
    def __init__(self, causal: bool):
        super().__init__()
        self.causal = causal
        self.heads = HEADS
        self.head_dim = HEAD_DIM
        self.scale = HEAD_DIM ** -0.5
        self.qkv = nn.Linear(DIM, 3 * DIM)
        self.proj = nn.Linear(DIM, DIM)

    def forward(self, x):
        B, L, C = x.shape[0], x.shape[1], x.shape[2]
        qkv = self.qkv(x).reshape(B, L, 3, self.heads, self.head_dim).permute(2, 0, 3, 1, 4)
        q, k, v = qkv[0], qkv[1], qkv[2]
        scores = (q @ k.transpose(-2, -1)) * self.scale
        if self.causal:
            # -inf above the diagonal: position i sees positions 0..i only.
            mask = torch.full((L, L), float("-inf"), dtype=scores.dtype, device=scores.device).triu(1)
            scores = scores + mask
        probs = scores.softmax(dim=-1)
        out = (probs @ v).transpose(1, 2).reshape(B, L, C)
        return self.proj(out)


class Block(nn.Module):
    def __init__(self, causal: bool):
        super().__init__()
        self.norm1 = nn.LayerNorm(DIM)
        self.attn = Attention(causal)
        self.norm2 = nn.LayerNorm(DIM)
        self.mlp = nn.Sequential(nn.Linear(DIM, HIDDEN), nn.GELU(), nn.Linear(HIDDEN, DIM))

    def forward(self, x):
        x = x + self.attn(self.norm1(x))
        return x + self.mlp(self.norm2(x))


class FakeVlm(nn.Module):
    def __init__(self):
        super().__init__()
        self.patch = nn.Conv2d(3, DIM, PATCH, stride=PATCH)
        self.embed = nn.Embedding(len(VLM_VOCAB), DIM)
        self.pos = nn.Embedding(VLM_POSITIONS, DIM)
        self.blocks = nn.ModuleList([Block(True) for _ in range(VLM_DEPTH)])
        self.norm = nn.LayerNorm(DIM)
        self.head = nn.Linear(DIM, len(VLM_VOCAB))

    def forward(self, pixels: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
        img = self.patch(pixels).flatten(2).transpose(1, 2)
        x = self.embed(ids)
        x = x.masked_scatter((ids == 2).unsqueeze(-1), img)  # 2: <img>
        x = x + self.pos(torch.arange(ids.shape[1], device=ids.device))
        for block in self.blocks:
            x = block(x)
        return self.head(self.norm(x))


class FakeTextClassifier(nn.Module):
    def __init__(self):
        super().__init__()
        self.embed = nn.Embedding(len(TEXT_VOCAB), DIM)
        self.pos = nn.Embedding(TEXT_POSITIONS, DIM)
        self.blocks = nn.ModuleList([Block(False) for _ in range(TEXT_DEPTH)])
        self.norm = nn.LayerNorm(DIM)
        self.head = nn.Linear(DIM, TEXT_CLASSES)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        x = self.embed(ids) + self.pos(torch.arange(ids.shape[1], device=ids.device))
        for block in self.blocks:
            x = block(x)
        return self.head(self.norm(x).mean(1))


def seeded(model, seed):
    """Seeded weights large enough that the maps are not flat: He-scaled
    matrices, unit-variance embeddings, norm gains in [0.5, 1.5], biases and
    norm shifts N(0, 0.2)."""
    rng = np.random.RandomState(seed)
    with torch.no_grad():
        for name, p in model.state_dict().items():
            if "norm" in name and name.endswith(".weight"):
                values = rng.uniform(0.5, 1.5, size=p.shape)
            elif name in ("embed.weight", "pos.weight"):
                values = rng.normal(0.0, 1.0, size=p.shape)
            elif p.dim() > 1:
                values = rng.normal(0.0, 1.0, size=p.shape) * np.sqrt(2.0 / np.prod(p.shape[1:]))
            else:
                values = rng.normal(0.0, 0.2, size=p.shape)
            p.copy_(torch.from_numpy(values.astype(np.float32)))
    return model.eval()


# ---- token sequences and images ----------------------------------------------

def vlm_ids(grid, prompt=VLM_PROMPT):
    gh, gw = grid
    words = [VLM_VOCAB.index(w) for w in prompt.lower().split()]
    return [BOS, VISION_START] + [IMG] * (gh * gw) + [VISION_END] + words


def text_ids(sentence):
    return [CLS] + [TEXT_VOCAB.index(w) for w in sentence.lower().split()]


def preprocess(im, dtype):
    """H x W x 3 RGB uint8 -> 1 x 3 x H x W, (pixel / 255 - 0.5) / 0.25."""
    x = (im.astype(np.float64) / 255.0 - 0.5) / 0.25
    return torch.from_numpy(x.transpose(2, 0, 1).copy())[None].to(dtype)


def vlm_images():
    rng = np.random.RandomState(23)
    return {name: rng.randint(0, 256, size=(h, w, 3)).astype(np.uint8) for name, (h, w) in VLM_IMAGES.items()}


def write_vocab(path, vocab):
    with open(path, "w") as f:
        f.write("".join(t + "\n" for t in vocab))


# ---- float64 reimplementation, from the weights alone ------------------------

def ref_block(sd, prefix, x, causal):
    ln = lambda t, name: F.layer_norm(t, (DIM,), sd[f"{prefix}{name}.weight"], sd[f"{prefix}{name}.bias"])
    lin = lambda t, name: t @ sd[f"{prefix}{name}.weight"].T + sd[f"{prefix}{name}.bias"]
    B, L, _ = x.shape
    q, k, v = lin(ln(x, "norm1"), "attn.qkv").split(DIM, dim=-1)
    heads = lambda t: t.reshape(B, L, HEADS, HEAD_DIM).transpose(1, 2)
    q, k, v = heads(q), heads(k), heads(v)
    scores = q @ k.transpose(-2, -1) / np.sqrt(HEAD_DIM)
    if causal:
        future = torch.ones(L, L, dtype=torch.bool).triu(1)
        scores = scores.masked_fill(future, float("-inf"))
    out = (torch.softmax(scores, dim=-1) @ v).transpose(1, 2).reshape(B, L, DIM)
    x = x + lin(out, "attn.proj")
    m = F.gelu(lin(ln(x, "norm2"), "mlp.0"))
    return x + lin(m, "mlp.2")


def ref_blocks(sd, x, depth, causal):
    """Runs the blocks; returns the output and blocks.0's output (its grad kept)."""
    if not x.requires_grad:
        x = x.detach().requires_grad_()  # so that the blocks' outputs keep a graph
    tap = None
    for b in range(depth):
        x = ref_block(sd, f"blocks.{b}.", x, causal)
        if b == 0:
            x.retain_grad()
            tap = x
    return x, tap


def ref_vlm(sd, pixels, ids):
    img = F.conv2d(pixels, sd["patch.weight"], sd["patch.bias"], stride=PATCH).flatten(2).transpose(1, 2)
    x = sd["embed.weight"][ids].clone()
    for b in range(ids.shape[0]):
        x[b, (ids[b] == IMG).nonzero()[:, 0]] = img[b]
    x = x + sd["pos.weight"][: ids.shape[1]]
    x, tap = ref_blocks(sd, x, VLM_DEPTH, causal=True)
    x = F.layer_norm(x, (DIM,), sd["norm.weight"], sd["norm.bias"])
    return x @ sd["head.weight"].T + sd["head.bias"], tap


def ref_text(sd, ids):
    x = sd["embed.weight"][ids] + sd["pos.weight"][: ids.shape[1]]
    x, tap = ref_blocks(sd, x, TEXT_DEPTH, causal=False)
    x = F.layer_norm(x, (DIM,), sd["norm.weight"], sd["norm.bias"]).mean(1)
    return x @ sd["head.weight"].T + sd["head.bias"], tap


def grad_cam_rows(a, g):
    """Grad-CAM over N kept rows (N x C activations and gradients): N values, min-max normalised."""
    cam = np.maximum(a @ g.mean(0), 0)
    return (cam - cam.min()) / (cam.max() - cam.min() + 1e-7)


# ---- float32 cross-check through the scripted file's own submodules ----------

def module_vlm_tap(m, pixels, ids):
    """The loaded module's forward, step by step, keeping blocks.0's output."""
    img = m.patch(pixels).flatten(2).transpose(1, 2)
    x = m.embed(ids).masked_scatter((ids == IMG).unsqueeze(-1), img)
    x = x + m.pos(torch.arange(ids.shape[1]))
    taps = []
    for b in range(VLM_DEPTH):
        x = getattr(m.blocks, str(b))(x)
        taps.append(x)
    return m.head(m.norm(x)), taps[0]


def module_text_tap(m, ids):
    x = m.embed(ids) + m.pos(torch.arange(ids.shape[1]))
    taps = []
    for b in range(TEXT_DEPTH):
        x = getattr(m.blocks, str(b))(x)
        taps.append(x)
    return m.head(m.norm(x).mean(1)), taps[0]


def check_cam(name, cam, tap, y, rows):
    """Compares cam with the Grad-CAM of a float32 pass (tap: blocks.0's output, y: the score)."""
    (g,) = torch.autograd.grad(y, tap)
    cam32 = grad_cam_rows(tap[0, rows].detach().double().numpy(), g[0, rows].double().numpy())
    err = np.abs(cam32 - cam.reshape(-1)).max()
    assert err < 1e-3, f"{name}: float32 Grad-CAM of the scripted module differs from the reference by {err}"
    return err


# ---- export ------------------------------------------------------------------

def save(path, t):
    np.save(path, np.asarray(t.detach().numpy() if torch.is_tensor(t) else t).astype(np.float32))


def double_state(module):
    return {k: v.detach().double() for k, v in module.state_dict().items()}


def max_diff(a, b):
    return (a - b).abs().max().item()


def export(model, name, out, force, trace_args, check_args):
    """Writes <name>_scripted.pt (when missing or forced) and <name>_traced.pt
    when a trace made on trace_args gives the module's output on every
    argument tuple in check_args (other sizes). Returns the traced status."""
    scripted, traced = (os.path.join(out, f"{name}_{v}.pt") for v in ("scripted", "traced"))
    if force or not os.path.exists(scripted):
        torch.jit.script(model).save(scripted)
    if force or not os.path.exists(traced):
        with torch.no_grad(), warnings.catch_warnings():
            warnings.simplefilter("ignore", torch.jit.TracerWarning)
            candidate = torch.jit.trace(model, trace_args, check_trace=False)
            err = max(max_diff(candidate(*a), model(*a)) for a in check_args)
        if err < 1e-5:
            candidate.save(traced)
            status = "written"
        else:
            if os.path.exists(traced):
                os.remove(traced)
            status = f"not written: the trace differs by {err:.3g} on other sizes"
    else:
        status = "kept" if os.path.exists(traced) else "absent"
    # The files on disk against the module, on every size.
    with torch.no_grad():
        for path in (scripted, traced):
            if os.path.exists(path):
                loaded = torch.jit.load(path)
                err = max(max_diff(loaded(*a), model(*a)) for a in (trace_args,) + tuple(check_args))
                assert err < 1e-5, f"{path} differs from the module by {err}"
    return status


def export_vlm(out, force):
    import cv2
    model = seeded(FakeVlm(), seed=101)
    write_vocab(os.path.join(out, "vlm_vocab.txt"), VLM_VOCAB)
    images = vlm_images()
    for name, im in images.items():
        cv2.imwrite(os.path.join(out, f"vlm_{name}.png"), im[:, :, ::-1])
    grids = {name: (h // PATCH, w // PATCH) for name, (h, w) in VLM_IMAGES.items()}
    ids = {name: torch.tensor([vlm_ids(grids[name])]) for name in images}
    pixels = {name: preprocess(im, torch.float32) for name, im in images.items()}
    # Traced on the wide image; checked on the tall one (another grid and L)
    # and on the tall one with a longer prompt (another L again).
    longer = torch.tensor([vlm_ids(grids["tall"], "how many red squares are there in the image ?")])
    status = export(model, "vlm", out, force, (pixels["wide"], ids["wide"]),
                    [(pixels["tall"], ids["tall"]), (pixels["tall"], longer)])

    scripted = torch.jit.load(os.path.join(out, "vlm_scripted.pt"))
    sd = double_state(scripted)
    answer = VLM_VOCAB.index(VLM_ANSWER)
    summary = []
    for name in images:
        L = ids[name].shape[1]
        rows = (ids[name][0] == IMG).nonzero()[:, 0]
        logits, tap = ref_vlm(sd, preprocess(images[name], torch.float64), ids[name])
        with torch.no_grad():
            err = max_diff(scripted(pixels[name], ids[name]).double(), logits)
        assert err < 1e-4 * max(1.0, logits.abs().max().item()), \
            f"vlm {name}: float64 reference differs from the module by {err}"
        y = torch.log_softmax(logits[0, L - 1], dim=-1)[answer]
        y.backward()
        cam = grad_cam_rows(tap[0, rows].detach().numpy(), tap.grad[0, rows].numpy()).reshape(grids[name])
        logits32, tap32 = module_vlm_tap(scripted, pixels[name], ids[name])
        y32 = torch.log_softmax(logits32[0, L - 1], dim=-1)[answer]
        cam_err = check_cam(f"vlm {name}", cam, tap32, y32, rows)
        save(os.path.join(out, f"vlm_cam_{name}.npy"), cam)
        save(os.path.join(out, f"vlm_score_{name}.npy"), y.detach().reshape(1))
        summary.append(f"  {name}: grid {grids[name][0]} x {grids[name][1]}, L {L}, ids[:4] {ids[name][0, :4].tolist()}, "
                       f"y {y.item():.6f}, float64 vs module {err:.2g}, cam vs float32 {cam_err:.2g}")
    return status, summary


def export_textcls(out, force):
    model = seeded(FakeTextClassifier(), seed=202)
    write_vocab(os.path.join(out, "textcls_vocab.txt"), TEXT_VOCAB)
    ids = [torch.tensor([text_ids(s)]) for s in SENTENCES]
    # Traced on sentence 0; checked on sentence 1 and on a batch of two
    # random sequences of another length.
    rng = np.random.RandomState(5)
    other = torch.from_numpy(rng.randint(2, len(TEXT_VOCAB), size=(2, 17)).astype(np.int64))
    status = export(model, "textcls", out, force, (ids[0],), [(ids[1],), (other,)])

    scripted = torch.jit.load(os.path.join(out, "textcls_scripted.pt"))
    sd = double_state(scripted)
    summary = []
    for i, t in enumerate(ids):
        rows = torch.arange(1, t.shape[1])
        logits, tap = ref_text(sd, t)
        with torch.no_grad():
            err = max_diff(scripted(t).double(), logits)
        assert err < 1e-4 * max(1.0, logits.abs().max().item()), \
            f"textcls {i}: float64 reference differs from the module by {err}"
        logits[0, TEXT_TARGET].backward()
        cam = grad_cam_rows(tap[0, rows].detach().numpy(), tap.grad[0, rows].numpy())
        logits32, tap32 = module_text_tap(scripted, t)
        cam_err = check_cam(f"textcls {i}", cam, tap32, logits32[0, TEXT_TARGET], rows)
        save(os.path.join(out, f"textcls_cam_{i}.npy"), cam)
        save(os.path.join(out, f"textcls_logits_{i}.npy"), logits[0])
        summary.append(f"  sentence {i}: ids {t[0].tolist()}, logits {np.round(logits[0].detach().numpy(), 4).tolist()}, "
                       f"float64 vs module {err:.2g}, cam vs float32 {cam_err:.2g}")
    return status, summary


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", required=True)
    ap.add_argument("--force", action="store_true")
    args = ap.parse_args()
    os.makedirs(args.out, exist_ok=True)
    vlm_status, vlm_summary = export_vlm(args.out, args.force)
    text_status, text_summary = export_textcls(args.out, args.force)
    print(f"fake VLM: vlm_scripted.pt; vlm_traced.pt {vlm_status}")
    print("\n".join(vlm_summary))
    print(f"fake text classifier: textcls_scripted.pt; textcls_traced.pt {text_status}")
    print("\n".join(text_summary))
    print(f"family fakes and references in {args.out}")


if __name__ == "__main__":
    main()
