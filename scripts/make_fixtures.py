#!/usr/bin/env python3
"""Parity fixtures made by PyTorch, an independent framework, for tests/fixtures/.

    python3 scripts/make_fixtures.py tests/fixtures/vgg11-w8
        VGG-11 at width 1/8 (8..64 channels), hidden width 256, 10 classes, 32x32, batch 2:
        weights.safetensors (torchvision names), input.npy, logits.npy, and grads.safetensors,
        the gradients of l2_loss(logits) = sum(logits^2)/2 for every parameter (dropout off).

    python3 scripts/make_fixtures.py --classify tests/fixtures/classify
        A 300x240 PNG, a VGG-11 at width 1/8 with hidden width 64 and 1000 classes (224x224 inputs), and
        expected.json: the top-5 classes and probabilities after torchvision's VGG preprocessing
        (Resize(256), CenterCrop(224), ToTensor, Normalize with ImageNet's mean and std).

    python3 scripts/make_fixtures.py --explain tests/fixtures/explain
        What the network looks at, by PyTorch hooks on the classify fixture's network and picture
        (tests/fixtures/classify, which must exist): expected.safetensors holds the prepared input
        [1, 3, 224, 224], Grad-CAM (ReLU of the activations weighed by their gradients' spatial
        means, not normalised) at conv5_2 for the top class, at pool4 for class 7 and at conv3_1 for
        the top class, conv5_2's map enlarged to 224x224 (interpolate, bilinear, align_corners=False),
        and saliency (max over channels of |d logit / d input|) for the top class and class 7.

    python3 scripts/make_fixtures.py --pth tests/fixtures/pth
        PyTorch's own file format (torch.save), as torchvision ships its weights: vgg11-w8.pth, the
        state_dict of tests/fixtures/vgg11-w8/weights.safetensors (no metadata: the network is read
        off the tensors), and small files for the loader: tiny.pth (two tensors), nested.pth
        ({"state_dict": DataParallel names, "epoch": 3}), legacy.pth (the pre-1.6 pickle stream),
        float64.pth (refused: not float32) and hostile.pth (a pickle that would call os.system when
        unpickled by Python: refused without running it).

    python3 scripts/make_fixtures.py --family tests/fixtures/family
        torchvision's eight VGG models (vgg11 .. vgg19 and vgg11_bn .. vgg19_bn) at width 1/16, hidden
        width 32, 10 classes, 32x32, batch 4, with BatchNorm's scales, shifts and running statistics
        drawn away from their initial values. input.npy, and for each model NAME/weights.safetensors
        (the whole state_dict, num_batches_tracked as int64, as torchvision saves it), NAME/eval.npy (the
        logits in eval mode) and, for the _bn models, NAME/eval.safetensors (the gradients of
        sum(logits^2)/2 in eval mode, through the running statistics), NAME/train.npy and
        NAME/train.safetensors: the
        logits in train mode (BatchNorm on the batch's statistics, dropout off), the gradients of
        sum(logits^2)/2 for every parameter (`grad.` + name) and the running statistics after that
        forward pass (`after.` + name). And vgg11_bn-avgpool3/: vgg11_bn with torchvision's adaptive
        average pool (to 3x3, from pool5's 2x2 at 64x64, batch 2): weights, input.npy, eval.npy and
        eval.safetensors.

    python3 scripts/make_fixtures.py --torchvision DIR
        torchvision's own eight models (vgg11() .. vgg19_bn(), random init, BatchNorm's statistics drawn
        as above) at 224x224 in eval mode: DIR/NAME.pth (torch.save of the state_dict, as torchvision
        ships its weights), DIR/input.npy and DIR/NAME.logits.npy, and at 320x320 (where the adaptive
        pool averages pool5's 10x10 to 7x7) DIR/input320.npy and DIR/NAME.logits320.npy. For the ignored test
        `torchvision_at_224` (VGG_TORCHVISION_DIR=DIR; 4.2 GB, not committed).

Needs torch, torchvision, numpy and safetensors (pip install torch torchvision numpy safetensors).
"""
import argparse
import os

import numpy as np
import torch
import torch.nn as nn
from safetensors.torch import save_file

