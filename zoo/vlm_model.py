#!/usr/bin/env python3
"""Tiny decoder-only VLMs for the VLM plugin: a transformers Qwen2-VL trained here to count
red circles (zoo/vlm_data.py), and a random-init Qwen2.5-VL, each exported with
torch.jit.trace as ONE file that serves every image grid.

Why a wrapper: tracing Qwen2VLForConditionalGeneration.forward directly freezes the
image grid: the 3-axis rotary position ids (get_rope_index), the vision rotary
table (rot_pos_emb) and cu_seqlens are computed with .tolist() / .item() / Python
loops over grid_thw, so they become constants of the trace. The exported module
(GridFreeQwen2VL / GridFreeQwen2_5VL below) therefore takes everything that depends
on the grid as inputs and re-implements ONLY the glue between the real submodules;
it holds the real `visual`, `model` and `lm_head` submodules under their own names,
so the traced file has the paths of the transformers model (`visual.blocks.2`,
`visual.merger`, `model.layers.1`, `model.embed_tokens`, `lm_head`, ...).

The exported forward (batch 1, one image):

    Qwen2-VL:   forward(input_ids [1, T] long, pixel_values [P, 3*tp*p*p] float,
                        position_ids [3, 1, T] long, vision_rotary [P, hd_v/2] float,
                        cu_seqlens [2] long) -> logits [1, T, V]
    Qwen2.5-VL: forward(input_ids, pixel_values, position_ids, vision_rotary, cu_seqlens,
                        window_index [P/4] long, cu_window_seqlens [W_max + 1] long)
                -> logits [1, T, V]

and each input is computed by a reference function of this file (the C++ plugin
reimplements them; zoo/models/vlm/reference_inputs.json has their expected values
for three small grids):

    resized_size         the Qwen-VL resize (multiples of patch*merge, round half to even)
    image_to_patches     pixel_values and grid (t, gh, gw), the processor's patch order
    build_prompt_ids     the ChatML prompt with gh*gw/merge^2 <|image_pad|> tokens
    rope_position_ids    get_rope_index for one image (text, t/h/w of the image, text)
    vision_rotary        the vision rotary angles of every patch, in patch order
    cu_seqlens           [0, t*gh*gw]
    window_index_and_cu  Qwen2.5-VL's window order and window boundaries (padded)

Steps (each a flag; zoo/vlm_zoo.sh runs them all):
  --train     train the Qwen2-VL counter from scratch on DATA/train (CPU, one thread),
              report greedy held-out accuracy / MAE against the always-the-mean answer
  --export    trace both models, write MODELS/qwen2_vl_count_traced.pt,
              MODELS/qwen2_5_vl_tiny_traced.pt, MODELS/vlm.json, MODELS/reference_inputs.json
  --verify    on grids the trace never saw, the traced files against the eager
              transformers models (their own forward with image_grid_thw): logits and the
              gradient of the answer log-prob w.r.t. a vision block's output, to 1e-4;
              also the reference functions against transformers' own; exits non-zero
              when anything differs
  --checkpoint DIR   export and verify a local transformers Qwen2-VL / Qwen2.5-VL
              checkpoint folder the same way (plugins/vlm/README.md)

usage: .venv-hf/bin/python zoo/vlm_model.py --data DIR [--train] [--export] [--verify]
       [--out-models zoo/models/vlm] [--work DIR] [--minutes M] [--seed S]
       .venv-hf/bin/python zoo/vlm_model.py --checkpoint DIR [--name NAME] [--out-models DIR]
       [--max-windows N]
       (zoo/setup_hf_venv.sh makes the venv, zoo/vlm_data.py writes DIR)
"""
import argparse
import json
import math
import os
import sys
import time

import cv2
import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("RAYON_NUM_THREADS", "1")

from tokenizers import Tokenizer  # noqa: E402
from transformers import (Qwen2_5_VLConfig, Qwen2_5_VLForConditionalGeneration,  # noqa: E402
                          Qwen2VLConfig, Qwen2VLForConditionalGeneration)
from transformers.utils import logging as hf_logging  # noqa: E402

hf_logging.set_verbosity_error()

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TOKENIZER_DIR = os.path.join(REPO_ROOT, "zoo", "models", "tokenizers", "qwen2")
QUESTION = "how many red circles?"

# Qwen2-VL's image normalisation (OpenAI CLIP's mean and std) and resize bounds.
IMAGE_MEAN = (0.48145466, 0.4578275, 0.40821073)
IMAGE_STD = (0.26862954, 0.26130258, 0.27577711)
PATCH = 8
MERGE = 2
TEMPORAL = 2
MIN_PIXELS = 32 * 32
MAX_PIXELS = 256 * 256

SPECIAL = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|vision_start|>", "<|vision_end|>",
           "<|vision_pad|>", "<|image_pad|>", "<|video_pad|>"]


# --------------------------------------------------------------------------------------
# Reference functions (plain, step by step: the C++ plugin reimplements them)
# --------------------------------------------------------------------------------------

def round_half_even(x):
    """Rounds to the nearest integer, ties to the even one (Python's round, std::nearbyint)."""
    return int(round(x))


def resized_size(height, width, patch=PATCH, merge=MERGE, min_pixels=MIN_PIXELS, max_pixels=MAX_PIXELS):
    """The size (h, w) Qwen-VL resizes an image of height x width to.

    1. factor = patch * merge (16 here, 28 for the real Qwen2-VL's patch 14). A side shorter
       than factor, or an aspect ratio over 200, is refused (as transformers does).
    2. h = round_half_even(height / factor) * factor, w likewise.
    3. If h * w > max_pixels: scale both sides down by beta = sqrt(height * width / max_pixels),
       h = floor(height / beta / factor) * factor, w likewise.
    4. If h * w < min_pixels: scale both sides up by beta = sqrt(min_pixels / (height * width)),
       h = ceil(height * beta / factor) * factor, w likewise.
    The grid is then (h / patch, w / patch), both even.
    """
    factor = patch * merge
    if height < factor or width < factor or max(height, width) / min(height, width) > 200:
        raise ValueError(f"cannot resize a {height} x {width} image for Qwen-VL (factor {factor})")
    h = round_half_even(height / factor) * factor
    w = round_half_even(width / factor) * factor
    if h * w > max_pixels:
        beta = math.sqrt(height * width / max_pixels)
        h = math.floor(height / beta / factor) * factor
        w = math.floor(width / beta / factor) * factor
    elif h * w < min_pixels:
        beta = math.sqrt(min_pixels / (height * width))
        h = math.ceil(height * beta / factor) * factor
        w = math.ceil(width * beta / factor) * factor
    return h, w


