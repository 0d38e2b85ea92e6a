#!/usr/bin/env python3
"""CAM speed: pytorch-grad-cam ("pgc", eager PyTorch) against the xcam binary.

Run with the pgc venv (zoo/setup_pgc_venv.sh):
    .venv-pgc/bin/python benchmarks/pgc_bench.py --arch resnet50 --size 224 --batch 1 8 \\
        --threads 2 --repeats 10 --xcam build/cpu-release/core/xcam --model-dir build/cpu-release/zoo-models

Both sides explain the same network: zoo/export_torchvision.build(arch, seed) in
Python and its TorchScript export DIR/<arch>_traced.pt (written if missing) in xcam.
Per batch size it reports the median over --repeats timed runs, after warm-up, of
a forward-only pass and of a full Grad-CAM (target layer layer4, top class) call.
Without pytorch_grad_cam only the xcam columns are printed.
"""
import argparse
import json
import os
import statistics
import subprocess
import sys
import time

import torch

# pgc's Score-CAM and Ablation-CAM draw tqdm progress bars; keep the table readable.
try:
    import functools

    import tqdm

    tqdm.tqdm.__init__ = functools.partialmethod(tqdm.tqdm.__init__, disable=True)
except ImportError:
    pass

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(REPO_ROOT, "zoo"))

import export_torchvision  # noqa: E402

try:
    import pytorch_grad_cam as pgc
    from pytorch_grad_cam import GradCAM
except ImportError:
    GradCAM = None
    pgc = None

# xcam method name -> the peer's class name.
PEER_CLASSES = {
    "gradcam": "GradCAM", "gradcam++": "GradCAMPlusPlus", "xgradcam": "XGradCAM", "layercam": "LayerCAM",
    "hirescam": "HiResCAM", "gradcam-elementwise": "GradCAMElementWise", "eigencam": "EigenCAM",
    "eigengradcam": "EigenGradCAM", "scorecam": "ScoreCAM", "ablationcam": "AblationCAM",
}

TARGET_LAYER = "layer4"


def median_ms(fn, repeats, warmup=2):
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append((time.perf_counter() - t0) * 1e3)
    return statistics.median(times)


def bench_pgc(model, batch, size, repeats, method="gradcam"):
    """(forward ms, explanation ms) for pgc on the eager model."""
    x = torch.randn(batch, 3, size, size, generator=torch.Generator().manual_seed(batch))

    def forward():
        with torch.no_grad():
            model(x)

    cam = getattr(pgc, PEER_CLASSES[method])(model=model, target_layers=[dict(model.named_modules())[TARGET_LAYER]])
    if method in ("scorecam", "ablationcam"):
        cam.batch_size = 32  # the same chunk of perturbed inputs per forward as xcam's default
    # targets=None: pgc explains each sample's top class, as xcam does by default.
    result = (median_ms(forward, repeats), median_ms(lambda: cam(input_tensor=x, targets=None), repeats))
    cam.activations_and_grads.release()
    return result


def bench_xcam(xcam, model_path, batch, size, threads, repeats, method="gradcam"):
    """(forward ms, explanation ms) reported by `xcam bench --json` (last stdout line)."""
    cmd = [xcam, "bench", "--model", model_path, "--layer", TARGET_LAYER, "--method", method,
           "--batch", str(batch), "--size", str(size), str(size), "--threads", str(threads),
           "--repeats", str(repeats), "--json"]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} exited {proc.returncode}:\n{proc.stderr.strip()}")
    lines = proc.stdout.strip().splitlines()
    if not lines:
        raise RuntimeError(f"{' '.join(cmd)} printed nothing on stdout")
    report = json.loads(lines[-1])
    return float(report["forward_ms"]), float(report["explain_ms"])


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--arch", default="resnet50", choices=export_torchvision.ARCHS)
    ap.add_argument("--size", type=int, default=224)
    ap.add_argument("--batch", type=int, nargs="+", default=[1, 8])
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--repeats", type=int, default=10)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--method", default="gradcam", choices=sorted(PEER_CLASSES))
    ap.add_argument("--xcam", help="path of the xcam binary (omit to time pgc only)")
    ap.add_argument("--model-dir", default=os.path.join(REPO_ROOT, "out", "models"))
    args = ap.parse_args()

    if args.arch.startswith("vgg") or args.arch.startswith("mobilenet"):
        sys.exit(f"--arch {args.arch}: no '{TARGET_LAYER}' module; use a ResNet")
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)

    model_path = os.path.join(args.model_dir, f"{args.arch}_traced.pt")
    if args.xcam:
        export_torchvision.export(args.arch, args.model_dir, args.size, args.seed)
    if GradCAM is None:
        print("pytorch_grad_cam is not importable (run zoo/setup_pgc_venv.sh, then use "
              ".venv-pgc/bin/python): printing xcam numbers only")
        if not args.xcam:
            return
    model = export_torchvision.build(args.arch, args.seed) if GradCAM is not None else None

    print(f"{args.arch} {args.size}x{args.size}, {args.threads} thread(s), median of {args.repeats}, "
          f"{args.method} on {TARGET_LAYER}")
    header = f"{'batch':>5}  {'pgc fwd ms':>10}  {'pgc cam ms':>10}  {'xcam fwd ms':>11}  {'xcam cam ms':>11}  {'speed-up':>8}"
    print(header)
    print("-" * len(header))
    for batch in args.batch:
        pf = pc = xf = xc = None
        if model is not None:
            pf, pc = bench_pgc(model, batch, args.size, args.repeats, args.method)
        if args.xcam:
            xf, xc = bench_xcam(args.xcam, model_path, batch, args.size, args.threads, args.repeats, args.method)
        speedup = f"{pc / xc:7.2f}x" if pc is not None and xc else "-"
        cell = lambda v, w: f"{v:{w}.1f}" if v is not None else f"{'-':>{w}}"  # noqa: E731
        print(f"{batch:>5}  {cell(pf, 10)}  {cell(pc, 10)}  {cell(xf, 11)}  {cell(xc, 11)}  {speedup:>8}",
              flush=True)


if __name__ == "__main__":
    main()
