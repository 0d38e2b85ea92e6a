#!/usr/bin/env python3
"""Float64 reference values of the faithfulness metrics (SPEC section 5).

Run with the pgc venv (zoo/setup_pgc_venv.sh), after zoo/golden_gradcam.py:
    .venv-pgc/bin/python zoo/golden_faithfulness.py [--out tests/data/golden]

The saliency maps are the peer's Grad-CAM goldens (shapes_block4_map.npy, 4 x 128 x 128)
for the classes of shapes_targets.npy on shapes_input.npy; the model is the eager
ShapesNet with the weights of zoo/models/shapes_cnn_traced.pt, in float64, scored with
the sigmoid probability of the target class (it is a multi-label model: the cnn plugin
with {"activation": "sigmoid"}, as in configs/shapes_demo.yaml). Each perturbed
input is built and scored one at a time, with no batching, and the blur is OpenCV's
GaussianBlur, so the only thing shared with xcam's implementation is the definition.

Writes float32 .npy files (N = 4 maps):
  shapes_block4_faithfulness.npy      N x 6   Y, O, deletion AUC and insertion AUC with
                                               the default n = 128 steps, then with n = 10
  shapes_block4_faithfulness_n10.npy  N x 2 x 11   the deletion and insertion curves, n = 10
"""
import argparse
import math
import os
import sys

import cv2
import numpy as np
import torch

ZOO = os.path.dirname(os.path.abspath(__file__))
REPO_ROOT = os.path.dirname(ZOO)
sys.path.insert(0, ZOO)

import shapes  # noqa: E402


def probability(model, x, target):
    with torch.no_grad():
        logits = model(torch.from_numpy(x[None]))
    return float(torch.sigmoid(logits)[0, target])


def curves(model, x, saliency, target, n):
    """Deletion and insertion curves (n + 1 probabilities each) of one map."""
    c, h, w = x.shape
    hw = h * w
    step = math.ceil(hw / n)
    order = np.argsort(-saliency.reshape(-1), kind="stable")  # ties: pixel order
    blurred = np.stack([cv2.GaussianBlur(x[i], (11, 11), 5, borderType=cv2.BORDER_CONSTANT) for i in range(c)])
    deletion, insertion = [], []
    for s in range(n + 1):
        chosen = order[: min(s * step, hw)]
        rows, cols = np.unravel_index(chosen, (h, w))
        gone = x.copy()
        gone[:, rows, cols] = 0.0
        deletion.append(probability(model, gone, target))
        back = blurred.copy()
        back[:, rows, cols] = x[:, rows, cols]
        insertion.append(probability(model, back, target))
    return np.array(deletion), np.array(insertion)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", default=os.path.join(REPO_ROOT, "tests", "data", "golden"))
    ap.add_argument("--models", default=os.path.join(ZOO, "models"))
    args = ap.parse_args()
    torch.set_num_threads(1)

    model = shapes.ShapesNet()
    traced = torch.jit.load(os.path.join(args.models, "shapes_cnn_traced.pt"), map_location="cpu")
    model.load_state_dict(traced.state_dict())
    model = model.double().eval()

    x = np.load(os.path.join(args.out, "shapes_input.npy")).astype(np.float64)
    maps = np.load(os.path.join(args.out, "shapes_block4_map.npy")).astype(np.float64)
    targets = np.load(os.path.join(args.out, "shapes_targets.npy"))

    summary, curves10 = [], []
    for b in range(len(x)):
        t = int(targets[b])
        y = probability(model, x[b], t)
        o = probability(model, x[b] * maps[b][None], t)
        row = [y, o]
        for n in (round(math.sqrt(x.shape[2] * x.shape[3])), 10):
            d, i = curves(model, x[b], maps[b], t, n)
            row += [np.trapz(d, dx=1.0 / n), np.trapz(i, dx=1.0 / n)]
            if n == 10:
                curves10.append(np.stack([d, i]))
        summary.append(row)
        print(f"  sample {b} class {t}: Y={y:.4f} O={o:.4f} deletion={row[2]:.4f} insertion={row[3]:.4f} "
              f"(n=10: {row[4]:.4f} {row[5]:.4f})")
    np.save(os.path.join(args.out, "shapes_block4_faithfulness.npy"), np.float32(summary))
    np.save(os.path.join(args.out, "shapes_block4_faithfulness_n10.npy"), np.float32(curves10))


if __name__ == "__main__":
    main()
