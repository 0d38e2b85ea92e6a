#!/usr/bin/env python3
"""Golden Grad-CAM maps from pytorch-grad-cam ("pgc"), the peer xcam is compared to.

Run with the pgc venv (zoo/setup_pgc_venv.sh):
    .venv-pgc/bin/python zoo/golden_gradcam.py [--out tests/data/golden]

pgc runs on EAGER models (it needs forward hooks), rebuilt with exactly the weights
of the TorchScript files xcam loads:
  shapes    ShapesNet from zoo/shapes.py, state_dict of zoo/models/shapes_cnn_traced.pt
  resnet18  export_torchvision.build("resnet18", 0) (same seeded weights as its export)

Writes float32 / int64 .npy files (N = samples):
  shapes_input.npy               4 x 3 x 128 x 128   val_000..val_003, preprocessed
  shapes_targets.npy             4                   class per sample (int64), all different
  shapes_block4_lowres.npy       4 x 16 x 16         per-layer cam before the resize
  shapes_block4_map.npy          4 x 128 x 128       cam(input, targets) for [block4]
  shapes_block3+block4_map.npy   4 x 128 x 128       cam(input, targets) for [block3, block4]
  resnet18_input.npy             2 x 3 x 224 x 224   val_000, val_001 resized to 224
  resnet18_targets.npy           2
  resnet18_layer4_lowres.npy     2 x 7 x 7
  resnet18_layer4_map.npy        2 x 224 x 224
and, for the other methods both libraries have (run_methods, token = file-name tag):
  <model>_<layer>_<token>_map.npy          B x H x W   cam(input, targets), token in
      gradcampp xgradcam layercam hirescam gradcam-elementwise eigencam eigengradcam scorecam
      ablationcam (layers: shapes block4 and block3, the latter with gradcam too; resnet18 layer4)
  <model>_<layer>_<token>_map_flipped.npy  B x H x W   eigencam / eigengradcam only: the same
      pipeline with the projection negated (pgc's SVD sign is arbitrary, issues #315/#364)
and, for the smoothing options (run_smoothing; shapes model, block4 only, token gradcam or gradcampp):
  shapes_block4_<token>_augsmooth_map.npy            B x H x W   cam(input, targets, aug_smooth=True)
  shapes_block4_<token>_eigensmooth_map.npy          B x H x W   cam(input, targets, eigen_smooth=True)
  shapes_block4_<token>_eigensmooth_map_flipped.npy  B x H x W   the same with the projection negated
"""
import argparse
import importlib.metadata
import itertools
import json
import os
import sys

import cv2
import numpy as np
import torch

ZOO = os.path.dirname(os.path.abspath(__file__))
REPO_ROOT = os.path.dirname(ZOO)
sys.path.insert(0, ZOO)

import export_torchvision  # noqa: E402
import shapes  # noqa: E402

try:
    from pytorch_grad_cam import (AblationCAM, EigenCAM, EigenGradCAM, GradCAM, GradCAMElementWise,
                                  GradCAMPlusPlus, HiResCAM, LayerCAM, ScoreCAM, XGradCAM)
    from pytorch_grad_cam.utils.image import scale_cam_image
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget
except ImportError:
    sys.exit("pytorch_grad_cam is not importable: run zoo/setup_pgc_venv.sh and use .venv-pgc/bin/python")


def shapes_targets(data_dir, names):
    """One DIFFERENT class per image, present in as many of the images as possible
    (so the map can be checked against that shape's box): the first permutation of
    the classes, in lexicographic order, with the most matches in boxes.json."""
    with open(os.path.join(data_dir, "boxes.json")) as f:
        boxes = json.load(f)
    present = [{shapes.CLASSES.index(o["label"]) for o in boxes["images"][n]} for n in names]
    perms = itertools.permutations(range(len(shapes.CLASSES)), len(names))
    return list(max(perms, key=lambda p: sum(c in s for c, s in zip(p, present))))


def resnet18_targets(model, x):
    """Per sample, its highest-logit class not already taken by an earlier sample.

    The weights are random, so a fixed ImageNet class usually has a below-average
    logit; its Grad-CAM sum is then negative everywhere and relu leaves an all-zero
    map, which would make a useless golden. A top class gives a non-trivial map."""
    with torch.no_grad():
        order = model(x).argsort(dim=1, descending=True)
    targets = []
    for row in order.tolist():
        targets.append(next(c for c in row if c not in targets))
    return targets


