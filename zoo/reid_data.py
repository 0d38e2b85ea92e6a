#!/usr/bin/env python3
"""Synthetic pedestrians for person re-identification, in the Market-1501 layout.

An identity is a combination of attributes that sit on parts of the body: shirt
colour and pattern (torso), trousers colour (legs), a hat or none (head), a bag
on the left, on the right or none (beside the torso). Cameras differ in
background, light, the person's scale and horizontal shift, and how often an
occluder hides part of the body. Everything that places a pixel is known, so
the generator also writes, for every image, a part mask: which body part (or
none) each pixel shows, from which the person mask and the attribute regions
follow. The localisation metrics of the re-ID issue are measured against it.

Layout (as Market-1501; H x W = 128 x 64 by default, --size 256 128 for the large one):
  OUT/bounding_box_train/PPPP_cCs1_FFFFFF_00.jpg   training identities
  OUT/bounding_box_test/PPPP_cCs1_FFFFFF_00.jpg    gallery: test identities on every camera,
                                                   distractors (0000_) and junk (-1_)
  OUT/query/PPPP_cCs1_FFFFFF_00.jpg                one image per test identity and camera (2 cameras)
  OUT/masks/<folder>/<name>.png                    uint8 part labels (PARTS below), same size
  OUT/identities.json                              each identity's attributes; the part labels

PPPP is the identity (4 digits; 0000 distractor, -1 junk), C the camera (1-6),
FFFFFF the frame. Distractors are backgrounds with body-like clutter and no
person; junk are crops that cut a test identity to its lower half, so that
they must be ignored (pid -1), as Market-1501's are. The same seed writes the
same files.

usage: python3 zoo/reid_data.py --out DIR [--size H W] [--train-ids N] [--test-ids N]
                                [--per-camera K] [--seed S]
"""
import argparse
import json
import os

import cv2
import numpy as np

PARTS = ["background", "head", "hat", "torso", "legs", "bag", "occluder"]
COLOURS = {  # RGB
    "red": (200, 40, 40), "green": (40, 160, 60), "blue": (40, 70, 200), "yellow": (220, 200, 40),
    "white": (235, 235, 235), "black": (25, 25, 25), "purple": (130, 50, 160), "orange": (235, 130, 30),
}
PATTERNS = ["plain", "hstripes", "vstripes", "checks"]
TROUSERS = ["black", "blue", "white", "green", "red", "yellow"]
HATS = [None, "red", "white", "black"]
BAGS = [None, "left", "right"]
NUM_CAMERAS = 6


def identities(n, rng, taken=()):
    """n distinct attribute combinations, none of them in `taken`."""
    seen, out = {json.dumps(t, sort_keys=True) for t in taken}, []
    while len(out) < n:
        ident = {"shirt": str(rng.choice(list(COLOURS))), "pattern": str(rng.choice(PATTERNS)),
                 "trousers": str(rng.choice(TROUSERS)), "hat": HATS[rng.randint(len(HATS))],
                 "bag": BAGS[rng.randint(len(BAGS))]}
        key = json.dumps(ident, sort_keys=True)
        if key not in seen:
            seen.add(key)
            out.append(ident)
    return out


def cameras(rng):
    """Per camera: background colours, light, scale of the person, shift, occluder rate."""
    return [{"bg": rng.uniform(50, 210, size=(2, 3)), "light": float(rng.uniform(0.7, 1.25)),
             "scale": float(rng.uniform(0.78, 0.95)), "shift": float(rng.uniform(-0.12, 0.12)),
             "occlude": float(rng.choice([0.0, 0.15, 0.35]))} for _ in range(NUM_CAMERAS)]


