#!/usr/bin/env python3
"""Synthetic captioning scenes with known grounding, for the captioner zoo.

A scene is a 128 x 128 RGB image with 2 or 3 filled shapes on a noisy light
background. Within a scene the colours differ and the shapes differ, so each
colour word and each shape word of the caption names exactly one object. The
caption names the objects from left to right and relates each to the next:

    a red circle left of a blue square
    a green triangle above a yellow cross left of a purple circle

"left of" when the next object lies mostly to the right (|dx| >= 1.5 |dy|),
"above" / "below" when it lies mostly lower / higher (|dy| >= 1.5 |dx|);
scenes between the two are redrawn. Each object keeps its box (x0, y0, x1,
y1, pixels, x1 and y1 exclusive).

As a module: VOCAB, make_scene(rng) -> (rgb uint8 H x W x 3, caption words,
objects [{colour, shape, box}]), encode(words). As a script it writes a
held-out set in the layout the captioner tests and configs read:

    OUT/images/scene_000.png ...
    OUT/manifest.jsonl     one line per image: image, reference (the true caption),
                           boxes ({"red circle": [x0, y0, x1, y1], ...})
    OUT/boxes.json         {"images": {file: [{"label": word, "box": [...]}, ...]}}: a box
                           per colour and shape word, for a plain run's pointing game
    OUT/captions.txt       file<TAB>caption

usage: python3 zoo/captioner_data.py --out DIR [--count N] [--seed S]
"""
import argparse
import json
import os

import cv2
import numpy as np

SIZE = 128
COLOURS = {
    "red": (220, 40, 40),
    "green": (40, 170, 60),
    "blue": (40, 70, 220),
    "yellow": (230, 200, 30),
    "purple": (150, 50, 190),
}
SHAPES = ("circle", "square", "triangle", "cross")
SPECIALS = ("<pad>", "<start>", "<end>", "<unk>")
VOCAB = list(SPECIALS) + ["a", *COLOURS, *SHAPES, "left", "of", "above", "below"]
INDEX = {w: i for i, w in enumerate(VOCAB)}


def _draw(img, shape, colour, box):
    x0, y0, x1, y1 = box
    s = x1 - x0
    c = tuple(int(v) for v in colour)
    if shape == "circle":
        cv2.circle(img, (x0 + s // 2, y0 + s // 2), s // 2, c, -1, cv2.LINE_AA)
    elif shape == "square":
        cv2.rectangle(img, (x0, y0), (x1 - 1, y1 - 1), c, -1)
    elif shape == "triangle":
        pts = np.array([[x0 + s // 2, y0], [x0, y1 - 1], [x1 - 1, y1 - 1]], np.int32)
        cv2.fillPoly(img, [pts], c, cv2.LINE_AA)
    else:  # cross
        t = max(4, s // 3)
        a = x0 + (s - t) // 2
        b = y0 + (s - t) // 2
        cv2.rectangle(img, (a, y0), (a + t - 1, y1 - 1), c, -1)
        cv2.rectangle(img, (x0, b), (x1 - 1, b + t - 1), c, -1)


def _relation(a, b):
    """The words relating object a to the next object b, or None when unclear."""
    ax, ay = (a["box"][0] + a["box"][2]) / 2, (a["box"][1] + a["box"][3]) / 2
    bx, by = (b["box"][0] + b["box"][2]) / 2, (b["box"][1] + b["box"][3]) / 2
    dx, dy = bx - ax, by - ay
    if dx >= 1.5 * abs(dy):
        return ["left", "of"]
    if abs(dy) >= 1.5 * dx:
        return ["above"] if dy > 0 else ["below"]
    return None


def make_scene(rng):
    while True:
        n = int(rng.choice([2, 3]))
        colours = rng.choice(list(COLOURS), n, replace=False)
        shapes = rng.choice(SHAPES, n, replace=False)
        objects = []
        for c, s in zip(colours, shapes):
            for _ in range(50):
                size = int(rng.randint(24, 37))
                x0, y0 = int(rng.randint(2, SIZE - size - 2)), int(rng.randint(2, SIZE - size - 2))
                box = [x0, y0, x0 + size, y0 + size]
                if all(box[0] >= o["box"][2] + 4 or o["box"][0] >= box[2] + 4 or box[1] >= o["box"][3] + 4
                       or o["box"][1] >= box[3] + 4 for o in objects):
                    objects.append({"colour": str(c), "shape": str(s), "box": box})
                    break
        if len(objects) < n:
            continue
        objects.sort(key=lambda o: o["box"][0] + o["box"][2])
        centres = [(o["box"][0] + o["box"][2]) / 2 for o in objects]
        if any(centres[i + 1] - centres[i] < 8 for i in range(n - 1)):
            continue
        relations = [_relation(objects[i], objects[i + 1]) for i in range(n - 1)]
        if any(r is None for r in relations):
            continue
        words = []
        for i, o in enumerate(objects):
            words += ["a", o["colour"], o["shape"]]
            if i < n - 1:
                words += relations[i]
        break
    bg = np.array([rng.randint(200, 245)] * 3, np.float32) + rng.uniform(-12, 12, 3)
    img = np.clip(bg[None, None, :] + rng.normal(0, 6, (SIZE, SIZE, 3)), 0, 255).astype(np.uint8)
    for o in objects:
        colour = np.clip(np.array(COLOURS[o["colour"]], np.float32) + rng.uniform(-20, 20, 3), 0, 255)
        _draw(img, o["shape"], colour, o["box"])
    return img, words, objects


def encode(words, length):
    """<start> words <end>, padded with <pad> to `length` tokens."""
    ids = [INDEX["<start>"]] + [INDEX[w] for w in words] + [INDEX["<end>"]]
    return ids + [INDEX["<pad>"]] * (length - len(ids))


def write_set(out, count, seed):
    rng = np.random.RandomState(seed)
    os.makedirs(os.path.join(out, "images"), exist_ok=True)
    boxes, lines, captions = {}, [], []
    for k in range(count):
        img, words, objects = make_scene(rng)
        name = f"scene_{k:03d}.png"
        cv2.imwrite(os.path.join(out, "images", name), cv2.cvtColor(img, cv2.COLOR_RGB2BGR))
        caption = " ".join(words)
        boxes[name] = [{"label": o[key], "box": o["box"]} for o in objects for key in ("colour", "shape")]
        by_object = {f"{o['colour']} {o['shape']}": o["box"] for o in objects}
        lines.append(json.dumps({"image": f"images/{name}", "reference": caption, "boxes": by_object}))
        captions.append(f"{name}\t{caption}")
    with open(os.path.join(out, "manifest.jsonl"), "w") as f:
        f.write("\n".join(lines) + "\n")
    with open(os.path.join(out, "boxes.json"), "w") as f:
        json.dump({"images": boxes}, f, indent=1)
        f.write("\n")
    with open(os.path.join(out, "captions.txt"), "w") as f:
        f.write("\n".join(captions) + "\n")


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", required=True)
    ap.add_argument("--count", type=int, default=100)
    ap.add_argument("--seed", type=int, default=20261202)
    a = ap.parse_args()
    write_set(a.out, a.count, a.seed)
