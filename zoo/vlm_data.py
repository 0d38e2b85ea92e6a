#!/usr/bin/env python3
"""Synthetic counting scenes for the VLM zoo (zoo/vlm_model.py): "how many red circles?".

A scene is an RGB image of one of several sizes (H x W: 128 x 128, 96 x 160,
160 x 96, 112 x 144, 144 x 112, and two sizes that are not multiples of 16,
120 x 136 and 104 x 152, so that the Qwen-VL resize and its round-half-to-even
are exercised) on a textured background (a smooth colour field, faint stripes
and a little pixel noise). On it lie `count` red circles, the counted class,
count drawn uniformly from 0 to 19, and 0 to 8 distractors: circles of other
colours (blue, green, yellow), red squares and triangles, and green or blue
squares and triangles. Objects are 10 to 16 pixels wide and do not overlap
much (the centres are at least 0.9 x the sum of the radii apart). Each object
keeps its box [x0, y0, x1, y1] (pixels, x1 and y1 exclusive).

A third split, train_crops, teaches the counting strategies of the vlm
plugin's count task (crops of a scene asked on their own): 60% of its images
are crops of a scene, each side 32 pixels to 3/4 of the scene's (with a
quarter of them tiles of a 2 x 2 or 3 x 3 grid), counting the red circles
whose box centre lies in the crop (a circle cut by the edge counts in the
crop that holds its centre, as the task's truth does); the rest are whole
scenes.

Writes:
    OUT/train/images/*.png, OUT/train/manifest.jsonl, OUT/train/counts.json
    OUT/train_crops/...     (with --train-crops N)
    OUT/test/images/*.png,  OUT/test/manifest.jsonl,  OUT/test/counts.json
manifest.jsonl, one line per image:
    {"image": "images/test_0000.png", "question": "how many red circles?", "count": 7,
     "size": [H, W], "boxes": [[x0, y0, x1, y1], ...],                       (the counted objects)
     "distractors": [{"label": "blue circle", "box": [x0, y0, x1, y1]}, ...]}
counts.json: {"question": ..., "counts": {image: count}, "histogram": [n per count 0..19]}

Deterministic for a seed (the test split uses its own stream, so it does not
change with --train).

usage: .venv-hf/bin/python zoo/vlm_data.py --out DIR [--train N] [--train-crops N] [--test N] [--seed S]
"""
import argparse
import json
import os

import cv2
import numpy as np

QUESTION = "how many red circles?"
SIZES = [(128, 128), (96, 160), (160, 96), (112, 144), (144, 112), (120, 136), (104, 152)]
MAX_COUNT = 19
COLOURS = {
    "red": (215, 35, 35),
    "blue": (40, 70, 215),
    "green": (35, 160, 55),
    "yellow": (225, 195, 30),
}
DISTRACTORS = [("blue", "circle"), ("green", "circle"), ("yellow", "circle"), ("red", "square"),
               ("red", "triangle"), ("green", "triangle"), ("blue", "square"), ("green", "square")]


