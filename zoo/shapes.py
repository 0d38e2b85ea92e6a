#!/usr/bin/env python3
"""Synthetic multi-label "shapes" dataset and the small CNN that xcam's tests explain.

Every 128 x 128 RGB image holds 2 or 3 filled shapes of DIFFERENT classes (circle,
square, triangle, cross) with random colours and sizes, never overlapping, on a
noisy, cluttered background. Since each shape's box is known exactly, the model's
CAMs can be scored with the pointing game (SPEC section 5).

Outputs (defaults; the C++ tests depend on these names):
  zoo/models/shapes_cnn_traced.pt     torch.jit.trace of the eval model (1x3x128x128)
  zoo/models/shapes_cnn_scripted.pt   torch.jit.script of the same model
  zoo/models/shapes_labels.txt        one class name a line, in output order
  zoo/data/shapes/val_NNN.png         48 held-out images (RGB content, PNG)
  zoo/data/shapes/boxes.json          ground-truth boxes [x0, y0, x1, y1], x1/y1 exclusive

Training is seeded and runs on the CPU with a fixed thread count, so re-running
with the same arguments rewrites the same files (as far as torch is deterministic).

usage: python3 zoo/shapes.py [--out-models DIR] [--out-data DIR] [--epochs N] [--seed S]
"""
import argparse
import json
import os
import time

import cv2
import numpy as np
import torch
import torch.nn as nn

CLASSES = ["circle", "square", "triangle", "cross"]
IMAGE_SIZE = 128
MEAN = (0.485, 0.456, 0.406)
STD = (0.229, 0.224, 0.225)
NUM_EXPORTED_VAL = 48

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


# --------------------------------------------------------------------------- data

def _background(rng):
    """Low-contrast clutter: a base colour, a colour gradient, faint lines and
    blobs (distractors without any class's shape), then pixel noise."""
    size = IMAGE_SIZE
    base = rng.uniform(40, 200, size=3)
    ramp = rng.uniform(-25, 25, size=(2, 3))
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32) / size
    img = base + xx[..., None] * ramp[0] + yy[..., None] * ramp[1]
    img = np.clip(img, 0, 255).astype(np.uint8)
    for _ in range(rng.randint(3, 8)):
        colour = np.clip(base + rng.uniform(-30, 30, size=3), 0, 255)
        p0 = tuple(int(v) for v in rng.randint(0, size, size=2))
        p1 = tuple(int(v) for v in rng.randint(0, size, size=2))
        cv2.line(img, p0, p1, colour.tolist(), int(rng.randint(1, 3)), cv2.LINE_AA)
    for _ in range(rng.randint(2, 6)):
        colour = np.clip(base + rng.uniform(-25, 25, size=3), 0, 255)
        centre = tuple(int(v) for v in rng.randint(0, size, size=2))
        axes = tuple(int(v) for v in rng.randint(3, 14, size=2))
        cv2.ellipse(img, centre, axes, float(rng.uniform(0, 180)), 0, 360,
                    colour.tolist(), -1, cv2.LINE_AA)
    noise = rng.normal(0, 8, size=img.shape)
    return np.clip(img.astype(np.float32) + noise, 0, 255).astype(np.uint8), base


