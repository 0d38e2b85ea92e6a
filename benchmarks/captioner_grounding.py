#!/usr/bin/env python3
"""Word grounding of the zoo captioner's maps, per method, layer and option:
runs the captions task (configs/captioner_words.yaml's inputs) and prints the
pointing game of colour and shape words against the box of the object they
name, beside the centre baseline and the first word's map used for every
word (what one map for every word would score).

usage: python3 benchmarks/captioner_grounding.py [--build build/cpu-release] [--out DIR]
"""
import argparse
import json
import os
import subprocess
import sys
import tempfile

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(REPO, "zoo"))
import captioner_data as data  # noqa: E402

RUNS = [  # (methods, layer, plugin options)
    ("gradcam, gradcam++, hirescam, layercam, xgradcam", "encoder", {}),
    ("gradcam, hirescam", "encoder.layer2", {}),
    ("gradcam", "encoder", {"detach_state": True}),
    ("gradcam", "encoder", {"score": "logprob"}),
]


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--build", default=os.path.join(REPO, "build/cpu-release"))
    ap.add_argument("--out", default=None)
    a = ap.parse_args()
    out = a.out or tempfile.mkdtemp(prefix="captioner_grounding_")
    xcam = os.path.join(a.build, "core/xcam")
    print("| method | layer | options | words | pointing | colour | shape | centre | first word's map |")
    print("|---|---|---|---|---|---|---|---|---|")
    for k, (methods, layer, opts) in enumerate(RUNS):
        cfg = os.path.join(out, f"run{k}.yaml")
        with open(cfg, "w") as f:
            f.write(f"name: grounding{k}\nmodel: {REPO}/zoo/models/captioner_scripted.pt\n"
                    f"plugin: {a.build}/plugins/captioner/libxcam_plugin_captioner.so\n"
                    f"plugin_options: {json.dumps(opts)}\npreprocess: {{size: [128, 128]}}\nlayers: {layer}\n"
                    f"methods: [{methods}]\ninputs: {{manifest: {REPO}/zoo/data/captioner/manifest.jsonl}}\n"
                    f"task: {{name: captions, batch: 25, show: 0}}\nthreads: 2\n"
                    f"outputs: {{dir: {out}/run{k}, save: []}}\n")
        subprocess.run([xcam, "run", cfg], check=True, stdout=subprocess.DEVNULL)
        for method in [m.strip() for m in methods.split(",")]:
            tap = "encoder.layer3" if layer == "encoder" else layer
            folder = os.path.join(out, f"run{k}", method, tap)
            metrics = json.load(open(os.path.join(folder, "task.json")))["metrics"]
            hits = {"colour": [0, 0], "shape": [0, 0]}
            for c in json.load(open(os.path.join(folder, "captions.json")))["captions"]:
                for w in c["words"]:
                    if "hit" in w:
                        kind = "colour" if w["word"] in data.COLOURS else "shape"
                        hits[kind][0] += w["hit"]
                        hits[kind][1] += 1
            rate = {k2: v[0] / v[1] for k2, v in hits.items()}
            print(f"| {method} | {layer} | {json.dumps(opts) if opts else ''} | {int(metrics['grounded_words'])} | "
                  f"{metrics['pointing']:.3f} | {rate['colour']:.3f} | {rate['shape']:.3f} | "
                  f"{metrics['pointing_centre']:.3f} | {metrics['pointing_first_word']:.3f} |")


if __name__ == "__main__":
    main()