# VGG-11 (config A) at width 1/8: 64, M, 128, M, 256, 256, M, 512, 512, M, 512, 512, M.
CFG_A_W8 = [8, "M", 16, "M", 32, 32, "M", 64, 64, "M", 64, 64, "M"]


class SmallVgg(nn.Module):
    """torchvision's VGG layout (features / flatten / classifier, same module indices) without the
    adaptive average pool, so fc6 reads pool5 as it is, as the reference program does."""

    def __init__(self, cfg, hidden, classes, size, batch_norm=False, adaptive=None):
        super().__init__()
        layers, channels = [], 3
        for v in cfg:
            if v == "M":
                layers.append(nn.MaxPool2d(2, 2))
                size //= 2
            else:
                layers.append(nn.Conv2d(channels, v, 3, padding=1))
                if batch_norm:
                    layers.append(nn.BatchNorm2d(v))
                layers.append(nn.ReLU(inplace=True))
                channels = v
        self.features = nn.Sequential(*layers)
        # torchvision's avgpool, when asked for.
        self.avgpool = nn.AdaptiveAvgPool2d((adaptive, adaptive)) if adaptive else nn.Identity()
        size = adaptive or size
        self.classifier = nn.Sequential(
            nn.Linear(channels * size * size, hidden), nn.ReLU(True), nn.Dropout(),
            nn.Linear(hidden, hidden), nn.ReLU(True), nn.Dropout(),
            nn.Linear(hidden, classes),
        )

    def forward(self, x):
        return self.classifier(torch.flatten(self.avgpool(self.features(x)), 1))


def small_fixture(out):
    torch.manual_seed(0)
    model = SmallVgg(CFG_A_W8, hidden=256, classes=10, size=32).eval()
    # Larger than PyTorch's default init so that every layer's gradient is well above rounding.
    for m in model.modules():
        if isinstance(m, (nn.Conv2d, nn.Linear)):
            nn.init.xavier_uniform_(m.weight)
            nn.init.uniform_(m.bias, -0.1, 0.1)
    x = torch.randn(2, 3, 32, 32)
    logits = model(x)
    (logits.pow(2).sum() / 2).backward()
    os.makedirs(out, exist_ok=True)
    meta = {"vgg.model": "vgg11", "vgg.classes": "10", "vgg.hidden": "256", "vgg.width_mult": "0.125",
            "vgg.in_channels": "3", "vgg.input": "32x32", "made_by": f"torch {torch.__version__}"}
    save_file({n: p.detach().contiguous() for n, p in model.named_parameters()},
              os.path.join(out, "weights.safetensors"), metadata=meta)
    save_file({n: p.grad.contiguous() for n, p in model.named_parameters()},
              os.path.join(out, "grads.safetensors"), metadata={"made_by": meta["made_by"]})
    np.save(os.path.join(out, "input.npy"), x.numpy().astype(np.float32))
    np.save(os.path.join(out, "logits.npy"), logits.detach().numpy().astype(np.float32))
    print(f"wrote {out}: logits {logits.shape}, loss {(logits.pow(2).sum() / 2).item():.6f}")


