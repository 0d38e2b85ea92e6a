#!/usr/bin/env python3
"""References for the vlm plugin's tests (tests/plugins/test_vlm.cpp), from the eager transformers
Qwen2-VL with the weights of zoo/models/vlm/qwen2_vl_count_traced.pt (as zoo/vlm_model.py --verify
rebuilds it), on two held-out scenes of zoo/data/vlm whose grids the trace (16 x 16) never saw:

  - the greedy answer of the eager float32 model (and of the float64 one);
  - Grad-CAM of the answer's log-probability (its tokens and <|im_end|>), in float64, at the last
    vision block (patch grid gh x gw: view(gh/2, gw/2, 2, 2, C).permute(0, 2, 1, 3, 4)) and at the
    middle decoder layer's image tokens (gh/2 x gw/2), min-max normalised (SPEC section 1);
  - the reference functions' inputs for those grids (vision_rotary as exact float32 values);
  - the eager gradient's size at the image tokens of each decoder layer (the last is 0);
  - the same weights in bfloat16: the eager model's greedy answer and its Grad-CAM maps (bfloat16
    forward and backward through the export's wrapper, the map maths in float32), and the grid-free
    trace of that model;
  - the zoo's random-init Qwen2.5-VL (window attention in its vision blocks): its eager float32
    greedy answer and the float64 maps of that answer, its vision blocks put back in raster order;
  - the traced file in float16 (the plugin must refuse it on the CPU).

usage: .venv-hf/bin/python zoo/vlm_fixtures.py --out DIR
       (writes DIR/reference.json, DIR/vlm_half.pt, DIR/vlm_bf16.pt)
"""
import argparse
import json
import os
import sys

import cv2
import torch
import torch.nn.functional as F

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import vlm_model as vm  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))
MODEL = os.path.join(HERE, "models", "vlm", "qwen2_vl_count_traced.pt")
MODEL25 = os.path.join(HERE, "models", "vlm", "qwen2_5_vl_tiny_traced.pt")
DATA = os.path.join(HERE, "data", "vlm")
SIZES = [(96, 160), (144, 112)]  # grids 12 x 20 and 18 x 14: not the trace's 16 x 16


def eager_model(tok, dtype, qwen25=False):
    hf = (vm.Qwen2_5_VLForConditionalGeneration(vm.qwen2_5_vl_config(tok)) if qwen25
          else vm.Qwen2VLForConditionalGeneration(vm.qwen2_vl_config(tok)))
    missing, _ = hf.load_state_dict(torch.jit.load(MODEL25 if qwen25 else MODEL).state_dict(), strict=False)
    assert not missing, missing
    return hf.to(dtype).eval()


def greedy(hf, ex, eos, dtype, max_new=8):
    ids = ex.input_ids[0].tolist()
    out = []
    with torch.no_grad():
        for _ in range(max_new):
            x = torch.tensor([ids + out])
            logits = hf(input_ids=x, pixel_values=ex.pixel_values.to(dtype), image_grid_thw=ex.grid_thw,
                        use_cache=False, return_dict=True).logits
            nxt = int(logits[0, -1].argmax())
            out.append(nxt)
            if nxt == eos:
                break
    return out


def normalise(cam):
    cam = cam.clamp(min=0)
    return (cam - cam.min()) / (cam.max() - cam.min() + 1e-7)


def gradcam(act, grad):
    """act, grad: h x w x C -> the normalised h x w map."""
    return normalise((act * grad.mean(dim=(0, 1))).sum(-1))


