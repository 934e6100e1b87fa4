#!/usr/bin/env python3
"""A float64 reference for every gradient of a full-size VGG, made by PyTorch.

    python3 scripts/gradient_error.py DIR [--model vgg11] [--batch 2] [--size 224]

writes, for torchvision's layout without the adaptive pool (as `vgg` builds it), at torchvision's
initialisation (seed 0) and a normal input:

    DIR/weights.safetensors   the f32 weights (torchvision names), loadable by `vgg`
    DIR/input.npy             the f32 input
    DIR/grads_f64.safetensors every parameter's gradient of l2_loss(logits) = sum(logits^2)/2,
                              computed in float64 from the same f32 weights and input
    DIR/pytorch_f32.json      PyTorch's own f32 error per parameter: ||g32 - g64|| / ||g64||

Then our gradients, beside PyTorch's errors:

    vgg backward --weights DIR/weights.safetensors --input DIR/input.npy --output DIR/ours.safetensors
    python3 scripts/gradient_error.py DIR --compare DIR/ours.safetensors

Full size needs ~8 GB of memory and a few minutes on two cores.

Needs torch, numpy and safetensors (pip install torch numpy safetensors).
"""
import argparse
import json
import os

import numpy as np
import torch
import torch.nn as nn
from safetensors.torch import save_file

from make_fixtures import SmallVgg

CONFIGS = {
    "vgg11": [64, "M", 128, "M", 256, 256, "M", 512, 512, "M", 512, 512, "M"],
    "vgg13": [64, 64, "M", 128, 128, "M", 256, 256, "M", 512, 512, "M", 512, 512, "M"],
    "vgg16": [64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512, "M"],
}


def build(cfg, size, classes=1000, hidden=4096):
    model = SmallVgg(cfg, hidden, classes, size)
    # torchvision's VGG initialisation.
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            nn.init.zeros_(m.bias)
        elif isinstance(m, nn.Linear):
            nn.init.normal_(m.weight, 0, 0.01)
            nn.init.zeros_(m.bias)
    return model.eval()


def gradients(model, x):
    model.zero_grad()
    logits = model(x)
    (logits.pow(2).sum() / 2).backward()
    return {n: p.grad.detach().clone() for n, p in model.named_parameters()}


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("out")
    parser.add_argument("--model", default="vgg11", choices=sorted(CONFIGS))
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--weights", metavar="SAFETENSORS", help="these weights instead of torchvision's init")
    parser.add_argument("--input", metavar="NPY", help="this input instead of a normal one")
    parser.add_argument("--compare", metavar="GRADS", help="gradients to set against DIR's reference")
    args = parser.parse_args()
    if args.compare:
        return compare(args.out, args.compare)
    torch.manual_seed(0)
    model = build(CONFIGS[args.model], args.size)
    if args.weights:
        from safetensors.torch import load_file
        model.load_state_dict(load_file(args.weights))
    x = torch.randn(args.batch, 3, args.size, args.size)
    if args.input:
        x = torch.from_numpy(np.load(args.input))
    g32 = gradients(model, x)
    model64 = build(CONFIGS[args.model], args.size).double()
    model64.load_state_dict({n: t.double() for n, t in model.state_dict().items()})
    g64 = gradients(model64, x.double())
    errors = {n: ((g32[n].double() - g64[n]).norm() / g64[n].norm()).item() for n in g64}
    os.makedirs(args.out, exist_ok=True)
    meta = {"vgg.model": args.model, "vgg.classes": "1000", "vgg.hidden": "4096", "vgg.width_mult": "1",
            "vgg.in_channels": "3", "vgg.input": f"{args.size}x{args.size}",
            "made_by": f"torch {torch.__version__}"}
    save_file({n: t.contiguous() for n, t in model.state_dict().items()},
              os.path.join(args.out, "weights.safetensors"), metadata=meta)
    save_file({n: t.contiguous() for n, t in g64.items()}, os.path.join(args.out, "grads_f64.safetensors"),
              metadata={"made_by": meta["made_by"]})
    np.save(os.path.join(args.out, "input.npy"), x.numpy().astype(np.float32))
    with open(os.path.join(args.out, "pytorch_f32.json"), "w") as f:
        json.dump({"made_by": meta["made_by"], "threads": torch.get_num_threads(), "errors": errors}, f, indent=1)
    for n, e in errors.items():
        print(f"{n:24} PyTorch f32 {e:.2e}")


def compare(out, ours_path):
    from safetensors.numpy import load_file
    want = load_file(os.path.join(out, "grads_f64.safetensors"))
    ours = load_file(ours_path)
    with open(os.path.join(out, "pytorch_f32.json")) as f:
        theirs = json.load(f)["errors"]
    print(f"{'parameter':24} {'ours':>9} {'PyTorch f32':>11} {'ratio':>7}")
    for n, w in want.items():
        e = float(np.linalg.norm(ours[n].astype(np.float64) - w) / np.linalg.norm(w))
        print(f"{n:24} {e:9.2e} {theirs[n]:11.2e} {e / theirs[n]:7.1f}")


if __name__ == "__main__":
    main()
