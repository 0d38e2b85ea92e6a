#!/usr/bin/env python3
"""Export torchvision classifiers with seeded, version-independent weights.

No pretrained weights can be downloaded, and torch's own initialisers draw different
numbers on different torch versions. So every parameter and BatchNorm buffer is
overwritten, in state_dict order, from numpy.random.RandomState(seed): the same
(arch, seed) gives the same weights on any torch, and pgc (Python) and xcam (C++)
explain identical models.

  conv / linear weight   normal * sqrt(2 / fan_in)   (He; activations stay O(1))
  conv / linear bias     normal * 0.01
  BN weight              U(0.5, 1.5)
  BN bias                normal * 0.01
  BN running_mean        normal * 0.01
  BN running_var         U(0.5, 1.5)

In eval mode BatchNorm uses these running statistics, so it does not renormalise
the activations, and each ResNet block's sum x + f(x) would double their variance
(ResNet-50's logits would reach ~1e4 and saturate every softmax). The BN that closes
a residual branch (bn2 of a BasicBlock, bn3 of a Bottleneck) therefore gets its
U(0.5, 1.5) weight scaled by RESIDUAL_BN_SCALE, which keeps logits O(1..10).

vit_small is torchvision's VisionTransformer (patch 16, width 384, 6 heads, MLP
1536: ViT-S/16) with 4 encoder layers instead of 12, 1000 classes: a
linear-heavy model whose forward time shows which BLAS LibTorch runs on
(benchmarks/bench_blas.cpp). Its LayerNorms get weight U(0.5, 1.5); every
matrix (in_proj_weight included) the He normal above. Next to its .pt files
goes vit_small.json with the multiply-adds of its matmuls per image.

usage: python3 zoo/export_torchvision.py --arch resnet18 [--arch vgg11 ...] --out DIR
                                          [--size 224] [--seed 0] [--force]
writes DIR/<arch>_traced.pt and DIR/<arch>_scripted.pt (skipped if present unless --force).
"""
import argparse
import json
import os
import time

import numpy as np
import torch
import torch.nn as nn
import torchvision

ARCHS = ("resnet18", "resnet50", "vgg11", "mobilenet_v2", "vit_small")
VIT_SMALL = dict(patch_size=16, num_layers=4, num_heads=6, hidden_dim=384, mlp_dim=1536)
RESIDUAL_BN_SCALE = 0.1


def _residual_closing_bns(model):
    """Names of the BatchNorm modules whose output is added to a ResNet skip path."""
    names = set()
    for name, module in model.named_modules():
        if isinstance(module, torchvision.models.resnet.BasicBlock):
            names.add(f"{name}.bn2")
        elif isinstance(module, torchvision.models.resnet.Bottleneck):
            names.add(f"{name}.bn3")
    return names


def _seeded_init_(model, seed):
    rng = np.random.RandomState(seed)
    modules = dict(model.named_modules())
    residual_bns = _residual_closing_bns(model)
    with torch.no_grad():
        for name, tensor in model.state_dict().items():
            if not tensor.is_floating_point():
                continue  # BN num_batches_tracked
            owner_name, _, leaf = name.rpartition(".")
            owner = modules[owner_name]
            shape = tuple(tensor.shape)
            if isinstance(owner, nn.LayerNorm):
                if leaf == "weight":
                    values = rng.uniform(0.5, 1.5, size=shape)
                else:
                    values = rng.normal(0.0, 0.01, size=shape)
            elif isinstance(owner, nn.modules.batchnorm._BatchNorm):
                if leaf in ("weight", "running_var"):
                    values = rng.uniform(0.5, 1.5, size=shape)
                    if leaf == "weight" and owner_name in residual_bns:
                        values = values * RESIDUAL_BN_SCALE
                else:  # bias, running_mean
                    values = rng.normal(0.0, 0.01, size=shape)
            elif leaf.endswith("weight") and tensor.dim() > 1:  # conv / linear / attention in_proj
                fan_in = int(np.prod(shape[1:]))
                values = rng.normal(0.0, 1.0, size=shape) * np.sqrt(2.0 / fan_in)
            else:  # biases
                values = rng.normal(0.0, 0.01, size=shape)
            tensor.copy_(torch.from_numpy(values.astype(np.float32)))


def build(arch, seed=0):
    """Eager torchvision `arch` (1000 classes) with seeded weights, in eval mode."""
    if arch not in ARCHS:
        raise ValueError(f"unknown arch {arch!r}; expected one of {', '.join(ARCHS)}")
    if arch == "vit_small":
        from torchvision.models.vision_transformer import VisionTransformer
        model = VisionTransformer(image_size=224, num_classes=1000, **VIT_SMALL)
    else:
        model = getattr(torchvision.models, arch)(weights=None, num_classes=1000)
    _seeded_init_(model, seed)
    return model.eval()


def vit_matmul_flops(size=224, classes=1000):
    """Floating-point operations (2 per multiply-add) of vit_small's matmuls, per image."""
    c = VIT_SMALL
    d, m, layers = c["hidden_dim"], c["mlp_dim"], c["num_layers"]
    n = (size // c["patch_size"]) ** 2 + 1
    per_layer = n * d * 3 * d + n * d * d + 2 * n * d * m + 2 * n * n * d  # qkv, out, mlp, scores + weighted sum
    return 2 * (layers * per_layer + d * classes)


def export(arch, out_dir, size=224, seed=0, force=False):
    """Write out_dir/<arch>_traced.pt and _scripted.pt; returns the paths written."""
    os.makedirs(out_dir, exist_ok=True)
    traced_path = os.path.join(out_dir, f"{arch}_traced.pt")
    scripted_path = os.path.join(out_dir, f"{arch}_scripted.pt")
    todo = [p for p in (traced_path, scripted_path) if force or not os.path.exists(p)]
    if not todo:
        return []
    model = build(arch, seed)
    if traced_path in todo:
        with torch.no_grad():
            torch.jit.trace(model, torch.zeros(1, 3, size, size)).save(traced_path)
    if scripted_path in todo:
        torch.jit.script(model).save(scripted_path)
    if arch == "vit_small":
        with open(os.path.join(out_dir, "vit_small.json"), "w") as f:
            json.dump({"input": [3, size, size], "matmul_flops_per_image": vit_matmul_flops(size)}, f)
    return todo


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--arch", action="append", required=True, choices=ARCHS,
                    help="architecture to export; repeat for several")
    ap.add_argument("--out", required=True, help="output directory")
    ap.add_argument("--size", type=int, default=224, help="square input size for tracing")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--force", action="store_true", help="overwrite existing files")
    args = ap.parse_args()
    for arch in args.arch:
        t0 = time.time()
        written = export(arch, args.out, args.size, args.seed, args.force)
        if written:
            print(f"{arch}: wrote {', '.join(written)} ({time.time() - t0:.1f} s)")
        else:
            print(f"{arch}: up to date in {args.out} (use --force to overwrite)")


if __name__ == "__main__":
    main()