def eager_maps(hf, full, mid, wrapper=False):
    """The answer's log-probability and the Grad-CAM maps at the last vision block and decoder layer `mid` of the
    eager model `hf` (its own dtype; the map maths in float32 at least) on the teacher-forced Example `full`; the
    largest gradient at the image tokens per decoder layer. wrapper: run it through the export's wrapper
    (vm.GridFreeQwen2VL, the rotary angles given in float32) rather than transformers' forward, so that a
    bfloat16 model computes exactly what its trace does."""
    blocks, layers = len(hf.visual.blocks), len(hf.model.layers)
    dtype = next(hf.parameters()).dtype
    wide = torch.float64 if dtype == torch.float64 else torch.float32
    t, gh, gw = full.grid
    window = getattr(hf.config.vision_config, "window_size", None)
    captured = {}

    def keep(name, index=None):
        def hook(_m, _inp, out):
            o = out if index is None else out[index]
            o.retain_grad()
            captured[name] = o
        return hook
    handles = [hf.visual.blocks[blocks - 1].register_forward_hook(keep("vision"))]
    handles += [layer.register_forward_hook(keep(i, 0)) for i, layer in enumerate(hf.model.layers)]
    if wrapper:
        inputs = list(full.inputs)
        inputs[1] = inputs[1].to(dtype)
        logits = vm.GridFreeQwen2VL(hf)(*inputs)
    else:
        logits = hf(input_ids=full.input_ids, pixel_values=full.pixel_values.to(dtype), image_grid_thw=full.grid_thw,
                    use_cache=False, return_dict=True).logits
    for h in handles:
        h.remove()
    n = full.input_ids.shape[1] - full.prompt_len
    lp = F.log_softmax(logits[0, full.prompt_len - 1:full.prompt_len - 1 + n].to(torch.float64), dim=-1)
    y = lp.gather(1, full.input_ids[0, full.prompt_len:].unsqueeze(1)).sum()
    y.backward()
    C = captured["vision"].shape[-1]
    if window:  # Qwen2.5-VL's blocks see the merged tokens window by window: back to raster order
        order, _ = vm.window_index_and_cu(full.grid, vm.PATCH, vm.MERGE, window, vm.MAX_WINDOWS)
        for key in ("vision",):
            v = captured[key]
            raster = torch.empty_like(v.detach()).view(-1, 4, C)
            raster[order] = v.detach().view(-1, 4, C)
            grad = torch.empty_like(raster)
            grad[order] = v.grad.view(-1, 4, C)
            captured[key] = raster.view(-1, C).requires_grad_()
            captured[key].grad = grad.view(-1, C)
    to_grid = lambda v: v.view(gh // 2, gw // 2, 2, 2, C).permute(0, 2, 1, 3, 4).reshape(gh, gw, C)  # noqa: E731
    cam_v = gradcam(to_grid(captured["vision"].detach().to(wide)), to_grid(captured["vision"].grad.to(wide)))
    at_image = full.input_ids[0] == hf.config.image_token_id
    dec = captured[mid]
    to_tokens = lambda v: v[0, at_image].reshape(gh // 2, gw // 2, -1)  # noqa: E731
    cam_d = gradcam(to_tokens(dec.detach().to(wide)), to_tokens(dec.grad.to(wide)))
    layer_grads = [float(captured[i].grad[0, at_image].abs().max()) for i in range(layers)]
    return y, cam_v, cam_d, layer_grads


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", required=True)
    a = ap.parse_args()
    torch.set_num_threads(1)
    os.makedirs(a.out, exist_ok=True)
    tok, template = vm.load_tokenizer()
    eos = tok.token_to_id("<|im_end|>")
    hf32, hf64 = eager_model(tok, torch.float32), eager_model(tok, torch.float64)
    hf16 = eager_model(tok, torch.bfloat16)
    hf25_32, hf25_64 = eager_model(tok, torch.float32, True), eager_model(tok, torch.float64, True)
    rows = [json.loads(line) for line in open(os.path.join(DATA, "manifest.jsonl"))]
    picked = []
    for size in SIZES:  # the first scene of each size with red circles in it
        picked.append(next(r for r in rows if tuple(r["size"]) == size and r["count"] > 0))
    blocks, layers = len(hf64.visual.blocks), len(hf64.model.layers)
    mid = (layers - 1) // 2
    ref = {"model": "zoo/models/vlm/qwen2_vl_count_traced.pt", "vision_layer": f"visual.blocks.{blocks - 1}",
           "decoder_layer": f"model.layers.{mid}", "samples": []}
    for r in picked:
        rgb = cv2.cvtColor(cv2.imread(os.path.join(DATA, r["image"]), cv2.IMREAD_COLOR), cv2.COLOR_BGR2RGB)
        ex = vm.Example(rgb, tok, template, hf64.config, question=r["question"])
        t, gh, gw = ex.grid
        answer = greedy(hf32, ex, eos, torch.float32)
        answer64 = greedy(hf64, ex, eos, torch.float64)
        full = vm.Example(rgb, tok, template, hf64.config, question=r["question"], answer=answer)
        y, cam_v, cam_d, layer_grads = eager_maps(hf64, full, mid)
        answer_bf16 = greedy(hf16, ex, eos, torch.bfloat16)
        full16 = vm.Example(rgb, tok, template, hf64.config, question=r["question"], answer=answer_bf16)
        y16, cam_v16, cam_d16, _ = eager_maps(hf16, full16, mid, wrapper=True)
        answer25 = greedy(hf25_32, ex, eos, torch.float32)
        full25 = vm.Example(rgb, tok, template, hf25_64.config, question=r["question"], answer=answer25)
        y25, cam_v25, cam_d25, _ = eager_maps(hf25_64, full25, mid)
        ref["samples"].append({
            "id": os.path.splitext(os.path.basename(r["image"]))[0], "image": r["image"], "question": r["question"],
            "count": r["count"], "size": list(rgb.shape[:2]), "grid": [gh, gw], "answer_ids": answer,
            "answer_ids64": answer64, "answer": tok.decode([i for i in answer if i != eos]),
            "logprob": float(y), "prompt_ids": full.input_ids[0, :full.prompt_len].tolist(),
            "position_ids": full.position_ids[:, 0].tolist(),
            "vision_rotary": [float(v) for v in full.vision_rotary.flatten()],
            "cam_vision": [float(v) for v in cam_v.flatten()], "cam_decoder": [float(v) for v in cam_d.flatten()],
            "answer_ids_bf16": answer_bf16, "logprob_bf16": float(y16),
            "cam_vision_bf16": [float(v) for v in cam_v16.flatten()],
            "cam_decoder_bf16": [float(v) for v in cam_d16.flatten()],
            "answer_ids_qwen25": answer25, "logprob_qwen25": float(y25),
            "cam_vision_qwen25": [float(v) for v in cam_v25.flatten()],
            "cam_decoder_qwen25": [float(v) for v in cam_d25.flatten()],
            "decoder_grad_at_image_max_abs": layer_grads})
        print(f"{r['image']} {gh}x{gw}: answer {answer} ('{ref['samples'][-1]['answer']}', count {r['count']}), "
              f"float64 {answer64}; log p {float(y):.4f}; |grad| at image tokens per layer {layer_grads}")
    half = torch.jit.load(MODEL)
    half.half()
    half.save(os.path.join(a.out, "vlm_half.pt"))
    vm.export(hf16, tok, template, os.path.join(a.out, "vlm_bf16.pt"), "qwen2_vl")
    with open(os.path.join(a.out, "reference.json"), "w") as f:
        json.dump(ref, f)
    print(f"wrote {a.out}/reference.json, vlm_half.pt, vlm_bf16.pt")


if __name__ == "__main__":
    main()