def background(h, w, cam, rng):
    yy = np.linspace(0, 1, h, dtype=np.float32)[:, None, None]
    img = cam["bg"][0] * (1 - yy) + cam["bg"][1] * yy + np.zeros((h, w, 3), np.float32)
    for _ in range(rng.randint(2, 6)):  # clutter: poles and blobs in the camera's tones
        c = np.clip(cam["bg"][rng.randint(2)] + rng.uniform(-40, 40, 3), 0, 255).tolist()
        if rng.rand() < 0.5:
            x = int(rng.randint(w))
            cv2.rectangle(img, (x, 0), (x + int(rng.randint(2, 5)), h), c, -1)
        else:
            cv2.circle(img, (int(rng.randint(w)), int(rng.randint(h))), int(rng.randint(3, w // 5)), c, -1)
    return img


def fill(img, mask, label, region, colour, pattern, unit):
    """Paints `region` (a boolean array) with a colour and pattern, and labels it."""
    c = np.array(colour, np.float32)
    yy, xx = np.nonzero(region)
    if pattern == "plain":
        shade = np.ones(len(yy), bool)
    elif pattern == "hstripes":
        shade = (yy // unit) % 2 == 0
    elif pattern == "vstripes":
        shade = (xx // unit) % 2 == 0
    else:
        shade = ((yy // unit) + (xx // unit)) % 2 == 0
    img[yy, xx] = np.where(shade[:, None], c, c * 0.45 + 110)
    mask[region] = PARTS.index(label)


def person(img, mask, ident, cam, rng):
    """Draws one pedestrian into img (float RGB) and its part labels into mask."""
    h, w = mask.shape
    ph = cam["scale"] * h * rng.uniform(0.96, 1.04)           # the person's height
    cx = w * (0.5 + cam["shift"]) + rng.uniform(-0.04, 0.04) * w
    top = (h - ph) * rng.uniform(0.3, 0.7)
    yy, xx = np.mgrid[0:h, 0:w]
    unit = max(2, int(round(h / 32)))
    head_r = 0.075 * ph
    head_c = (cx, top + head_r * 1.6)
    torso = (cx - 0.16 * ph, top + 0.19 * ph, cx + 0.16 * ph, top + 0.55 * ph)
    legs_top, legs_bottom = torso[3], top + ph
    head = (xx - head_c[0]) ** 2 + (yy - head_c[1]) ** 2 <= head_r ** 2
    skin = np.array([224, 180, 150], np.float32) * rng.uniform(0.7, 1.1)
    img[head] = skin
    mask[head] = PARTS.index("head")
    if ident["hat"]:
        hat = head & (yy < head_c[1] - 0.2 * head_r) | (
            (np.abs(xx - head_c[0]) <= 1.3 * head_r) & (np.abs(yy - (head_c[1] - 0.25 * head_r)) <= 0.12 * head_r + 0.5))
        fill(img, mask, "hat", hat, COLOURS[ident["hat"]], "plain", unit)
    body = (xx >= torso[0]) & (xx <= torso[2]) & (yy >= torso[1]) & (yy <= torso[3])
    fill(img, mask, "torso", body, COLOURS[ident["shirt"]], ident["pattern"], unit)
    gap = 0.025 * ph
    for side in (-1, 1):
        x0, x1 = (cx - 0.14 * ph, cx - gap) if side < 0 else (cx + gap, cx + 0.14 * ph)
        leg = (xx >= x0) & (xx <= x1) & (yy > legs_top) & (yy <= legs_bottom)
        fill(img, mask, "legs", leg, COLOURS[ident["trousers"]], "plain", unit)
    if ident["bag"]:
        side = -1 if ident["bag"] == "left" else 1
        bx = torso[0] - 0.12 * ph if side < 0 else torso[2] + 0.01 * ph
        bag = (xx >= bx) & (xx <= bx + 0.11 * ph) & (yy >= top + 0.33 * ph) & (yy <= top + 0.5 * ph)
        fill(img, mask, "bag", bag, (120, 75, 40), "plain", unit)


def occlude(img, mask, cam, rng):
    if rng.rand() >= cam["occlude"]:
        return
    h, w = mask.shape
    y0 = int(h * rng.uniform(0.55, 0.8))
    c = np.clip(cam["bg"][1] * 0.6 + rng.uniform(-20, 20, 3), 0, 255)
    img[y0:, :] = c
    mask[y0:, :] = PARTS.index("occluder")


def render(ident, cam, size, rng):
    h, w = size
    img = background(h, w, cam, rng)
    mask = np.zeros((h, w), np.uint8)
    if ident is not None:
        person(img, mask, ident, cam, rng)
        occlude(img, mask, cam, rng)
    img = img * cam["light"] + rng.normal(0, 4, img.shape)
    return np.clip(img, 0, 255).astype(np.uint8), mask


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", required=True)
    ap.add_argument("--size", type=int, nargs=2, default=[128, 64], metavar=("H", "W"))
    ap.add_argument("--train-ids", type=int, default=120)
    ap.add_argument("--test-ids", type=int, default=60)
    ap.add_argument("--per-camera", type=int, default=2, help="images of an identity per camera")
    ap.add_argument("--distractors", type=int, default=40)
    ap.add_argument("--junk", type=int, default=20)
    ap.add_argument("--seed", type=int, default=0)
    a = ap.parse_args()
    rng = np.random.RandomState(a.seed)
    cams = cameras(rng)
    train = identities(a.train_ids, rng)
    test = identities(a.test_ids, rng, taken=train)
    frame = [0]

    def write(folder, pid, cam_index, ident, crop_lower=False):
        img, mask = render(ident, cams[cam_index], a.size, rng)
        if crop_lower:  # junk: the lower half of a person, stretched to the full size
            h, w = mask.shape
            img = cv2.resize(img[h // 2:], (w, h), interpolation=cv2.INTER_LINEAR)
            mask = cv2.resize(mask[h // 2:], (w, h), interpolation=cv2.INTER_NEAREST)
        frame[0] += 1
        name = f"{pid:04d}_c{cam_index + 1}s1_{frame[0]:06d}_00" if pid >= 0 else f"-1_c{cam_index + 1}s1_{frame[0]:06d}_00"
        for sub in (folder, os.path.join("masks", folder)):
            os.makedirs(os.path.join(a.out, sub), exist_ok=True)
        cv2.imwrite(os.path.join(a.out, folder, name + ".jpg"), cv2.cvtColor(img, cv2.COLOR_RGB2BGR),
                    [cv2.IMWRITE_JPEG_QUALITY, 95])
        cv2.imwrite(os.path.join(a.out, "masks", folder, name + ".png"), mask)

    for i, ident in enumerate(train):
        for c in rng.choice(NUM_CAMERAS, size=rng.randint(2, NUM_CAMERAS + 1), replace=False):
            for _ in range(a.per_camera):
                write("bounding_box_train", i + 1, int(c), ident)
    first_test = len(train) + 1
    for i, ident in enumerate(test):
        pid = first_test + i
        cams_seen = rng.choice(NUM_CAMERAS, size=rng.randint(3, NUM_CAMERAS + 1), replace=False)
        for c in cams_seen[:2]:
            write("query", pid, int(c), ident)
        for c in cams_seen:  # the query cameras too: same-camera matches are excluded by the protocol
            for _ in range(a.per_camera):
                write("bounding_box_test", pid, int(c), ident)
    for _ in range(a.distractors):
        write("bounding_box_test", 0, int(rng.randint(NUM_CAMERAS)), None)
    for _ in range(a.junk):
        write("bounding_box_test", -1, int(rng.randint(NUM_CAMERAS)), test[rng.randint(len(test))], crop_lower=True)
    with open(os.path.join(a.out, "identities.json"), "w") as f:
        json.dump({"parts": PARTS, "size": a.size, "cameras": NUM_CAMERAS,
                   "identities": {str(i + 1): t for i, t in enumerate(train)}
                   | {str(first_test + i): t for i, t in enumerate(test)}}, f, indent=1)
    counts = {d: len(os.listdir(os.path.join(a.out, d))) for d in ("bounding_box_train", "query", "bounding_box_test")}
    print(f"reid_data: {a.out}: {counts}")


if __name__ == "__main__":
    main()