def image_to_patches(rgb, patch=PATCH, merge=MERGE, temporal=TEMPORAL, mean=IMAGE_MEAN, std=IMAGE_STD,
                     min_pixels=MIN_PIXELS, max_pixels=MAX_PIXELS):
    """pixel_values [gh*gw, 3*temporal*patch*patch] float32 and the grid (1, gh, gw) of an RGB uint8 image.

    1. Resize to resized_size(...) (bicubic; the transformers processor uses PIL's bicubic).
    2. Scale to [0, 1], subtract the mean and divide by the std per channel; channels first: x[c, y, x].
    3. An image is a video of one frame repeated: frames f = 0 .. temporal-1 all equal x.
    4. Patch order (the processor's): for bh in 0..gh/merge-1, bw in 0..gw/merge-1 (the merged
       2 x 2 blocks in raster order), mh in 0..merge-1, mw in 0..merge-1 (the patches inside a
       block in raster order): patch row = bh*merge + mh, column = bw*merge + mw.
    5. Each patch row of pixel_values lists its values in the order (channel c, frame f,
       y in the patch, x in the patch): index ((c*temporal + f)*patch + y)*patch + x.
    """
    height, width = rgb.shape[:2]
    h, w = resized_size(height, width, patch, merge, min_pixels, max_pixels)
    if (h, w) != (height, width):
        rgb = cv2.resize(rgb, (w, h), interpolation=cv2.INTER_CUBIC)
    x = rgb.astype(np.float32) / 255.0
    x = ((x - np.array(mean, np.float32)) / np.array(std, np.float32)).transpose(2, 0, 1)  # 3 x h x w
    frames = np.stack([x] * temporal)  # temporal x 3 x h x w
    gh, gw = h // patch, w // patch
    p = frames.reshape(1, temporal, 3, gh // merge, merge, patch, gw // merge, merge, patch)
    p = p.transpose(0, 3, 6, 4, 7, 2, 1, 5, 8)  # t, bh, bw, mh, mw, c, f, y, x
    return torch.from_numpy(np.ascontiguousarray(p).reshape(gh * gw, 3 * temporal * patch * patch)), (1, gh, gw)


def vision_rotary(grid, head_dim, merge=MERGE, theta=10000.0):
    """The vision rotary angles [t*gh*gw, head_dim/2] float32 of every patch, in patch order.

    head_dim is the vision attention's (embed_dim / num_heads). With d = head_dim / 2 and
    inv_freq[j] = 1 / theta^(2j / d) for j in 0 .. d/2-1 (float32), a patch at (row, col)
    (step 4 of image_to_patches) has the angles [row * inv_freq..., col * inv_freq...]
    (float32 products). The model uses cos/sin of [angles, angles] on q and k.
    Frames repeat the table (t = 1 for an image).
    """
    t, gh, gw = grid
    d = head_dim // 2
    inv_freq = 1.0 / (theta ** (torch.arange(0, d, 2, dtype=torch.float32) / d))
    rows, cols = [], []
    for bh in range(gh // merge):
        for bw in range(gw // merge):
            for mh in range(merge):
                for mw in range(merge):
                    rows.append(bh * merge + mh)
                    cols.append(bw * merge + mw)
    table = torch.outer(torch.arange(max(gh, gw), dtype=torch.float32), inv_freq)  # as transformers does
    angles = torch.cat([table[torch.tensor(rows)], table[torch.tensor(cols)]], dim=1)
    return angles.repeat(t, 1)


def cu_seqlens(grid):
    """The vision attention's sequence boundaries for one image: [0, t*gh*gw] (long).
    (Every patch attends to every patch of the image.)"""
    t, gh, gw = grid
    return torch.tensor([0, t * gh * gw], dtype=torch.long)


def rope_position_ids(input_ids, grid, image_token_id, merge=MERGE):
    """Qwen2-VL's 3-axis (t, h, w) rotary position ids [3, 1, T] (long) for a prompt with one image.

    1. The text before the first image token (ChatML header, <|vision_start|>) counts
       0, 1, ..., s-1 on all three axes, s = the index of the first <|image_pad|>.
    2. The n = t * (gh/merge) * (gw/merge) image tokens, in raster order of the merged blocks
       (frame i, block row r, block column c), get (s + i, s + r, s + c).
    3. The text after the image continues on all three axes from m + 1, m being the largest
       of the image's positions (s + max(t-1, gh/merge-1, gw/merge-1)).
    Without an image the positions are 0 .. T-1 on all three axes.
    """
    ids = [int(i) for i in input_ids]
    t, gh, gw = grid
    lh, lw = gh // merge, gw // merge
    if image_token_id not in ids:
        pos = list(range(len(ids)))
        return torch.tensor([pos, pos, pos], dtype=torch.long).unsqueeze(1)
    s = ids.index(image_token_id)
    n = t * lh * lw
    assert ids[s:s + n] == [image_token_id] * n, "the image tokens must be consecutive, t*gh*gw/merge^2 of them"
    axes = [list(range(s)), list(range(s)), list(range(s))]
    for i in range(t):
        for r in range(lh):
            for c in range(lw):
                axes[0].append(s + i)
                axes[1].append(s + r)
                axes[2].append(s + c)
    nxt = max(max(a[s:s + n]) for a in axes) + 1
    for k in range(len(ids) - s - n):
        for a in axes:
            a.append(nxt + k)
    return torch.tensor(axes, dtype=torch.long).unsqueeze(1)


def window_index_and_cu(grid, patch, merge, window_size, max_windows):
    """Qwen2.5-VL's window attention inputs for one image: (window_index [n] long, cu_window_seqlens
    [max_windows + 1] long).

    1. The merged grid (lh, lw) = (gh/merge, gw/merge); a window is ws = window_size / merge / patch
       merged tokens on a side; the grid is cut into ceil windows from the top left (windows on the
       right and bottom edges may be smaller). (transformers pads by ws - lh % ws, so a grid that
       is a multiple of ws gets an extra row of empty windows: they are dropped, as its
       unique_consecutive drops them.)
    2. window_index lists the merged tokens (r * lw + c) window by window (windows in raster order,
       tokens inside a window in raster order). The vision blocks see the patches in this order
       (groups of merge^2 patches); the merger's output is put back in raster order.
    3. cu_window_seqlens: 0 then the cumulative number of PATCHES (merge^2 per token) at the end of
       each non-empty window, then padded with its last value to max_windows + 1 entries (empty
       windows: the traced attention's mask loop has a fixed length).
    """
    t, gh, gw = grid
    lh, lw = gh // merge, gw // merge
    ws = window_size // merge // patch
    order, cu = [], [0]
    for f in range(t):
        for wr in range(0, lh + ws - lh % ws, ws):
            for wc in range(0, lw + ws - lw % ws, ws):
                members = [f * lh * lw + r * lw + c for r in range(wr, min(wr + ws, lh)) for c in range(wc, min(wc + ws, lw))]
                if members:
                    order.extend(members)
                    cu.append(cu[-1] + len(members) * merge * merge)
    if len(cu) > max_windows + 1:
        raise ValueError(f"{len(cu) - 1} windows; the export takes at most {max_windows}")
    cu += [cu[-1]] * (max_windows + 1 - len(cu))
    return torch.tensor(order, dtype=torch.long), torch.tensor(cu, dtype=torch.long)


def load_tokenizer(folder=TOKENIZER_DIR):
    """(tokenizers.Tokenizer, chat template text) of zoo/models/tokenizers/qwen2."""
    path = os.path.join(folder, "tokenizer.json")
    if not os.path.exists(path):
        sys.exit(f"{path} is missing: make it with .venv-hf/bin/python zoo/tokenizer_zoo.py")
    with open(os.path.join(folder, "tokenizer_config.json")) as f:
        template = json.load(f)["chat_template"]
    return Tokenizer.from_file(path), template


_RENDERED = {}


def render_prompt(tok, template, question=QUESTION):
    """The ChatML prompt text (the tokenizer's chat template, rendered by transformers, of a user
    turn [image, question] with add_generation_prompt) with ONE <|image_pad|>, as the processor
    sees it before widening it."""
    if (id(tok), template, question) not in _RENDERED:
        from transformers import PreTrainedTokenizerFast
        messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": question}]}]
        fast = PreTrainedTokenizerFast(tokenizer_object=tok)
        _RENDERED[id(tok), template, question] = fast.apply_chat_template(
            messages, chat_template=template, tokenize=False, add_generation_prompt=True)
    return _RENDERED[id(tok), template, question]


def build_prompt_ids(tok, template, n_image_tokens, question=QUESTION):
    """Token ids of the prompt: the rendered chat template with its <|image_pad|> repeated
    n_image_tokens = t*gh*gw/merge^2 times, encoded without extra special tokens:
    <|im_start|>system\\nYou are a helpful assistant.<|im_end|>\\n<|im_start|>user\\n
    <|vision_start|><|image_pad|>*n<|vision_end|>how many red circles?<|im_end|>\\n<|im_start|>assistant\\n"""
    text = render_prompt(tok, template, question).replace("<|image_pad|>", "<|image_pad|>" * n_image_tokens)
    return tok.encode(text, add_special_tokens=False).ids


def answer_ids(tok, count):
    """The answer's tokens: the count's digits (one token each: Qwen2's pre-tokenizer splits \\p{N}
    one digit at a time) and <|im_end|>."""
    ids = tok.encode(f"{count}<|im_end|>", add_special_tokens=False).ids
    assert len(ids) == len(str(count)) + 1, f"'{count}' does not split into single digits: {ids}"
    return ids


def geometry(cfg, pre=None):
    """What the preprocessing needs: patch, merge, temporal patch, mean, std, min/max pixels (the
    zoo's defaults, or a checkpoint's preprocessor_config.json `pre`), vision head dim, window size."""
    vc = cfg.vision_config
    pre = pre or {}
    size = pre.get("size") or {}
    return {"patch": vc.patch_size, "merge": vc.spatial_merge_size, "temporal": vc.temporal_patch_size,
            "mean": tuple(pre.get("image_mean", IMAGE_MEAN)), "std": tuple(pre.get("image_std", IMAGE_STD)),
            "min_pixels": int(pre.get("min_pixels") or size.get("min_pixels") or size.get("shortest_edge") or MIN_PIXELS),
            "max_pixels": int(pre.get("max_pixels") or size.get("max_pixels") or size.get("longest_edge") or MAX_PIXELS),
            "vision_head_dim": (getattr(vc, "embed_dim", None) or vc.hidden_size) // vc.num_heads,
            "window_size": getattr(vc, "window_size", None)}


def special_ids(tok):
    return {s: tok.token_to_id(s) for s in SPECIAL}


# --------------------------------------------------------------------------------------
# Models
# --------------------------------------------------------------------------------------

def qwen2_vl_config(tok):
    """The tiny Qwen2-VL: text hidden 64 (4 heads of 16, 2 kv heads), 3 decoder layers; vision
    embed 64 (4 heads), depth 4, patch 8, merge 2, temporal patch 2."""
    ids = special_ids(tok)
    return Qwen2VLConfig(
        vocab_size=tok.get_vocab_size(), hidden_size=64, intermediate_size=192, num_hidden_layers=3,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=4096, rope_theta=10000.0,
        rms_norm_eps=1e-6, tie_word_embeddings=True, use_sliding_window=False,
        rope_scaling={"type": "mrope", "mrope_section": [2, 3, 3]},  # sums to head_dim / 2 = 8
        vision_config={"depth": 4, "embed_dim": 64, "hidden_size": 64, "mlp_ratio": 2, "num_heads": 4,
                       "in_channels": 3, "patch_size": PATCH, "spatial_merge_size": MERGE,
                       "temporal_patch_size": TEMPORAL},
        bos_token_id=ids["<|endoftext|>"], eos_token_id=ids["<|im_end|>"], pad_token_id=ids["<|endoftext|>"],
        image_token_id=ids["<|image_pad|>"], video_token_id=ids["<|video_pad|>"],
        vision_start_token_id=ids["<|vision_start|>"], vision_end_token_id=ids["<|vision_end|>"],
        vision_token_id=ids["<|vision_pad|>"], attn_implementation="eager")


def qwen2_5_vl_config(tok):
    """The tiny Qwen2.5-VL: text as qwen2_vl_config; vision hidden 64 (4 heads), depth 4 with
    full attention in blocks 1 and 3 and window attention (32 px windows) in blocks 0 and 2."""
    ids = special_ids(tok)
    return Qwen2_5_VLConfig(
        vocab_size=tok.get_vocab_size(), hidden_size=64, intermediate_size=192, num_hidden_layers=3,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=4096, rope_theta=10000.0,
        rms_norm_eps=1e-6, tie_word_embeddings=True, use_sliding_window=False,
        rope_scaling={"type": "mrope", "mrope_section": [2, 3, 3]},
        vision_config={"depth": 4, "hidden_size": 64, "intermediate_size": 128, "num_heads": 4,
                       "in_channels": 3, "patch_size": PATCH, "spatial_merge_size": MERGE,
                       "temporal_patch_size": TEMPORAL, "window_size": 32, "out_hidden_size": 64,
                       "fullatt_block_indexes": [1, 3], "hidden_act": "silu"},
        bos_token_id=ids["<|endoftext|>"], eos_token_id=ids["<|im_end|>"], pad_token_id=ids["<|endoftext|>"],
        image_token_id=ids["<|image_pad|>"], video_token_id=ids["<|video_pad|>"],
        vision_start_token_id=ids["<|vision_start|>"], vision_end_token_id=ids["<|vision_end|>"],
        vision_token_id=ids["<|vision_pad|>"], attn_implementation="eager")


def causal_mask(input_ids, dtype):
    """The additive causal mask [1, 1, T, T] (0 on and below the diagonal, the dtype's min above),
    built from tensor ops only, so that a trace keeps T dynamic."""
    pos = torch.ones_like(input_ids[0]).cumsum(0)  # 1 .. T
    above = (pos.unsqueeze(0) > pos.unsqueeze(1)).to(dtype)  # [T, T]: key after query
    return (above * torch.finfo(dtype).min).unsqueeze(0).unsqueeze(0)


class GridFreeQwen2VL(nn.Module):
    """Qwen2VLForConditionalGeneration's forward for one image, with the grid-dependent inputs
    given (see the module docstring). Holds the real `visual`, `model`, `lm_head`."""

    def __init__(self, hf):
        super().__init__()
        self.visual = hf.visual
        self.model = hf.model
        self.lm_head = hf.lm_head
        self.image_token_id = int(hf.config.image_token_id)

    def vision(self, pixel_values, vision_rotary, cu_seqlens):
        """visual.forward with the rotary angles and cu_seqlens given: [P / merge^2, hidden]."""
        h = self.visual.patch_embed(pixel_values)
        emb = torch.cat((vision_rotary, vision_rotary), dim=-1)
        position_embeddings = (emb.cos(), emb.sin())
        for blk in self.visual.blocks:
            h = blk(h, cu_seqlens=cu_seqlens, position_embeddings=position_embeddings)
        return self.visual.merger(h)

    def decode(self, input_ids, image_embeds, position_ids):
        """The image features scattered into the <|image_pad|> embeddings, the decoder, lm_head."""
        embeds = self.model.embed_tokens(input_ids)
        mask = (input_ids == self.image_token_id).unsqueeze(-1).expand_as(embeds)
        embeds = embeds.masked_scatter(mask, image_embeds.to(embeds.dtype))
        hidden = self.model(inputs_embeds=embeds, position_ids=position_ids,
                            attention_mask=causal_mask(input_ids, embeds.dtype),
                            use_cache=False, return_dict=False)[0]
        return self.lm_head(hidden)

    def forward(self, input_ids, pixel_values, position_ids, vision_rotary, cu_seqlens):
        return self.decode(input_ids, self.vision(pixel_values, vision_rotary, cu_seqlens), position_ids)


class GridFreeQwen2_5VL(GridFreeQwen2VL):
    """Qwen2_5_VLForConditionalGeneration's forward for one image, grid-dependent inputs given:
    as GridFreeQwen2VL plus Qwen2.5-VL's window order (window_index) and window boundaries
    (cu_window_seqlens, padded to a fixed length)."""

    def __init__(self, hf):
        super().__init__(hf)
        self.unit = int(hf.config.vision_config.spatial_merge_size) ** 2
        self.full = [int(i) for i in hf.config.vision_config.fullatt_block_indexes]

    def vision(self, pixel_values, vision_rotary, cu_seqlens, window_index, cu_window_seqlens):
        h = self.visual.patch_embed(pixel_values)
        d = h.shape[-1]
        h = h.reshape(-1, self.unit, d)[window_index].reshape(-1, d)  # window order
        rot = vision_rotary.reshape(-1, self.unit, vision_rotary.shape[-1])[window_index]
        rot = rot.reshape(-1, vision_rotary.shape[-1])
        emb = torch.cat((rot, rot), dim=-1)
        position_embeddings = (emb.cos(), emb.sin())
        for i, blk in enumerate(self.visual.blocks):
            cu = cu_seqlens if i in self.full else cu_window_seqlens
            h = blk(h, cu_seqlens=cu, position_embeddings=position_embeddings)
        merged = self.visual.merger(h)
        return merged[torch.argsort(window_index)]  # back to raster order

    def forward(self, input_ids, pixel_values, position_ids, vision_rotary, cu_seqlens, window_index,
                cu_window_seqlens):
        image = self.vision(pixel_values, vision_rotary, cu_seqlens, window_index, cu_window_seqlens)
        return self.decode(input_ids, image, position_ids)


# --------------------------------------------------------------------------------------
# Data
# --------------------------------------------------------------------------------------

def read_manifest(folder):
    with open(os.path.join(folder, "manifest.jsonl")) as f:
        rows = [json.loads(line) for line in f]
    for r in rows:
        bgr = cv2.imread(os.path.join(folder, r["image"]), cv2.IMREAD_COLOR)
        r["rgb"] = cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)
    return rows


class Example:
    """Everything the model takes for one image and prompt (the reference functions' outputs)."""

    def __init__(self, rgb, tok, template, cfg, question=QUESTION, answer=None, max_windows=None, geo=None):
        geo = geo or geometry(cfg)
        self.pixel_values, self.grid = image_to_patches(rgb, geo["patch"], geo["merge"], geo["temporal"], geo["mean"],
                                                        geo["std"], geo["min_pixels"], geo["max_pixels"])
        t, gh, gw = self.grid
        n = t * gh * gw // geo["merge"] ** 2
        ids = build_prompt_ids(tok, template, n, question)
        self.prompt_len = len(ids)
        if answer is not None:
            ids = ids + list(answer)
        self.input_ids = torch.tensor([ids], dtype=torch.long)
        self.position_ids = rope_position_ids(ids, self.grid, cfg.image_token_id, geo["merge"])
        self.vision_rotary = vision_rotary(self.grid, geo["vision_head_dim"], geo["merge"])
        self.cu_seqlens = cu_seqlens(self.grid)
        self.grid_thw = torch.tensor([self.grid], dtype=torch.long)
        self.inputs = [self.input_ids, self.pixel_values, self.position_ids, self.vision_rotary, self.cu_seqlens]
        if max_windows is not None:
            self.window_index, self.cu_window_seqlens = window_index_and_cu(
                self.grid, geo["patch"], geo["merge"], geo["window_size"], max_windows)
            self.inputs += [self.window_index, self.cu_window_seqlens]


# --------------------------------------------------------------------------------------
# Training
# --------------------------------------------------------------------------------------

def greedy_count(net, ex_prompt, tok, max_new=3):
    """The greedy answer (text) of the wrapped model to a prompt-only Example."""
    im_end = tok.token_to_id("<|im_end|>")
    ids = ex_prompt.input_ids[0].tolist()
    image = net.vision(*[ex_prompt.pixel_values, ex_prompt.vision_rotary, ex_prompt.cu_seqlens])
    out = []
    for _ in range(max_new):
        x = torch.tensor([ids + out])
        pos = rope_position_ids(x[0].tolist(), ex_prompt.grid, net.image_token_id)
        nxt = int(net.decode(x, image, pos)[0, -1].argmax())
        if nxt == im_end:
            break
        out.append(nxt)
    return tok.decode(out)


def evaluate(net, rows, tok, template, cfg, mean_answer):
    net.eval()
    errs, hits, base_errs, base_hits, invalid = [], [], [], [], 0
    with torch.no_grad():
        for r in rows:
            text = greedy_count(net, Example(r["rgb"], tok, template, cfg), tok)
            pred = int(text) if text.isdigit() else None
            invalid += pred is None
            errs.append(abs((pred if pred is not None else 0) - r["count"]) if pred is not None else r["count"] + 1)
            hits.append(pred == r["count"])
            base_errs.append(abs(mean_answer - r["count"]))
            base_hits.append(mean_answer == r["count"])
    return {"accuracy": float(np.mean(hits)), "mae": float(np.mean(errs)), "invalid": invalid,
            "baseline_mean_answer": mean_answer, "baseline_accuracy": float(np.mean(base_hits)),
            "baseline_mae": float(np.mean(base_errs)), "images": len(rows)}


def train(a, tok, template):
    cfg = qwen2_vl_config(tok)
    torch.manual_seed(a.seed)
    rng = np.random.default_rng(a.seed)
    hf = Qwen2VLForConditionalGeneration(cfg)
    resume = os.path.join(a.work, "qwen2_vl_count.pth")
    if a.resume and os.path.exists(resume):
        hf.load_state_dict(torch.load(resume)["state_dict"])
        print(f"resuming from {resume}")
    net = GridFreeQwen2VL(hf)
    rows = read_manifest(os.path.join(a.data, a.split))
    test = read_manifest(os.path.join(a.data, "test"))
    mean_answer = int(round(float(np.mean([r["count"] for r in rows]))))
    by_size = {}  # images of one model input size (one grid) share a batch
    for i, r in enumerate(rows):
        by_size.setdefault(resized_size(*r["rgb"].shape[:2]), []).append(i)
    sizes = sorted(by_size)
    weights = np.array([len(by_size[s]) for s in sizes], np.float64)
    weights /= weights.sum()
    pad = tok.token_to_id("<|endoftext|>")
    n_params = sum(p.numel() for p in hf.parameters())
    print(f"Qwen2-VL tiny: {n_params / 1e6:.2f} M parameters; {len(rows)} training images, {len(test)} held out",
          flush=True)
    opt = torch.optim.AdamW(hf.parameters(), lr=a.lr, weight_decay=0.01, betas=(0.9, 0.98))
    budget = a.minutes * 60.0
    t0 = time.time()
    step, ema = 0, None
    while time.time() - t0 < budget:
        frac = (time.time() - t0) / budget
        lr = a.lr * min(1.0, (step + 1) / (10 if a.resume else 100)) * (0.5 * (1 + math.cos(math.pi * frac)) * 0.95 + 0.05)
        for g in opt.param_groups:
            g["lr"] = lr
        size = sizes[rng.choice(len(sizes), p=weights)]
        idx = rng.choice(by_size[size], min(a.batch, len(by_size[size])), replace=False)
        net.train()
        images, seqs = [], []
        for i in idx:
            rgb = rows[i]["rgb"]
            if rng.random() < 0.5:
                rgb = rgb[:, ::-1]
            if rng.random() < 0.5:
                rgb = rgb[::-1]
            ex = Example(np.ascontiguousarray(rgb), tok, template, cfg, answer=answer_ids(tok, rows[i]["count"]))
            images.append(net.vision(ex.pixel_values, ex.vision_rotary, ex.cu_seqlens))
            seqs.append(ex)
        length = max(ex.input_ids.shape[1] for ex in seqs)
        ids = torch.full((len(seqs), length), pad, dtype=torch.long)
        lab = torch.full((len(seqs), length), -100, dtype=torch.long)
        for b, ex in enumerate(seqs):
            n = ex.input_ids.shape[1]
            ids[b, :n] = ex.input_ids[0]
            lab[b, ex.prompt_len - 1:n - 1] = ex.input_ids[0, ex.prompt_len:]  # predict the answer tokens
        # All prompts of a batch have the same grid, so the same positions (padding continues them).
        pos = rope_position_ids(ids[int(np.argmax([ex.input_ids.shape[1] for ex in seqs]))].tolist(),
                                seqs[0].grid, cfg.image_token_id)
        logits = net.decode(ids, torch.cat(images), pos.expand(3, len(seqs), -1))
        loss = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), lab.reshape(-1), ignore_index=-100)
        opt.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(hf.parameters(), 1.0)
        opt.step()
        step += 1
        ema = float(loss) if ema is None else 0.98 * ema + 0.02 * float(loss)
        if step % 50 == 0:
            print(f"step {step} loss {ema:.3f} lr {lr:.2e} ({time.time() - t0:.0f} s)", flush=True)
        if a.eval_every and step % a.eval_every == 0:
            print("held-out:", evaluate(net, test, tok, template, cfg, mean_answer), flush=True)
    seconds = time.time() - t0
    res = evaluate(net, test, tok, template, cfg, mean_answer)
    res.update({"train_seconds": round(seconds), "steps": step, "batch": a.batch, "train_images": len(rows),
                "final_loss": round(ema, 4), "seed": a.seed, "threads": 1})
    print(f"held-out after {step} steps ({seconds:.0f} s): {res}", flush=True)
    os.makedirs(a.work, exist_ok=True)
    torch.save({"state_dict": hf.state_dict(), "result": res}, os.path.join(a.work, "qwen2_vl_count.pth"))
    return hf, res


