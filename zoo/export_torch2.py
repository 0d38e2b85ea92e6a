#!/usr/bin/env python3
"""Export zoo models again with a LibTorch 2.x, from the same weights.

Run with the torch of zoo/setup_torch2_venv.sh (the PyPI wheel):

  .venv-torch2/bin/python zoo/export_torch2.py

Reads the torch 1.13 exports in zoo/models, loads their weights into the same
Python modules and exports them with this torch, as the 1.13 files were made:

  zoo/models/torch2/shapes_cnn_traced.pt     torch.jit.trace  (zoo/shapes.py's export)
  zoo/models/torch2/shapes_cnn_scripted.pt   torch.jit.script
  zoo/models/torch2/captioner_traced.pt      torch.jit.trace_module (zoo/captioner_model.py)
  zoo/models/torch2/captioner_scripted.pt    torch.jit.script
  zoo/models/torch2/torch2.json              the torch version and the sources

tests/torch2/maps_agree.sh explains each of them and its 1.13 twin with the
build against Debian's LibTorch 1.13 and the one against LibTorch 2.x: every
map must agree (1e-5).
"""
import argparse
import json
import os
import sys

import torch

here = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, here)
import captioner_model  # noqa: E402
import shapes  # noqa: E402


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", default=os.path.join(here, "models"))
    ap.add_argument("--out", default=os.path.join(here, "models", "torch2"))
    a = ap.parse_args()
    if not torch.__version__.startswith("2."):
        sys.exit(f"export_torch2: this is torch {torch.__version__}; run it with .venv-torch2/bin/python "
                 "(zoo/setup_torch2_venv.sh)")
    os.makedirs(a.out, exist_ok=True)
    torch.manual_seed(0)

    # The CNN: zoo/shapes.py's ShapesNet, traced on a 1 x 3 x 128 x 128 input and scripted.
    net = shapes.ShapesNet()
    net.load_state_dict(torch.jit.load(os.path.join(a.models, "shapes_cnn_traced.pt")).state_dict())
    net.eval()
    with torch.no_grad():
        traced = torch.jit.trace(net, torch.zeros(1, 3, shapes.IMAGE_SIZE, shapes.IMAGE_SIZE))
    traced.save(os.path.join(a.out, "shapes_cnn_traced.pt"))
    torch.jit.script(net).save(os.path.join(a.out, "shapes_cnn_scripted.pt"))

    # The captioner: zoo/captioner_model.py's export, traced on two held-out scenes.
    cap = captioner_model.Captioner()
    cap.load_state_dict(torch.jit.load(os.path.join(a.models, "captioner_scripted.pt")).state_dict())
    cap.eval()
    images, refs = captioner_model.read_set(os.path.join(here, "data", "captioner"))
    captioner_model.export(cap, a.out, captioner_model.normalise(images[:2]), refs[:2])
    os.remove(os.path.join(a.out, "captioner_vocab.txt"))  # the same as zoo/models'

    with open(os.path.join(a.out, "torch2.json"), "w") as fh:
        json.dump({"torch": torch.__version__,
                   "from": ["shapes_cnn_traced.pt", "captioner_scripted.pt"],
                   "script": "zoo/export_torch2.py"}, fh, indent=1)
        fh.write("\n")
    print(f"export_torch2: torch {torch.__version__}: {sorted(os.listdir(a.out))}")


if __name__ == "__main__":
    main()