def load_images(data_dir, names, size=None):
    """RGB uint8 images, optionally resized (cv2.INTER_LINEAR), preprocessed to NCHW."""
    images = []
    for name in names:
        bgr = cv2.imread(os.path.join(data_dir, name), cv2.IMREAD_COLOR)
        if bgr is None:
            raise FileNotFoundError(os.path.join(data_dir, name))
        rgb = cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)
        if size is not None:
            rgb = cv2.resize(rgb, (size, size), interpolation=cv2.INTER_LINEAR)
        images.append(rgb)
    return shapes.preprocess(np.stack(images))


def lowres_cam(cam, input_tensor, targets, layer_index):
    """pgc's per-layer map before it is resized to the input size.

    GradCAM.__call__ only returns the resized, layer-aggregated map. Internally,
    compute_cam_per_layer takes the activations and gradients that its hooks captured
    (cam.activations_and_grads, still populated after the call), calls
    get_cam_image (sum_k w_k A_k with w_k = mean_s g_k), applies np.maximum(cam, 0)
    and then scale_cam_image(cam, target_size), which min-max normalises each sample
    and THEN resizes. We repeat the first steps with pgc's own functions and call
    scale_cam_image without a target size, so normalisation is pgc's and only the
    resize is left out. Note that GradCAM's returned map is not simply the resized
    low-res map: aggregate_multi_layers min-max normalises the mean over layers
    again, even for a single layer (bilinear upsampling misses the exact extremes,
    so this changes values by up to ~0.06 on the shapes goldens)."""
    acts = cam.activations_and_grads.activations[layer_index].cpu().numpy()
    grads = cam.activations_and_grads.gradients[layer_index].cpu().numpy()
    raw = cam.get_cam_image(input_tensor, cam.target_layers[layer_index], targets, acts, grads)
    return scale_cam_image(np.maximum(raw, 0))


def run_gradcam(model, layers, input_tensor, target_ids, lowres_layer=None):
    targets = [ClassifierOutputTarget(int(c)) for c in target_ids]
    cam = GradCAM(model=model, target_layers=layers)
    heat = cam(input_tensor=input_tensor, targets=targets)
    low = None if lowres_layer is None else lowres_cam(cam, input_tensor, targets, lowres_layer)
    cam.activations_and_grads.release()
    return np.float32(heat), None if low is None else np.float32(low)


class FlippedEigenCAM(EigenCAM):
    """EigenCAM with the sign of pgc's projection negated; the rest is pgc's own
    pipeline (relu, scale_cam_image, resize, aggregate_multi_layers)."""

    def get_cam_image(self, *args, **kwargs):
        return -super().get_cam_image(*args, **kwargs)


class FlippedEigenGradCAM(EigenGradCAM):
    def get_cam_image(self, *args, **kwargs):
        return -super().get_cam_image(*args, **kwargs)


# file-name token -> (pgc class, its sign-flipped twin or None)
METHODS = [
    ("gradcampp", GradCAMPlusPlus, None),
    ("xgradcam", XGradCAM, None),
    ("layercam", LayerCAM, None),
    ("hirescam", HiResCAM, None),
    ("gradcam-elementwise", GradCAMElementWise, None),
    ("eigencam", EigenCAM, FlippedEigenCAM),
    ("eigengradcam", EigenGradCAM, FlippedEigenGradCAM),
    ("scorecam", ScoreCAM, None),
    ("ablationcam", AblationCAM, None),
]


def run_methods(out_dir, prefix, model, layer, input_tensor, target_ids, methods=METHODS):
    """<prefix>_<token>_map.npy (and _map_flipped.npy for the eigen methods) for every
    method of `methods` on one target layer."""
    targets = [ClassifierOutputTarget(int(c)) for c in target_ids]

    def one(cls):
        cam = cls(model=model, target_layers=[layer])
        if cls is ScoreCAM:
            cam.batch_size = 32  # AblationCAM's default is 32 already
        heat = cam(input_tensor=input_tensor, targets=targets)
        cam.activations_and_grads.release()
        return np.float32(heat)

    for token, cls, flipped in methods:
        save(out_dir, f"{prefix}_{token}_map.npy", one(cls))
        if flipped is not None:
            save(out_dir, f"{prefix}_{token}_map_flipped.npy", one(flipped))