# --------------------------------------------------------------------------------------
# Export and verification
# --------------------------------------------------------------------------------------

MAX_WINDOWS = 64
TRACE_SIZE = (128, 128)
# grids 12x22, 22x10, 14x26, 12x22 again (another image; the optimised executor runs by then)
UNSEEN_SIZES = [(96, 176), (176, 80), (112, 208), (96, 176)]


def scene(size, seed, count=7):
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    import vlm_data
    return vlm_data.make_scene(np.random.default_rng(seed), count, size)[0]


def export(hf, tok, template, path, kind, geo=None):
    """Traces the wrapper of hf on a TRACE_SIZE image and saves it to path."""
    hf.eval()
    geo = geo or geometry(hf.config)
    net = GridFreeQwen2VL(hf) if kind == "qwen2_vl" else GridFreeQwen2_5VL(hf)
    net.eval()
    ex = Example(scene(TRACE_SIZE, 123), tok, template, hf.config, max_windows=MAX_WINDOWS if kind != "qwen2_vl" else None,
                 geo=geo)
    inputs = list(ex.inputs)
    inputs[1] = inputs[1].to(next(hf.parameters()).dtype)  # pixel values in the weights' dtype (bfloat16 exports)
    with torch.no_grad():
        traced = torch.jit.trace(net, tuple(inputs), check_trace=False)
    # What the plugin needs without the sidecar, as attributes of the traced module.
    vc = hf.config.vision_config
    attrs = {"image_token_id": hf.config.image_token_id, "vision_start_token_id": hf.config.vision_start_token_id,
             "vision_end_token_id": hf.config.vision_end_token_id, "eos_token_id": hf.config.eos_token_id,
             "patch_size": vc.patch_size, "spatial_merge_size": vc.spatial_merge_size,
             "temporal_patch_size": vc.temporal_patch_size,
             "vision_head_dim": (getattr(vc, "embed_dim", None) or vc.hidden_size) // vc.num_heads,
             "min_pixels": geo["min_pixels"], "max_pixels": geo["max_pixels"]}
    if kind != "qwen2_vl":
        attrs.update({"window_size": vc.window_size, "max_windows": MAX_WINDOWS})
    for k, v in attrs.items():
        traced._c._register_attribute(k, torch._C.IntType.get(), int(v))
    for k, v in {"image_mean": geo["mean"], "image_std": geo["std"]}.items():
        traced._c._register_attribute(k, torch._C.ListType(torch._C.FloatType.get()), list(v))
    traced._c._register_attribute("mrope_section", torch._C.ListType(torch._C.IntType.get()),
                                  [int(v) for v in hf.config.rope_scaling["mrope_section"]])
    traced.save(path)
    return path


