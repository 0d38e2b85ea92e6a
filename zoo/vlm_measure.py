#!/usr/bin/env python3
"""Scores an xcam run of configs/vlm_global.yaml (the vlm plugin on zoo/data/vlm) against the
manifest: the answers' accuracy and mean absolute error against "count" (the plugin's metadata
"answer_count"), and per layer set the share of each map's sum inside the counted objects' boxes
(the scenes with at least one; maps at the image's own pixel size), beside those boxes' share of
the image area. docs/vlm.md reports its numbers.

usage: .venv-hf/bin/python zoo/vlm_measure.py OUT_DIR [--manifest zoo/data/vlm/manifest.jsonl]
"""
import argparse
import json
import os

import numpy as np


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("out")
    ap.add_argument("--manifest", default=os.path.join(os.path.dirname(os.path.abspath(__file__)), "data", "vlm",
                                                       "manifest.jsonl"))
    ap.add_argument("--method", default="gradcam")
    a = ap.parse_args()
    scenes = {}
    for line in open(a.manifest):
        r = json.loads(line)
        scenes[os.path.splitext(os.path.basename(r["image"]))[0]] = r
    answers, energy = {}, {}
    for r in json.load(open(os.path.join(a.out, "results.json"))):
        if r["method"] != a.method or r.get("status") != "ok":
            continue
        truth = scenes[r["id"]]
        answers[r["id"]] = r["meta"].get("answer_count")
        npy = next(p for p in r["outputs"] if p.endswith(".npy"))
        m = np.load(os.path.join(a.out, npy))
        mask = np.zeros(m.shape, bool)
        for x0, y0, x1, y1 in truth["boxes"]:
            mask[y0:y1, x0:x1] = True
        if mask.any():
            energy.setdefault(r["layers"], []).append((m[mask].sum() / max(float(m.sum()), 1e-12), mask.mean()))
    hits = [v is not None and int(v) == scenes[k]["count"] for k, v in answers.items()]
    errs = [abs(int(v) - scenes[k]["count"]) if v is not None else scenes[k]["count"] + 1 for k, v in answers.items()]
    print(f"{len(answers)} scenes: accuracy {np.mean(hits):.4f}, MAE {np.mean(errs):.3f}, "
          f"no count {sum(v is None for v in answers.values())}")
    for layers, v in energy.items():
        v = np.array(v)
        print(f"{layers}: map energy in the counted boxes {v[:, 0].mean():.3f} over {len(v)} scenes "
              f"(the boxes' area {v[:, 1].mean():.3f})")


if __name__ == "__main__":
    main()