def _shape_mask(cls, size, rng):
    """uint8 mask (size x size) of one shape filling its square cell."""
    mask = np.zeros((size, size), np.uint8)
    s = size - 1
    if cls == "circle":
        cv2.circle(mask, (s // 2, s // 2), s // 2, 255, -1, cv2.LINE_AA)
    elif cls == "square":
        cv2.rectangle(mask, (0, 0), (s, s), 255, -1)
    elif cls == "triangle":
        # Pointing up or down, apex anywhere along the opposite side's width.
        apex_x = int(rng.uniform(0.25, 0.75) * s)
        pts = [(0, s), (s, s), (apex_x, 0)] if rng.rand() < 0.5 else [(0, 0), (s, 0), (apex_x, s)]
        cv2.fillPoly(mask, [np.array(pts, np.int32)], 255, cv2.LINE_AA)
    elif cls == "cross":
        t = max(4, int(round(size * rng.uniform(0.28, 0.38))))
        a = (size - t) // 2
        cv2.rectangle(mask, (a, 0), (a + t - 1, s), 255, -1)
        cv2.rectangle(mask, (0, a), (s, a + t - 1), 255, -1)
    else:
        raise ValueError(f"unknown class {cls!r}")
    return mask


def _shape_colour(background, rng):
    """A random colour that stands out from the background base colour."""
    while True:
        colour = rng.uniform(0, 255, size=3)
        if np.abs(colour - background).sum() > 150:
            return colour


def make_image(rng):
    """One sample: (uint8 RGB HxWx3, multi-hot labels float32[4], list of
    {"label", "box"} with box = [x0, y0, x1, y1] in pixels, x1/y1 exclusive)."""
    img, base = _background(rng)
    n = rng.randint(2, 4)
    classes = rng.choice(len(CLASSES), size=n, replace=False)
    placed, objects = [], []
    for c in classes:
        for _ in range(200):
            size = int(rng.randint(22, 45))
            x0 = int(rng.randint(0, IMAGE_SIZE - size + 1))
            y0 = int(rng.randint(0, IMAGE_SIZE - size + 1))
            # Keep a 3 px gap to every placed shape's cell.
            if all(x0 + size + 3 <= px0 or px1 + 3 <= x0 or y0 + size + 3 <= py0 or py1 + 3 <= y0
                   for px0, py0, px1, py1 in placed):
                break
        else:
            continue  # no room left; the sample keeps its other shapes
        placed.append((x0, y0, x0 + size, y0 + size))
        mask = _shape_mask(CLASSES[c], size, rng)
        alpha = (mask.astype(np.float32) / 255.0)[..., None]
        cell = img[y0:y0 + size, x0:x0 + size].astype(np.float32)
        colour = _shape_colour(base, rng)
        img[y0:y0 + size, x0:x0 + size] = np.clip(
            np.round(alpha * colour + (1 - alpha) * cell), 0, 255).astype(np.uint8)
        ys, xs = np.nonzero(mask > 127)
        box = [x0 + int(xs.min()), y0 + int(ys.min()), x0 + int(xs.max()) + 1, y0 + int(ys.max()) + 1]
        objects.append({"label": CLASSES[c], "box": box})
    labels = np.zeros(len(CLASSES), np.float32)
    for o in objects:
        labels[CLASSES.index(o["label"])] = 1.0
    return img, labels, objects


def make_set(n, rng):
    images, labels, objects = [], [], []
    for _ in range(n):
        img, lab, objs = make_image(rng)
        images.append(img)
        labels.append(lab)
        objects.append(objs)
    return np.stack(images), np.stack(labels), objects


def preprocess(images_rgb_uint8):
    """N x H x W x 3 uint8 RGB -> N x 3 x H x W float32, /255 then ImageNet mean/std."""
    x = images_rgb_uint8.astype(np.float32) / 255.0
    x = (x - np.array(MEAN, np.float32)) / np.array(STD, np.float32)
    return torch.from_numpy(np.ascontiguousarray(x.transpose(0, 3, 1, 2)))


# --------------------------------------------------------------------------- model

def _block(cin, cout, pool):
    layers = [nn.Conv2d(cin, cout, 3, padding=1), nn.BatchNorm2d(cout), nn.ReLU(inplace=True)]
    if pool:
        layers.append(nn.MaxPool2d(2))
    return nn.Sequential(*layers)


class ShapesNet(nn.Module):
    """Four conv blocks (16, 32, 64, 128 channels), global average pool, linear.
    For a 128 x 128 input block4's output is 128 x 16 x 16: the CAM target layer."""

    def __init__(self, num_classes=len(CLASSES)):
        super().__init__()
        self.block1 = _block(3, 16, pool=True)
        self.block2 = _block(16, 32, pool=True)
        self.block3 = _block(32, 64, pool=True)
        self.block4 = _block(64, 128, pool=False)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(128, num_classes)

    def forward(self, x):
        x = self.block4(self.block3(self.block2(self.block1(x))))
        return self.fc(torch.flatten(self.pool(x), 1))


# --------------------------------------------------------------------------- training

@torch.no_grad()
def per_class_accuracy(model, x, y, batch=128):
    model.eval()
    logits = torch.cat([model(x[i:i + batch]) for i in range(0, len(x), batch)])
    return ((logits > 0).float() == y).float().mean(0).numpy()


def _format_acc(acc):
    return " ".join(f"{c}={a * 100:.1f}%" for c, a in zip(CLASSES, acc))


def train(model, x_train, y_train, x_val, y_val, epochs, batch, lr, seed):
    gen = torch.Generator().manual_seed(seed)
    opt = torch.optim.Adam(model.parameters(), lr=lr, weight_decay=1e-4)
    steps = epochs * ((len(x_train) + batch - 1) // batch)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=steps, pct_start=0.2)
    loss_fn = nn.BCEWithLogitsLoss()
    for epoch in range(epochs):
        model.train()
        t0, total = time.time(), 0.0
        for idx in torch.randperm(len(x_train), generator=gen).split(batch):
            xb, yb = x_train[idx], y_train[idx]
            # Cheap augmentation: random horizontal flip (every class is flip-invariant).
            flip = torch.rand(len(idx), generator=gen) < 0.5
            xb = torch.where(flip[:, None, None, None], xb.flip(3), xb)
            loss = loss_fn(model(xb), yb)
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
            total += loss.item() * len(idx)
        print(f"epoch {epoch + 1}/{epochs} loss {total / len(x_train):.4f} "
              f"val {_format_acc(per_class_accuracy(model, x_val, y_val))} ({time.time() - t0:.0f} s)",
              flush=True)


# --------------------------------------------------------------------------- export

def export(model, out_models, out_data, val_images, val_objects):
    os.makedirs(out_models, exist_ok=True)
    os.makedirs(out_data, exist_ok=True)
    model.eval()
    example = torch.zeros(1, 3, IMAGE_SIZE, IMAGE_SIZE)
    with torch.no_grad():
        traced = torch.jit.trace(model, example)
    traced.save(os.path.join(out_models, "shapes_cnn_traced.pt"))
    torch.jit.script(model).save(os.path.join(out_models, "shapes_cnn_scripted.pt"))
    with open(os.path.join(out_models, "shapes_labels.txt"), "w") as f:
        f.write("\n".join(CLASSES) + "\n")

    boxes = {"classes": CLASSES, "images": {}}
    for i, (img, objs) in enumerate(zip(val_images, val_objects)):
        name = f"val_{i:03d}.png"
        # Images are RGB in memory; OpenCV writes BGR, so swap before saving.
        cv2.imwrite(os.path.join(out_data, name), cv2.cvtColor(img, cv2.COLOR_RGB2BGR))
        boxes["images"][name] = objs
    with open(os.path.join(out_data, "boxes.json"), "w") as f:
        json.dump(boxes, f, indent=1)
        f.write("\n")


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out-models", default=os.path.join(REPO_ROOT, "zoo", "models"))
    ap.add_argument("--out-data", default=os.path.join(REPO_ROOT, "zoo", "data", "shapes"))
    ap.add_argument("--epochs", type=int, default=8)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--train-size", type=int, default=3000)
    ap.add_argument("--val-size", type=int, default=480)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--lr", type=float, default=3e-3)
    ap.add_argument("--threads", type=int, default=2,
                    help="CPU threads; fixed so that re-runs reproduce the same weights")
    args = ap.parse_args()

    torch.manual_seed(args.seed)
    np.random.seed(args.seed)
    torch.set_num_threads(args.threads)
    torch.use_deterministic_algorithms(True)

    # Separate streams so the validation images do not depend on --train-size.
    t0 = time.time()
    val_images, val_labels, val_objects = make_set(args.val_size, np.random.RandomState(args.seed + 1))
    train_images, train_labels, _ = make_set(args.train_size, np.random.RandomState(args.seed + 2))
    x_train, y_train = preprocess(train_images), torch.from_numpy(train_labels)
    x_val, y_val = preprocess(val_images), torch.from_numpy(val_labels)
    print(f"generated {len(x_train)} train / {len(x_val)} val images ({time.time() - t0:.1f} s)")

    model = ShapesNet()
    train(model, x_train, y_train, x_val, y_val, args.epochs, args.batch, args.lr, args.seed)

    print(f"train per-class accuracy: {_format_acc(per_class_accuracy(model, x_train, y_train))}")
    print(f"val   per-class accuracy: {_format_acc(per_class_accuracy(model, x_val, y_val))}")
    n = min(NUM_EXPORTED_VAL, len(x_val))
    print(f"exported val_000..val_{n - 1:03d} accuracy: "
          f"{_format_acc(per_class_accuracy(model, x_val[:n], y_val[:n]))}")

    export(model, args.out_models, args.out_data, val_images[:n], val_objects[:n])
    print(f"wrote {args.out_models} and {args.out_data}")


if __name__ == "__main__":
    main()