def answer_logprob(logits, ids, prompt_len):
    """Sum over the answer tokens of log p(token | everything before)."""
    lp = F.log_softmax(logits[0, prompt_len - 1:-1].float(), dim=-1)
    return lp.gather(1, ids[0, prompt_len:].unsqueeze(1)).sum()


def traced_with_tap(path, tap):
    """The traced file loaded again, with two extra functions over copies of its forward graph,
    as the C++ plugin taps a module: `read` returns (logits, output of module `tap`), `replace`
    takes that output as an extra last input instead of computing it (so the gradient w.r.t. it
    is the gradient w.r.t. an input). `tap` must be called at the top level of forward (the
    vision blocks are). (Asking autograd for the gradient w.r.t. an intermediate output of an
    optimised TorchScript graph is not reliable: its differentiable subgraphs can hold both the
    tapped value and what is computed from it, so the C++ side and this check use `replace`.)"""
    m = torch.jit.load(path)

    def find(g):
        names = {}

        def path_of(v):
            if v in names:
                return names[v]
            n = v.node()
            if n.kind() == "prim::GetAttr":
                parent = path_of(n.input())
                r = None if parent is None else (parent + "." if parent else "") + n.s("name")
            else:
                r = "" if v is list(g.inputs())[0] else None
            names[v] = r
            return r

        found = [n.output() for n in g.nodes()
                 if n.kind() == "prim::CallMethod" and path_of(list(n.inputs())[0]) == tap]
        assert len(found) == 1, f"{tap} is not called once at the top level of {path}"
        return found[0]

    g = m.graph.copy()  # the loaded module keeps its own forward
    act = find(g)
    ret = g.return_node()
    old = ret.input()
    tup = g.create("prim::TupleConstruct", [old, act])
    tup.insertBefore(ret)
    tup.output().setType(torch._C.TupleType([old.type(), act.type()]))
    ret.replaceInput(0, tup.output())
    read = torch._C._create_function_from_graph("forward_read_tap", g)

    g2 = m.graph.copy()
    act2 = find(g2)
    given = g2.addInput()
    given.setType(act2.type())
    act2.replaceAllUsesWith(given)
    replace = torch._C._create_function_from_graph("forward_replace_tap", g2)
    return m, read, replace


