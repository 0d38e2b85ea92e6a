#!/usr/bin/env python3
"""Where the re-ID similarity maps lie: the share of each map's energy inside the
person and inside the attribute regions, per method and layer type, beside a
uniform map's share (docs/results.md, "Re-ID").

Pairs: every query of the committed test split (zoo/data/reid) with the first
gallery image of its identity on another camera (held-out identities). The
maps are those on the query, from `xcam explain` with the reid plugin; the
masks are zoo/reid_data.py's part labels.

usage: python3 benchmarks/reid_localisation.py [--xcam build/cpu-release/core/xcam] [--out DIR]
"""
import argparse
import glob
import json
import os
import subprocess
import sys
import tempfile

import cv2
import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DATA = os.path.join(ROOT, "zoo", "data", "reid")
PERSON = (1, 2, 3, 4, 5)     # head, hat, torso, legs, bag (PARTS of zoo/reid_data.py)
ATTRIBUTES = (2, 3, 4, 5)    # hat, shirt (torso), trousers (legs), bag
ATTENTION = ["vit_attention.%d" % i for i in range(4)]
RUNS = [  # (method, layer type(s), label)
    ("gradcam", ["vit_last"], "vit_last"), ("gradcam", ["vit_proj"], "vit_proj"), ("gradcam", ["mim"], "mim"),
    ("gradcam", ["post"], "post"),
    ("gradcam++", ["vit_last"], "vit_last"), ("gradcam++", ["vit_proj"], "vit_proj"), ("gradcam++", ["mim"], "mim"),
    ("gradcam++", ["post"], "post"),
    ("attention", ["mim_attention"], "mim_attention"),
    ("rollout", ATTENTION, "vit_attention.0-3"), ("relevancy", ATTENTION, "vit_attention.0-3"),
]


def pairs():
    gallery = sorted(os.path.basename(f) for f in glob.glob(os.path.join(DATA, "bounding_box_test", "*.jpg")))
    out = []
    for q in sorted(os.path.basename(f) for f in glob.glob(os.path.join(DATA, "query", "*.jpg"))):
        pid, cam = q.split("_")[0], q.split("_")[1][:2]
        g = next(g for g in gallery if g.split("_")[0] == pid and g.split("_")[1][:2] != cam)
        out.append((q, g))
    return out


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--xcam", default=os.path.join(ROOT, "build", "cpu-release", "core", "xcam"))
    ap.add_argument("--out", default=None, help="keep the maps here (default: a temporary folder)")
    a = ap.parse_args()
    work = a.out or tempfile.mkdtemp(prefix="reid_loc_")
    ps = pairs()
    manifest = os.path.join(work, "pairs.jsonl")
    os.makedirs(work, exist_ok=True)
    with open(manifest, "w") as f:
        for q, g in ps:
            f.write(json.dumps({"image": os.path.join(DATA, "query", q),
                                "images": {"reference": os.path.join(DATA, "bounding_box_test", g)}}) + "\n")
    masks = {q: cv2.imread(os.path.join(DATA, "masks", "query", q[:-4] + ".png"), cv2.IMREAD_GRAYSCALE) for q, _ in ps}
    uniform_person = np.mean([np.isin(m, PERSON).mean() for m in masks.values()])
    uniform_attr = np.mean([np.isin(m, ATTRIBUTES).mean() for m in masks.values()])
    rows = []
    for method, layers, label in RUNS:
        out = os.path.join(work, f"{method}_{label}")
        cmd = [a.xcam, "explain", "--plugin", "reid", "--model", os.path.join(ROOT, "zoo", "models",
               "reid_promptsg_traced.pt"), "--size", "128", "64", "--method", method, "--manifest", manifest,
               "--out", out, "--io-threads", "0"]
        for layer in layers:
            cmd += ["--layer", layer]
        subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL)
        person, attr = [], []
        for q, _ in ps:
            m = np.load(os.path.join(out, q[:-4] + "_similarity.npy")).astype(np.float64)
            total = m.sum()
            person.append(m[np.isin(masks[q], PERSON)].sum() / total if total > 0 else 0.0)
            attr.append(m[np.isin(masks[q], ATTRIBUTES)].sum() / total if total > 0 else 0.0)
        rows.append((method, label, float(np.mean(person)), float(np.mean(attr))))
    print(f"{len(ps)} held-out same-identity pairs; maps on the query\n")
    print("| method | layer type | energy on the person | energy on the attributes |")
    print("|---|---|---|---|")
    for method, label, p, at in rows:
        print(f"| {method} | {label} | {p:.3f} | {at:.3f} |")
    print(f"| uniform map | | {uniform_person:.3f} | {uniform_attr:.3f} |")
    json.dump({"pairs": len(ps), "uniform": {"person": uniform_person, "attributes": uniform_attr},
               "rows": [{"method": m, "layer": l, "person": p, "attributes": at} for m, l, p, at in rows]},
              open(os.path.join(work, "localisation.json"), "w"), indent=1)


if __name__ == "__main__":
    sys.exit(main())