def classify_fixture(out):
    import json
    from PIL import Image
    from torchvision import transforms
    torch.manual_seed(0)
    # A seeded picture with gradients, stripes and noise, so that resizing and cropping matter.
    rng = np.random.default_rng(0)
    h, w = 240, 300
    yy, xx = np.mgrid[0:h, 0:w]
    img = np.stack([(xx * 255 // w), (yy * 255 // h), (128 + 100 * np.sin(xx / 7.0 + yy / 11.0))], axis=-1)
    img = np.clip(img + rng.normal(0, 12, img.shape), 0, 255).astype(np.uint8)
    os.makedirs(out, exist_ok=True)
    Image.fromarray(img).save(os.path.join(out, "image.png"))
    model = SmallVgg(CFG_A_W8, hidden=64, classes=1000, size=224).eval()
    for m in model.modules():
        if isinstance(m, (nn.Conv2d, nn.Linear)):
            nn.init.xavier_uniform_(m.weight)
            nn.init.uniform_(m.bias, -0.1, 0.1)
    preprocess = transforms.Compose([
        transforms.Resize(256), transforms.CenterCrop(224), transforms.ToTensor(),
        transforms.Normalize(mean=[0.485, 0.456, 0.406], std=[0.229, 0.224, 0.225]),
    ])
    x = preprocess(Image.open(os.path.join(out, "image.png")).convert("RGB")).unsqueeze(0)
    with torch.no_grad():
        probs = torch.softmax(model(x), 1)[0]
    top = probs.topk(5)
    meta = {"vgg.model": "vgg11", "vgg.classes": "1000", "vgg.hidden": "64", "vgg.width_mult": "0.125",
            "vgg.in_channels": "3", "vgg.input": "224x224", "made_by": f"torch {torch.__version__}"}
    save_file({n: p.detach().contiguous() for n, p in model.named_parameters()},
              os.path.join(out, "weights.safetensors"), metadata=meta)
    with open(os.path.join(out, "expected.json"), "w") as f:
        json.dump({"classes": top.indices.tolist(), "probabilities": top.values.tolist(),
                   "input_mean": x.mean().item()}, f, indent=2)
    print(f"wrote {out}: top-5 {top.indices.tolist()}")


def explain_fixture(out):
    import torch.nn.functional as F
    from PIL import Image
    from safetensors.torch import load_file
    from torchvision import transforms
    classify = os.path.join(os.path.dirname(out.rstrip("/")), "classify")
    model = SmallVgg(CFG_A_W8, hidden=64, classes=1000, size=224).eval()
    model.load_state_dict(load_file(os.path.join(classify, "weights.safetensors")))
    for m in model.modules():
        if isinstance(m, nn.ReLU):
            m.inplace = False
    preprocess = transforms.Compose([
        transforms.Resize(256), transforms.CenterCrop(224), transforms.ToTensor(),
        transforms.Normalize(mean=[0.485, 0.456, 0.406], std=[0.229, 0.224, 0.225]),
    ])
    x = preprocess(Image.open(os.path.join(classify, "image.png")).convert("RGB")).unsqueeze(0)

    def explain(module_index, cls):
        kept = {}

        def hook(_, __, output):
            output.retain_grad()
            kept["a"] = output
        handle = model.features[module_index].register_forward_hook(hook)
        xi = x.clone().requires_grad_(True)
        logits = model(xi)
        handle.remove()
        if cls is None:
            cls = int(logits.argmax(1))
        model.zero_grad()
        logits[0, cls].backward()
        a, g = kept["a"], kept["a"].grad
        weights = g.mean(dim=(2, 3), keepdim=True)
        cam = F.relu((weights * a).sum(1))[0]
        # Grad-CAM++ as pytorch-grad-cam's GradCAMPlusPlus weighs the channels, in float64.
        a64, g64 = a.detach().double(), g.double()
        g2, g3 = g64 ** 2, g64 ** 3
        sum_a = a64.sum(dim=(2, 3), keepdim=True)
        alpha = torch.where(g64 != 0, g2 / (2 * g2 + sum_a * g3 + 1e-6), torch.zeros_like(g64))
        weights_pp = (alpha * F.relu(g64)).sum(dim=(2, 3), keepdim=True)
        cam_pp = F.relu((weights_pp * a64).sum(1))[0].float()
        saliency = xi.grad.abs().amax(1)[0]
        return cls, cam.detach(), saliency.detach(), cam_pp

    def up(cam):
        return F.interpolate(cam[None, None], size=(224, 224), mode="bilinear", align_corners=False)[0, 0]

    # VGG-11's modules: conv3_1 is features[6] (its ReLU 7), pool4 features[15], conv5_2 features[18] (ReLU 19).
    top, cam_top, saliency_top, cam_pp_top = explain(19, None)
    _, cam_pool4, saliency_7, cam_pp_pool4 = explain(15, 7)
    _, cam_conv3_1, _, _ = explain(7, None)
    os.makedirs(out, exist_ok=True)
    save_file({"input": x.contiguous(), "cam_conv5_2_top": cam_top.contiguous(),
               "cam_conv5_2_top_224": up(cam_top).contiguous(), "saliency_top": saliency_top.contiguous(),
               "cam_pool4_class7": cam_pool4.contiguous(), "saliency_class7": saliency_7.contiguous(),
               "cam_conv3_1_top": cam_conv3_1.contiguous(),
               "campp_conv5_2_top": cam_pp_top.contiguous(), "campp_conv5_2_top_224": up(cam_pp_top).contiguous(),
               "campp_pool4_class7": cam_pp_pool4.contiguous()},
              os.path.join(out, "expected.safetensors"),
              metadata={"top_class": str(top), "made_by": f"torch {torch.__version__}"})
    print(f"wrote {out}: top class {top}")


class Hostile:
    """Unpickled by Python, this would run a shell command; a safe reader must refuse it."""

    def __reduce__(self):
        return (os.system, ("echo this file ran code",))


def pth_fixtures(out):
    from safetensors.torch import load_file
    os.makedirs(out, exist_ok=True)
    weights = load_file(os.path.join(os.path.dirname(out.rstrip("/")), "vgg11-w8", "weights.safetensors"))
    torch.save(weights, os.path.join(out, "vgg11-w8.pth"))
    torch.manual_seed(0)
    tiny = {"layer.weight": torch.randn(2, 3), "layer.bias": torch.arange(3, dtype=torch.float32)}
    torch.save(tiny, os.path.join(out, "tiny.pth"))
    torch.save({"state_dict": {f"module.{k}": v for k, v in tiny.items()}, "epoch": 3},
               os.path.join(out, "nested.pth"))
    torch.save(tiny, os.path.join(out, "legacy.pth"), _use_new_zipfile_serialization=False)
    torch.save({k: v.double() for k, v in tiny.items()}, os.path.join(out, "float64.pth"))
    torch.save({"layer.weight": tiny["layer.weight"], "payload": Hostile()}, os.path.join(out, "hostile.pth"))
    print(f"wrote {out}: {sorted(os.listdir(out))}")


# torchvision's configurations (torchvision.models.vgg.cfgs), widths to be divided by 16.
FAMILY = {"vgg11": "A", "vgg13": "B", "vgg16": "D", "vgg19": "E"}
CFGS = {
    "A": [64, "M", 128, "M", 256, 256, "M", 512, 512, "M", 512, 512, "M"],
    "B": [64, 64, "M", 128, 128, "M", 256, 256, "M", 512, 512, "M", 512, 512, "M"],
    "D": [64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512, "M"],
    "E": [64, 64, "M", 128, 128, "M", 256, 256, 256, 256, "M", 512, 512, 512, 512, "M", 512, 512, 512, 512, "M"],
}


def randomise_batch_norm(m):
    """A BatchNorm's scale, shift and running statistics drawn away from their initial values,
    so that a test sees each of them used."""
    nn.init.uniform_(m.weight, 0.5, 1.5)
    nn.init.uniform_(m.bias, -0.2, 0.2)
    m.running_mean.uniform_(-0.3, 0.3)
    m.running_var.uniform_(0.5, 2.0)
    m.num_batches_tracked.fill_(7)


def family_fixtures(out):
    torch.manual_seed(0)
    os.makedirs(out, exist_ok=True)
    x = torch.randn(4, 3, 32, 32)
    np.save(os.path.join(out, "input.npy"), x.numpy().astype(np.float32))
    for base, letter in FAMILY.items():
        cfg = [v if v == "M" else v // 16 for v in CFGS[letter]]
        for bn in (False, True):
            name = base + ("_bn" if bn else "")
            model = SmallVgg(cfg, hidden=32, classes=10, size=32, batch_norm=bn)
            for m in model.modules():
                if isinstance(m, (nn.Conv2d, nn.Linear)):
                    nn.init.xavier_uniform_(m.weight)
                    nn.init.uniform_(m.bias, -0.1, 0.1)
                if isinstance(m, nn.BatchNorm2d):
                    randomise_batch_norm(m)
            d = os.path.join(out, name)
            os.makedirs(d, exist_ok=True)
            meta = {"vgg.model": name, "vgg.classes": "10", "vgg.hidden": "32", "vgg.width_mult": "0.0625",
                    "vgg.in_channels": "3", "vgg.input": "32x32", "made_by": f"torch {torch.__version__}"}
            save_file({n: t.contiguous() for n, t in model.state_dict().items()},
                      os.path.join(d, "weights.safetensors"), metadata=meta)
            with torch.no_grad():
                np.save(os.path.join(d, "eval.npy"), model.eval()(x).numpy().astype(np.float32))
            if not bn:
                continue
            logits = model(x)
            (logits.pow(2).sum() / 2).backward()
            save_file({f"grad.{n}": p.grad.contiguous() for n, p in model.named_parameters()},
                      os.path.join(d, "eval.safetensors"), metadata={"made_by": meta["made_by"]})
            model.zero_grad(set_to_none=True)
            model.train()
            for m in model.modules():
                if isinstance(m, nn.Dropout):
                    m.eval()
            logits = model(x)
            (logits.pow(2).sum() / 2).backward()
            np.save(os.path.join(d, "train.npy"), logits.detach().numpy().astype(np.float32))
            result = {f"grad.{n}": p.grad.contiguous() for n, p in model.named_parameters()}
            result.update({f"after.{n}": t.contiguous().float() for n, t in model.state_dict().items()
                           if "running" in n or "num_batches" in n})
            save_file(result, os.path.join(d, "train.safetensors"), metadata={"made_by": meta["made_by"]})
    # torchvision's adaptive pool: vgg11_bn's pool5 (2x2 at 64x64) averaged to 3x3, windows
    # overlapping; the gradients of sum(logits^2)/2 in eval mode.
    torch.manual_seed(1)
    cfg = [v if v == "M" else v // 16 for v in CFGS["A"]]
    model = SmallVgg(cfg, hidden=32, classes=10, size=64, batch_norm=True, adaptive=3).eval()
    x = torch.randn(2, 3, 64, 64)
    d = os.path.join(out, "vgg11_bn-avgpool3")
    os.makedirs(d, exist_ok=True)
    meta = {"vgg.model": "vgg11_bn", "vgg.classes": "10", "vgg.hidden": "32", "vgg.width_mult": "0.0625",
            "vgg.in_channels": "3", "vgg.input": "64x64", "vgg.adaptive_pool": "3",
            "made_by": f"torch {torch.__version__}"}
    save_file({n: t.contiguous() for n, t in model.state_dict().items()},
              os.path.join(d, "weights.safetensors"), metadata=meta)
    np.save(os.path.join(d, "input.npy"), x.numpy().astype(np.float32))
    logits = model(x)
    (logits.pow(2).sum() / 2).backward()
    np.save(os.path.join(d, "eval.npy"), logits.detach().numpy().astype(np.float32))
    save_file({f"grad.{n}": p.grad.contiguous() for n, p in model.named_parameters()},
              os.path.join(d, "eval.safetensors"), metadata={"made_by": meta["made_by"]})
    print(f"wrote {out}: {sorted(os.listdir(out))}")


def torchvision_family(out):
    import torchvision
    torch.manual_seed(0)
    os.makedirs(out, exist_ok=True)
    x = torch.randn(1, 3, 224, 224)
    np.save(os.path.join(out, "input.npy"), x.numpy())
    # At 320x320 pool5 is 10x10, which the adaptive pool averages to 7x7 in overlapping windows.
    x320 = torch.randn(1, 3, 320, 320)
    np.save(os.path.join(out, "input320.npy"), x320.numpy())
    for base in FAMILY:
        for name in (base, base + "_bn"):
            model = getattr(torchvision.models, name)().eval()
            for m in model.modules():
                if isinstance(m, nn.BatchNorm2d):
                    randomise_batch_norm(m)
            with torch.no_grad():
                logits = model(x)
                np.save(os.path.join(out, f"{name}.logits320.npy"), model(x320).numpy())
            torch.save(model.state_dict(), os.path.join(out, f"{name}.pth"))
            np.save(os.path.join(out, f"{name}.logits.npy"), logits.numpy())
            print(f"wrote {out}/{name}.pth: torchvision {torchvision.__version__}, top-5 {logits.topk(5).indices.tolist()}")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("out", nargs="?", default="tests/fixtures/vgg11-w8")
    parser.add_argument("--torchvision", metavar="DIR")
    parser.add_argument("--classify", metavar="DIR")
    parser.add_argument("--pth", metavar="DIR")
    parser.add_argument("--explain", metavar="DIR")
    parser.add_argument("--family", metavar="DIR")
    args = parser.parse_args()
    if args.family:
        family_fixtures(args.family)
    elif args.explain:
        explain_fixture(args.explain)
    elif args.pth:
        pth_fixtures(args.pth)
    elif args.classify:
        classify_fixture(args.classify)
    elif args.torchvision:
        torchvision_family(args.torchvision)
    else:
        small_fixture(args.out)