def verify_one(hf, path, tok, template, kind, sizes, block, geo=None):
    """Traced file vs eager transformers model on images of `sizes`; returns the report rows.
    Also: the eager gradient's size at the image positions of each decoder layer's output (the
    last layer's is exactly zero: SPEC section 6)."""
    hf.eval()
    tap = f"visual.blocks.{block}"
    module, read, replace = traced_with_tap(path, tap)
    rows = []
    for k, size in enumerate(sizes):
        rgb = scene(size, 1000 + k, count=3 + 5 * k)
        ex = Example(rgb, tok, template, hf.config, answer=answer_ids(tok, 3 + 5 * k),
                     max_windows=MAX_WINDOWS if kind != "qwen2_vl" else None, geo=geo)
        # eager: transformers' own forward with image_grid_thw (it computes every input itself)
        captured = {}

        def hook(_m, _inp, out):
            out.retain_grad()
            captured["out"] = out
        def layer_hook(i):
            def f(_m, _inp, out):
                out[0].retain_grad()
                captured[i] = out[0]
            return f
        handles = [hf.visual.blocks[block].register_forward_hook(hook)]
        handles += [layer.register_forward_hook(layer_hook(i)) for i, layer in enumerate(hf.model.layers)]
        hf.zero_grad()
        eager = hf(input_ids=ex.input_ids, pixel_values=ex.pixel_values, image_grid_thw=ex.grid_thw,
                   use_cache=False, return_dict=True).logits
        for h in handles:
            h.remove()
        answer_logprob(eager, ex.input_ids, ex.prompt_len).backward()
        eager_grad = captured["out"].grad.detach().clone()
        at_image = ex.input_ids[0] == hf.config.image_token_id
        layer_grads = [float(captured[i].grad[0, at_image].abs().max()) for i in range(len(hf.model.layers))]
        # traced: the saved file, plain and with the block's output as a second output
        with torch.no_grad():
            plain = module(*ex.inputs)
        with torch.no_grad():
            logits, act = read(module._c, *ex.inputs)
        act = act.detach().requires_grad_(True)
        replaced = replace(module._c, *ex.inputs, act)
        (g,) = torch.autograd.grad(answer_logprob(replaced, ex.input_ids, ex.prompt_len), act)
        # What the rows and columns of a tap mean: patch order for Qwen2-VL, window order for 2.5
        rows.append({"size": list(size), "grid": list(ex.grid), "tokens": int(ex.input_ids.shape[1]),
                     "max_abs_logits": float((plain - eager).abs().max()),
                     "max_abs_logits_tapped": float(max((logits - eager).abs().max(), (replaced - eager).abs().max())),
                     "max_abs_block_output": float((act - captured["out"]).abs().max()),
                     "max_abs_grad": float((g - eager_grad).abs().max()),
                     "max_abs_grad_ref": float(eager_grad.abs().max()),
                     "tap": tap, "decoder_layer_grad_at_image_max_abs": layer_grads})
    return rows