class FlippedGradCAM(GradCAM):
    """Only used with eigen_smooth=True: negates pgc's get_2d_projection."""

    def get_cam_image(self, *args, **kwargs):
        return -super().get_cam_image(*args, **kwargs)


class FlippedGradCAMPlusPlus(GradCAMPlusPlus):
    def get_cam_image(self, *args, **kwargs):
        return -super().get_cam_image(*args, **kwargs)


# file-name token -> (pgc class, its sign-flipped twin for eigen_smooth)
SMOOTHING_METHODS = [
    ("gradcam", GradCAM, FlippedGradCAM),
    ("gradcampp", GradCAMPlusPlus, FlippedGradCAMPlusPlus),
]


def run_smoothing(out_dir, prefix, model, layer, input_tensor, target_ids):
    """<prefix>_<token>_augsmooth_map.npy, _eigensmooth_map.npy and
    _eigensmooth_map_flipped.npy for the methods of SMOOTHING_METHODS."""
    targets = [ClassifierOutputTarget(int(c)) for c in target_ids]

    def one(cls, **kwargs):
        cam = cls(model=model, target_layers=[layer])
        heat = cam(input_tensor=input_tensor, targets=targets, **kwargs)
        cam.activations_and_grads.release()
        return np.float32(heat)

    for token, cls, flipped in SMOOTHING_METHODS:
        save(out_dir, f"{prefix}_{token}_augsmooth_map.npy", one(cls, aug_smooth=True))
        save(out_dir, f"{prefix}_{token}_eigensmooth_map.npy", one(cls, eigen_smooth=True))
        save(out_dir, f"{prefix}_{token}_eigensmooth_map_flipped.npy", one(flipped, eigen_smooth=True))


def save(out_dir, name, array):
    np.save(os.path.join(out_dir, name), array)
    print(f"  {name:44s} {array.dtype} {tuple(array.shape)}")


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", default=os.path.join(REPO_ROOT, "tests", "data", "golden"))
    ap.add_argument("--models", default=os.path.join(ZOO, "models"))
    ap.add_argument("--data", default=os.path.join(ZOO, "data", "shapes"))
    args = ap.parse_args()

    torch.manual_seed(0)
    torch.set_num_threads(1)
    torch.use_deterministic_algorithms(True)
    os.makedirs(args.out, exist_ok=True)
    print(f"grad-cam {importlib.metadata.version('grad-cam')} / torch {torch.__version__} -> {args.out}")

    # Shapes model: eager ShapesNet carrying the traced file's weights.
    model = shapes.ShapesNet()
    traced = torch.jit.load(os.path.join(args.models, "shapes_cnn_traced.pt"), map_location="cpu")
    model.load_state_dict(traced.state_dict())
    model.eval()
    names = [f"val_{i:03d}.png" for i in range(4)]
    x = load_images(args.data, names)
    t = np.array(shapes_targets(args.data, names), np.int64)
    save(args.out, "shapes_input.npy", x.numpy())
    save(args.out, "shapes_targets.npy", t)
    heat, low = run_gradcam(model, [model.block4], x, t, lowres_layer=0)
    save(args.out, "shapes_block4_lowres.npy", low)
    save(args.out, "shapes_block4_map.npy", heat)
    heat, _ = run_gradcam(model, [model.block3, model.block4], x, t)
    save(args.out, "shapes_block3+block4_map.npy", heat)
    run_methods(args.out, "shapes_block4", model, model.block4, x, t)
    # An inner layer, where the methods differ (at block4, followed by global
    # average pooling and a linear layer, hirescam and xgradcam equal gradcam).
    run_methods(args.out, "shapes_block3", model, model.block3, x, t, [("gradcam", GradCAM, None)] + METHODS)
    run_smoothing(args.out, "shapes_block4", model, model.block4, x, t)

    # ResNet-18 with the seeded weights of its TorchScript export.
    model = export_torchvision.build("resnet18", 0)
    x = load_images(args.data, ["val_000.png", "val_001.png"], size=224)
    t = np.array(resnet18_targets(model, x), np.int64)
    save(args.out, "resnet18_input.npy", x.numpy())
    save(args.out, "resnet18_targets.npy", t)
    heat, low = run_gradcam(model, [model.layer4], x, t, lowres_layer=0)
    save(args.out, "resnet18_layer4_lowres.npy", low)
    save(args.out, "resnet18_layer4_map.npy", heat)
    run_methods(args.out, "resnet18_layer4", model, model.layer4, x, t)


if __name__ == "__main__":
    main()