def background(rng, h, w):
    """A light textured background: a smooth random colour field, faint stripes, pixel noise."""
    base = rng.uniform(150, 215, size=3)
    field = rng.normal(0, 1, size=(max(2, h // 24), max(2, w // 24), 3)).astype(np.float32)
    field = cv2.resize(field, (w, h), interpolation=cv2.INTER_CUBIC) * rng.uniform(8, 18)
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    angle = rng.uniform(0, np.pi)
    period = rng.uniform(6, 14)
    stripes = np.sin((xx * np.cos(angle) + yy * np.sin(angle)) * 2 * np.pi / period) * rng.uniform(2, 6)
    noise = rng.normal(0, 1.0, size=(h, w, 3))
    img = base[None, None, :] + field + stripes[..., None] + noise
    return np.clip(img, 0, 255).astype(np.uint8)


def draw(img, shape, colour, cx, cy, r):
    """Draws one filled shape centred at (cx, cy) with half-width r; returns its box."""
    c = tuple(int(v) for v in colour)
    if shape == "circle":
        cv2.circle(img, (cx, cy), r, c, -1, cv2.LINE_AA)
    elif shape == "square":
        s = int(round(r * 0.85))
        cv2.rectangle(img, (cx - s, cy - s), (cx + s, cy + s), c, -1)
        return [cx - s, cy - s, cx + s + 1, cy + s + 1]
    else:  # triangle
        pts = np.array([[cx, cy - r], [cx - r, cy + r - 1], [cx + r, cy + r - 1]], np.int32)
        cv2.fillPoly(img, [pts], c, cv2.LINE_AA)
    return [cx - r, cy - r, cx + r + 1, cy + r + 1]


def place(rng, h, w, radii, tries=4000):
    """Centres for objects of the given radii, inside the image, not overlapping much (or None)."""
    out = []
    for r in radii:
        for _ in range(tries):
            cx, cy = int(rng.integers(r + 1, w - r - 1)), int(rng.integers(r + 1, h - r - 1))
            if all((cx - x) ** 2 + (cy - y) ** 2 >= (0.9 * (r + q)) ** 2 for x, y, q in out):
                out.append((cx, cy, r))
                break
        else:
            return None
    return out


def make_scene(rng, count=None, size=None):
    """(rgb uint8 H x W x 3, count, boxes of the red circles, distractors [{label, box}])."""
    h, w = size if size is not None else SIZES[int(rng.integers(len(SIZES)))]
    count = int(rng.integers(0, MAX_COUNT + 1)) if count is None else count
    n_dis = int(rng.integers(0, 9))
    kinds = [("red", "circle")] * count + [DISTRACTORS[int(rng.integers(len(DISTRACTORS)))] for _ in range(n_dis)]
    order = rng.permutation(len(kinds))
    kinds = [kinds[i] for i in order]
    rmax = 8
    while True:
        radii = [int(rng.integers(5, rmax + 1)) for _ in kinds]
        centres = place(rng, h, w, radii)
        if centres is not None:
            break
        rmax = max(5, rmax - 1)
    img = background(rng, h, w)
    boxes, distractors = [], []
    for (colour, shape), (cx, cy, r) in zip(kinds, centres):
        jitter = rng.integers(-12, 13, size=3)
        box = draw(img, shape, np.clip(np.array(COLOURS[colour]) + jitter, 0, 255), cx, cy, r)
        box = [max(0, box[0]), max(0, box[1]), min(w, box[2]), min(h, box[3])]
        if (colour, shape) == ("red", "circle"):
            boxes.append(box)
        else:
            distractors.append({"label": f"{colour} {shape}", "box": box})
    return img, count, boxes, distractors


def crop_scene(rng, scene):
    """A crop of scene (make_scene's tuple): a random box, or a tile of a 2 x 2 or 3 x 3 grid; the objects whose
    box centre lies in it, their boxes clipped and moved."""
    img, _, boxes, distractors = scene
    h, w = img.shape[:2]
    if rng.random() < 0.25:
        n = int(rng.choice([2, 3]))
        r, c = int(rng.integers(n)), int(rng.integers(n))
        x0, x1 = round(w * c / n), round(w * (c + 1) / n)
        y0, y1 = round(h * r / n), round(h * (r + 1) / n)
    else:
        cw, ch = int(rng.integers(32, w * 3 // 4 + 1)), int(rng.integers(32, h * 3 // 4 + 1))
        x0, y0 = int(rng.integers(0, w - cw + 1)), int(rng.integers(0, h - ch + 1))
        x1, y1 = x0 + cw, y0 + ch

    def inside(b):
        cx, cy = (b[0] + b[2]) / 2, (b[1] + b[3]) / 2
        return x0 <= cx < x1 and y0 <= cy < y1

    def moved(b):
        return [max(b[0], x0) - x0, max(b[1], y0) - y0, min(b[2], x1) - x0, min(b[3], y1) - y0]
    kept = [moved(b) for b in boxes if inside(b)]
    dis = [{"label": d["label"], "box": moved(d["box"])} for d in distractors if inside(d["box"])]
    return np.ascontiguousarray(img[y0:y1, x0:x1]), len(kept), kept, dis


def write_split(out, name, n, rng):
    os.makedirs(os.path.join(out, name, "images"), exist_ok=True)
    counts, hist = {}, [0] * (MAX_COUNT + 1)
    with open(os.path.join(out, name, "manifest.jsonl"), "w") as f:
        for i in range(n):
            # Balanced counts and sizes in the held-out split; random in training.
            c = (i % (MAX_COUNT + 1)) if name == "test" else None
            s = SIZES[i % len(SIZES)] if name == "test" else None
            img, count, boxes, distractors = make_scene(rng, c, s)
            if name == "train_crops" and rng.random() < 0.6:
                img, count, boxes, distractors = crop_scene(rng, (img, count, boxes, distractors))
            rel = f"images/{name}_{i:05d}.png"
            cv2.imwrite(os.path.join(out, name, rel), cv2.cvtColor(img, cv2.COLOR_RGB2BGR),
                        [cv2.IMWRITE_PNG_COMPRESSION, 9])
            f.write(json.dumps({"image": rel, "question": QUESTION, "count": count, "size": list(img.shape[:2]),
                                "boxes": boxes, "distractors": distractors}) + "\n")
            counts[rel] = count
            hist[count] += 1
    with open(os.path.join(out, name, "counts.json"), "w") as f:
        json.dump({"question": QUESTION, "counts": counts, "histogram": hist}, f, indent=1)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", required=True)
    ap.add_argument("--train", type=int, default=6000)
    ap.add_argument("--test", type=int, default=60)
    ap.add_argument("--train-crops", type=int, default=0, help="images of the train_crops split")
    ap.add_argument("--seed", type=int, default=0)
    a = ap.parse_args()
    cv2.setNumThreads(1)
    write_split(a.out, "test", a.test, np.random.default_rng([a.seed, 1]))
    write_split(a.out, "train", a.train, np.random.default_rng([a.seed, 0]))
    if a.train_crops:
        write_split(a.out, "train_crops", a.train_crops, np.random.default_rng([a.seed, 2]))
    print(f"wrote {a.train} training, {a.train_crops} crop-training and {a.test} held-out scenes to {a.out}")


if __name__ == "__main__":
    main()
