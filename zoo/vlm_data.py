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

Writes:
    OUT/train/images/*.png, OUT/train/manifest.jsonl, OUT/train/counts.json
    OUT/test/images/*.png,  OUT/test/manifest.jsonl,  OUT/test/counts.json
manifest.jsonl, one line per image:
    {"image": "images/test_0000.png", "question": "how many red circles?", "count": 7,
     "size": [H, W], "boxes": [[x0, y0, x1, y1], ...],                       (the counted objects)
     "distractors": [{"label": "blue circle", "box": [x0, y0, x1, y1]}, ...]}
counts.json: {"question": ..., "counts": {image: count}, "histogram": [n per count 0..19]}

Deterministic for a seed (the test split uses its own stream, so it does not
change with --train).

usage: .venv-hf/bin/python zoo/vlm_data.py --out DIR [--train N] [--test N] [--seed S]
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


def write_split(out, name, n, rng):
    os.makedirs(os.path.join(out, name, "images"), exist_ok=True)
    counts, hist = {}, [0] * (MAX_COUNT + 1)
    with open(os.path.join(out, name, "manifest.jsonl"), "w") as f:
        for i in range(n):
            # Balanced counts and sizes in the held-out split; random in training.
            c = (i % (MAX_COUNT + 1)) if name == "test" else None
            s = SIZES[i % len(SIZES)] if name == "test" else None
            img, count, boxes, distractors = make_scene(rng, c, s)
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
    ap.add_argument("--seed", type=int, default=0)
    a = ap.parse_args()
    cv2.setNumThreads(1)
    write_split(a.out, "test", a.test, np.random.default_rng([a.seed, 1]))
    write_split(a.out, "train", a.train, np.random.default_rng([a.seed, 0]))
    print(f"wrote {a.train} training and {a.test} held-out scenes to {a.out}")


if __name__ == "__main__":
    main()