def traced_held_out(path, rows, tok, template):
    """Greedy answers of the traced file (its own forward, the reference inputs) on the held-out
    scenes: accuracy and MAE, as evaluate() gives for the eager model."""
    m = torch.jit.load(path).eval()
    cfg = qwen2_vl_config(tok)
    im_end = tok.token_to_id("<|im_end|>")
    hits, errs = [], []
    with torch.no_grad():
        for r in rows:
            ex = Example(r["rgb"], tok, template, cfg)
            out = []
            for _ in range(3):
                ids = ex.input_ids[0].tolist() + out
                x = torch.tensor([ids])
                nxt = int(m(x, ex.pixel_values, rope_position_ids(ids, ex.grid, cfg.image_token_id),
                            ex.vision_rotary, ex.cu_seqlens)[0, -1].argmax())
                if nxt == im_end:
                    break
                out.append(nxt)
            text = tok.decode(out)
            pred = int(text) if text.isdigit() else None
            hits.append(pred == r["count"])
            errs.append(abs(pred - r["count"]) if pred is not None else r["count"] + 1)
    return {"accuracy": float(np.mean(hits)), "mae": float(np.mean(errs)), "images": len(rows)}


def check_patches_against_processor(tok, template):
    """Our pixel_values / grid against transformers' Qwen2VLImageProcessor (explicit args, no resize
    here since the image is already at a multiple of 16: the resize filters differ)."""
    from transformers import Qwen2VLImageProcessor
    proc = Qwen2VLImageProcessor(do_resize=False, patch_size=PATCH, merge_size=MERGE, temporal_patch_size=TEMPORAL,
                                 image_mean=list(IMAGE_MEAN), image_std=list(IMAGE_STD), min_pixels=MIN_PIXELS,
                                 max_pixels=MAX_PIXELS)
    rgb = scene((96, 176), 7)
    out = proc(images=[rgb], return_tensors="pt")
    ours, grid = image_to_patches(rgb)
    return float((out["pixel_values"] - ours).abs().max()), out["image_grid_thw"][0].tolist() == list(grid)


def check_reference_functions(tok, template):
    """rope_position_ids, vision_rotary, window_index_and_cu against transformers' own
    get_rope_index, rot_pos_emb, get_window_index on several grids."""
    hf2 = Qwen2VLForConditionalGeneration(qwen2_vl_config(tok)).eval()
    hf25 = Qwen2_5_VLForConditionalGeneration(qwen2_5_vl_config(tok)).eval()
    ok = True
    for grid in [(1, 4, 8), (1, 16, 16), (1, 22, 10), (1, 14, 26), (1, 2, 2), (1, 8, 4)]:
        n = grid[1] * grid[2] // MERGE ** 2
        ids = build_prompt_ids(tok, template, n) + answer_ids(tok, 12)
        thw = torch.tensor([grid])
        pos, _ = hf2.get_rope_index(torch.tensor([ids]), thw)
        same_pos = torch.equal(pos, rope_position_ids(ids, grid, hf2.config.image_token_id))
        same_rot = torch.equal(hf2.visual.rot_pos_emb(thw), vision_rotary(grid, 16))
        wi, cu = hf25.visual.get_window_index(thw)
        cu = torch.unique_consecutive(torch.tensor(cu))
        mine_wi, mine_cu = window_index_and_cu(grid, PATCH, MERGE, hf25.config.vision_config.window_size, MAX_WINDOWS)
        same_win = torch.equal(wi, mine_wi) and torch.equal(cu, torch.unique_consecutive(mine_cu))
        ok &= same_pos and same_rot and same_win
        if not (same_pos and same_rot and same_win):
            print(f"FAIL grid {grid}: position ids {same_pos}, vision rotary {same_rot}, windows {same_win}")
    print(f"reference functions vs transformers (get_rope_index, rot_pos_emb, get_window_index): "
          f"{'equal' if ok else 'DIFFERENT'}")
    return ok


def reference_fixture(tok, template, cfg2, cfg25):
    """Expected inputs for three small grids, for the C++ plugin's tests."""
    fixture = {"about": "Expected inputs of the traced VLM forward for three small images (zoo/vlm_model.py's "
                        "reference functions); patch 8, merge 2, temporal patch 2, vision head_dim 16.",
               "patch": PATCH, "merge": MERGE, "temporal_patch": TEMPORAL, "min_pixels": MIN_PIXELS,
               "max_pixels": MAX_PIXELS, "vision_head_dim": 16, "window_size": cfg25.vision_config.window_size,
               "max_windows": MAX_WINDOWS, "image_token_id": cfg2.image_token_id, "cases": []}
    for size in [(40, 56), (24, 72), (56, 40)]:
        h, w = resized_size(*size)
        grid = (1, h // PATCH, w // PATCH)
        n = grid[1] * grid[2] // MERGE ** 2
        ids = build_prompt_ids(tok, template, n)
        wi, cu = window_index_and_cu(grid, PATCH, MERGE, cfg25.vision_config.window_size, MAX_WINDOWS)
        fixture["cases"].append({
            "image_size": list(size), "resized": [h, w], "grid_thw": list(grid), "image_tokens": n,
            "input_ids": ids, "position_ids": rope_position_ids(ids, grid, cfg2.image_token_id)[:, 0].tolist(),
            "vision_rotary": [[round(float(v), 6) for v in row] for row in vision_rotary(grid, 16)],
            "cu_seqlens": cu_seqlens(grid).tolist(), "window_index": wi.tolist(),
            "cu_window_seqlens": cu.tolist()})
    fixture["resize_cases"] = [{"in": [hh, ww], "out": list(resized_size(hh, ww))}
                               for hh, ww in [(120, 136), (104, 152), (24, 24), (16, 16), (1000, 300), (500, 2000),
                                              (40, 56), (72, 40), (17, 23)]]
    return fixture


def describe(cfg, kind, tok, path, geo, tokenizer_path):
    """The sidecar entry of one exported model: its inputs, geometry, ids, layers."""
    vc = cfg.vision_config
    ids = special_ids(tok)
    depth = vc.depth
    layers = cfg.num_hidden_layers
    inputs = [
        {"name": "input_ids", "shape": "[1, T]", "dtype": "long",
         "how": "build_prompt_ids (+ answer tokens when scoring an answer)"},
        {"name": "pixel_values", "shape": f"[P, {3 * geo['temporal'] * geo['patch'] ** 2}]",
         "dtype": "float", "how": "image_to_patches (P = t*gh*gw)"},
        {"name": "position_ids", "shape": "[3, 1, T]", "dtype": "long", "how": "rope_position_ids"},
        {"name": "vision_rotary", "shape": f"[P, {geo['vision_head_dim'] // 2}]",
         "dtype": "float", "how": "vision_rotary (patch order)"},
        {"name": "cu_seqlens", "shape": "[2]", "dtype": "long", "how": "cu_seqlens: [0, P]"}]
    if kind != "qwen2_vl":
        inputs += [{"name": "window_index", "shape": "[P/merge^2]", "dtype": "long", "how": "window_index_and_cu"},
                   {"name": "cu_window_seqlens", "shape": f"[{MAX_WINDOWS + 1}]", "dtype": "long",
                    "how": "window_index_and_cu (padded with its last value)"}]
    import hashlib
    tok_file = tokenizer_path if os.path.isabs(tokenizer_path) else os.path.join(REPO_ROOT, tokenizer_path)
    with open(tok_file, "rb") as f:
        tok_sha = hashlib.sha256(f.read()).hexdigest()
    return {
        "file": os.path.basename(path), "architecture": type(cfg).__name__.replace("Config", "ForConditionalGeneration"),
        "transformers": __import__("transformers").__version__, "torch": torch.__version__,
        "inputs": inputs, "output": {"name": "logits", "shape": "[1, T, V]", "vocab": cfg.vocab_size},
        "patch_size": geo["patch"], "spatial_merge_size": geo["merge"], "temporal_patch_size": geo["temporal"],
        "image_mean": geo["mean"], "image_std": geo["std"], "min_pixels": geo["min_pixels"],
        "max_pixels": geo["max_pixels"], "resize": "bicubic to resized_size (round half to even)",
        "vision_heads": vc.num_heads, "vision_head_dim": geo["vision_head_dim"], "vision_rope_theta": 10000.0,
        "mrope_section": cfg.rope_scaling["mrope_section"], "rope_theta": cfg.rope_theta,
        "window_size": geo["window_size"], "fullatt_block_indexes": getattr(vc, "fullatt_block_indexes", None),
        "max_windows": MAX_WINDOWS if kind != "qwen2_vl" else None,
        "special_tokens": ids, "image_token_id": cfg.image_token_id, "tokenizer": tokenizer_path,
        "tokenizer_sha256": tok_sha, "vocab_size": tok.get_vocab_size(),
        "layers": {"vision_blocks": [f"visual.blocks.{i}" for i in range(depth)], "merger": "visual.merger",
                   "decoder_layers": [f"model.layers.{i}" for i in range(layers)],
                   "default_vision": f"visual.blocks.{depth - 1}",
                   "default_decoder": f"model.layers.{(layers - 1) // 2}",
                   "note": "in the trace a decoder layer returns a tensor 1 x T x C (not a tuple); the RMSNorm "
                           "modules (model.layers.N.*_layernorm, Qwen2.5-VL's visual.blocks.N.norm1/2) return a "
                           "tuple whose element [0] is their output",
                   "never": f"model.layers.{layers - 1} at image positions (the last decoder layer: zero gradient)"},
        "vision_order": ("patch order: rows (bh, bw, mh, mw); view(gh/2, gw/2, 2, 2, C).permute(0, 2, 1, 3, 4) "
                         "-> (gh, gw, C)" if kind == "qwen2_vl" else
                         "window order inside visual.blocks.*: row groups of merge^2 patches in window_index "
                         "order; put group k back at window_index[k], then as Qwen2-VL (visual.merger's output "
                         "is back in raster order of the merged blocks)"),
        "config": cfg.to_dict(),
    }


def verify_model(hf, path, tok, template, kind, key, meta_entry, geo=None, sizes=UNSEEN_SIZES):
    """Module names, weights and verify_one's numbers for one exported file; (ok, rows)."""
    ok_all = True
    traced = torch.jit.load(path)
    # the traced file's own weights (its extra entries are the rotary inv_freq buffers)
    missing, _ = hf.load_state_dict(traced.state_dict(), strict=False)
    if missing:
        print(f"FAIL {key}: the traced file lacks {missing}")
        ok_all = False
    names = {n for n, _ in traced.named_modules()}
    for want in meta_entry["layers"]["vision_blocks"] + ["visual.merger", "model.embed_tokens", "lm_head"] + \
            meta_entry["layers"]["decoder_layers"]:
        if want not in names:
            print(f"FAIL {key}: module {want} is not in the traced file")
            ok_all = False
    rows = verify_one(hf, path, tok, template, kind, sizes, block=1, geo=geo)
    for r in rows:
        ok = max(r["max_abs_logits"], r["max_abs_logits_tapped"], r["max_abs_grad"], r["max_abs_block_output"]) < 1e-4
        ok_all &= ok
        lg = ", ".join(f"{v:.1e}" for v in r["decoder_layer_grad_at_image_max_abs"])
        print(f"{'ok  ' if ok else 'FAIL'} {key} image {r['size']} grid {r['grid']}: max |logits traced - eager| "
              f"{r['max_abs_logits']:.2e}, max |grad {r['tap']} traced - eager| {r['max_abs_grad']:.2e} "
              f"(grad scale {r['max_abs_grad_ref']:.2e}); eager |grad| at image tokens per decoder layer: {lg}")
    last = [r["decoder_layer_grad_at_image_max_abs"][-1] for r in rows]
    if any(v != 0.0 for v in last):
        print(f"note {key}: the last decoder layer's gradient at image positions is not zero: {last}")
    return ok_all, rows


def load_checkpoint_dir(folder):
    """(model, kind, tokenizer, template, geometry) of a local transformers Qwen2-VL / Qwen2.5-VL
    checkpoint folder (config.json, weights, tokenizer.json, the chat template in
    tokenizer_config.json or chat_template.json, preprocessor_config.json)."""
    from transformers import AutoConfig
    cfg = AutoConfig.from_pretrained(folder)
    kind = cfg.model_type
    cls = {"qwen2_vl": Qwen2VLForConditionalGeneration, "qwen2_5_vl": Qwen2_5_VLForConditionalGeneration}[kind]
    hf = cls.from_pretrained(folder, torch_dtype=torch.float32, attn_implementation="eager").eval()
    tok = Tokenizer.from_file(os.path.join(folder, "tokenizer.json"))
    template = None
    for name, field in [("tokenizer_config.json", "chat_template"), ("chat_template.json", "chat_template")]:
        f = os.path.join(folder, name)
        if template is None and os.path.exists(f):
            with open(f) as fh:
                template = json.load(fh).get(field)
    if template is None:
        sys.exit(f"no chat template in {folder}")
    pre = {}
    if os.path.exists(os.path.join(folder, "preprocessor_config.json")):
        with open(os.path.join(folder, "preprocessor_config.json")) as fh:
            pre = json.load(fh)
    return hf, kind, tok, template, geometry(hf.config, pre)


def main():
    global MAX_WINDOWS
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--data", help="zoo/vlm_data.py's folder (train / test)")
    ap.add_argument("--out-models", default=os.path.join(REPO_ROOT, "zoo", "models", "vlm"))
    ap.add_argument("--work", default="/tmp/vlm_work")
    ap.add_argument("--train", action="store_true")
    ap.add_argument("--export", action="store_true")
    ap.add_argument("--verify", action="store_true")
    ap.add_argument("--checkpoint", help="export and verify a local transformers Qwen2-VL / Qwen2.5-VL folder instead")
    ap.add_argument("--name", help="with --checkpoint: the output's name (default: the folder's)")
    ap.add_argument("--dtype", choices=["float32", "bfloat16"], default="float32",
                    help="with --checkpoint: the export's weights (verified in float32 before the cast; the vlm plugin "
                         "runs bfloat16 on the CPU, keeps its map maths in float32)")
    ap.add_argument("--minutes", type=float, default=14.0)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--lr", type=float, default=2e-3)
    ap.add_argument("--eval-every", type=int, default=0)
    ap.add_argument("--resume", action="store_true", help="continue from WORK/qwen2_vl_count.pth")
    ap.add_argument("--split", default="train",
                    help="the training split of --data (train; train_crops: whole scenes and crops of scenes, for "
                         "the counting strategies, after training on train)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--max-windows", type=int, default=MAX_WINDOWS,
                    help="Qwen2.5-VL: the most attention windows an image may have (cu_window_seqlens has one more "
                         "entry); a real checkpoint at large images needs more than the default")
    a = ap.parse_args()
    MAX_WINDOWS = a.max_windows
    torch.set_num_threads(1)
    cv2.setNumThreads(1)
    os.makedirs(a.out_models, exist_ok=True)
    os.makedirs(a.work, exist_ok=True)

    if a.checkpoint:
        hf, kind, tok, template, geo = load_checkpoint_dir(a.checkpoint)
        name = a.name or os.path.basename(os.path.normpath(a.checkpoint))
        path = export(hf, tok, template, os.path.join(a.out_models, f"{name}_traced.pt"), kind, geo)
        entry = describe(hf.config, kind, tok, path, geo, os.path.join(a.checkpoint, "tokenizer.json"))
        entry["prompt_template"] = render_prompt(tok, template)
        ok, rows = verify_model(hf, path, tok, template, kind, name, entry, geo, UNSEEN_SIZES[:2])
        entry["verified"] = rows
        if a.dtype == "bfloat16":  # traced again from the verified float32 weights, cast
            path = export(hf.to(torch.bfloat16), tok, template, path, kind, geo)
            entry["dtype"] = "bfloat16"
        with open(os.path.join(a.out_models, f"{name}.json"), "w") as f:
            json.dump(entry, f, indent=1)
        print(f"wrote {path} ({os.path.getsize(path) / 1e6:.2f} MB) and {name}.json")
        if not ok:
            sys.exit("verify: FAILED")
        return

    tok, template = load_tokenizer()
    meta_path = os.path.join(a.out_models, "vlm.json")
    tok_rel = os.path.relpath(os.path.join(TOKENIZER_DIR, "tokenizer.json"), REPO_ROOT)
    if a.train:
        if not a.data:
            sys.exit("--train needs --data")
        _, res = train(a, tok, template)
        with open(os.path.join(a.work, "train_result.json"), "w") as f:
            json.dump(res, f, indent=1)

    if a.export:
        cfg2 = qwen2_vl_config(tok)
        hf2 = Qwen2VLForConditionalGeneration(cfg2)
        ckpt = torch.load(os.path.join(a.work, "qwen2_vl_count.pth"))
        hf2.load_state_dict(ckpt["state_dict"])
        p2 = export(hf2, tok, template, os.path.join(a.out_models, "qwen2_vl_count_traced.pt"), "qwen2_vl")
        torch.manual_seed(a.seed + 1)
        cfg25 = qwen2_5_vl_config(tok)
        hf25 = Qwen2_5_VLForConditionalGeneration(cfg25)
        p25 = export(hf25, tok, template, os.path.join(a.out_models, "qwen2_5_vl_tiny_traced.pt"), "qwen2_5_vl")
        meta = {"about": "DRAFT contract of the VLM plugin's models (plugins/vlm/README.md); made by "
                         "zoo/vlm_model.py --export (the reference functions named under inputs are in that file)",
                "trace_image_size": list(TRACE_SIZE), "question": QUESTION,
                "prompt_template": render_prompt(tok, template),
                "models": {"qwen2_vl_count": describe(cfg2, "qwen2_vl", tok, p2, geometry(cfg2), tok_rel),
                           "qwen2_5_vl_tiny": describe(cfg25, "qwen2_5_vl", tok, p25, geometry(cfg25), tok_rel)}}
        meta["models"]["qwen2_vl_count"]["held_out"] = ckpt["result"]
        meta["models"]["qwen2_5_vl_tiny"]["held_out"] = "random init, untrained"
        with open(meta_path, "w") as f:
            json.dump(meta, f, indent=1)
        with open(os.path.join(a.out_models, "reference_inputs.json"), "w") as f:
            json.dump(reference_fixture(tok, template, cfg2, cfg25), f)
        for p in (p2, p25):
            print(f"wrote {p} ({os.path.getsize(p) / 1e6:.2f} MB)")

    if a.verify:
        with open(meta_path) as f:
            meta = json.load(f)
        failed = False
        diff, same_grid = check_patches_against_processor(tok, template)
        print(f"pixel_values vs Qwen2VLImageProcessor: max abs {diff:.2e}, same grid: {same_grid}")
        failed |= diff > 1e-5 or not same_grid
        from transformers.models.qwen2_vl.image_processing_qwen2_vl import smart_resize
        rs = np.random.default_rng(5)
        bad = [(h, w) for h, w in rs.integers(16, 2000, size=(3000, 2)).tolist()
               if max(h, w) / min(h, w) <= 200 and resized_size(h, w) != smart_resize(h, w, PATCH * MERGE, MIN_PIXELS,
                                                                                         MAX_PIXELS)]
        print(f"resized_size vs transformers' smart_resize on 3000 random sizes: {len(bad)} differ {bad[:5]}")
        failed |= bool(bad)
        failed |= not check_reference_functions(tok, template)
        for key, cls, kind, make in [("qwen2_vl_count", Qwen2VLForConditionalGeneration, "qwen2_vl", qwen2_vl_config),
                                     ("qwen2_5_vl_tiny", Qwen2_5_VLForConditionalGeneration, "qwen2_5_vl",
                                      qwen2_5_vl_config)]:
            entry = meta["models"][key]
            ok, rows = verify_model(cls(make(tok)), os.path.join(a.out_models, entry["file"]), tok, template, kind,
                                    key, entry)
            failed |= not ok
            entry["verified"] = [{k: r[k] for k in ("size", "grid", "tokens", "max_abs_logits", "max_abs_grad",
                                                    "max_abs_grad_ref", "tap", "decoder_layer_grad_at_image_max_abs")}
                                 for r in rows]
        if a.data and os.path.isdir(os.path.join(a.data, "test")):
            held = traced_held_out(os.path.join(a.out_models, meta["models"]["qwen2_vl_count"]["file"]),
                                   read_manifest(os.path.join(a.data, "test")), tok, template)
            want = meta["models"]["qwen2_vl_count"]["held_out"]
            print(f"held-out through the traced file: accuracy {held['accuracy']:.3f}, MAE {held['mae']:.3f} "
                  f"(eager after training: {want['accuracy']:.3f}, {want['mae']:.3f})")
            meta["models"]["qwen2_vl_count"]["held_out_traced"] = held
            failed |= abs(held["accuracy"] - want["accuracy"]) > 1e-9 or abs(held["mae"] - want["mae"]) > 1e-9
        if failed:
            sys.exit("verify: FAILED")
        with open(meta_path, "w") as f:
            json.dump(meta, f, indent=1)
        print("verify: all traced outputs equal the eager transformers models on unseen grids")


if __name__ == "__main__":
    main()
