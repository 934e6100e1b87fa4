#!/usr/bin/env python3
"""`vgg train`'s run in PyTorch, for timing epochs side by side (`cargo xtask bench --training --peers`): the same
network (a VGG at a width multiplier, fc6/fc7 of `--hidden` units, ReLU, no dropout), the same data (the shipped
digits enlarged 4x to 32x32 and mapped to [-1, 1], or CIFAR-10's binary batches normalised by its channel means and
deviations), the same split sizes, batch, Adam (lr 2e-3, betas 0.9/0.999, eps 1e-8) and per-epoch cosine schedule,
and each epoch's time covering its training steps and the held-out evaluation, as `vgg train` reports it.
Only numbers from the standard library and PyTorch: no numpy, no torchvision."""
import argparse
import ast
import json
import math
import os
import struct
import time

import torch
import torch.nn as nn

from common import CONFIGS
CIFAR_MEAN = [0.4914, 0.4822, 0.4465]
CIFAR_STD = [0.2470, 0.2435, 0.2616]


def parse_args():
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--dataset", choices=["digits", "cifar10"], default="digits")
    p.add_argument("--data", help="the digits' directory (default: the repository's data/digits) or CIFAR-10's")
    p.add_argument("--model", choices=sorted(CONFIGS), default="vgg11")
    p.add_argument("--width-mult", type=float, default=0.25)
    p.add_argument("--hidden", type=int, default=128)
    p.add_argument("--epochs", type=int, default=3)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--lr", type=float, default=2e-3)
    p.add_argument("--test-fraction", type=float, default=0.2)
    p.add_argument("--threads", type=int, default=0, help="0: PyTorch's default")
    p.add_argument("--memory-format", choices=["contiguous", "channels_last"], default="contiguous")
    p.add_argument("--json", help="write every epoch's time here")
    return p.parse_args()


def load_npy(path):
    """A little-endian f32 .npy file as a tensor."""
    with open(path, "rb") as f:
        raw = f.read()
    header_len = struct.unpack("<H", raw[8:10])[0]
    header = ast.literal_eval(raw[10:10 + header_len].decode("latin1"))
    if header["descr"] != "<f4" or header["fortran_order"]:
        raise SystemExit("%s: expected little-endian f32 in C order" % path)
    return torch.frombuffer(bytearray(raw[10 + header_len:]), dtype=torch.float32).reshape(header["shape"])


def digits(directory, test_fraction, generator):
    images = load_npy(os.path.join(directory, "digits-images.npy"))
    labels = load_npy(os.path.join(directory, "digits-labels.npy")).long()
    # Grey levels 0..16 to [-1, 1], each pixel a 4x4 block, as `vgg train` does.
    images = (images / 8.0 - 1.0).repeat_interleave(4, 2).repeat_interleave(4, 3).contiguous()
    order = torch.randperm(len(images), generator=generator)
    test = round(len(images) * test_fraction)
    return (images[order[test:]], labels[order[test:]]), (images[order[:test]], labels[order[:test]])


def cifar_file(path):
    with open(path, "rb") as f:
        raw = torch.frombuffer(bytearray(f.read()), dtype=torch.uint8).reshape(-1, 3073)
    labels = raw[:, 0].long()
    images = raw[:, 1:].float().reshape(-1, 3, 32, 32) / 255.0
    mean = torch.tensor(CIFAR_MEAN).reshape(1, 3, 1, 1)
    std = torch.tensor(CIFAR_STD).reshape(1, 3, 1, 1)
    return (images - mean) / std, labels


def cifar10(directory):
    parts = [cifar_file(os.path.join(directory, "data_batch_%d.bin" % i)) for i in range(1, 6)]
    train = (torch.cat([p[0] for p in parts]), torch.cat([p[1] for p in parts]))
    return train, cifar_file(os.path.join(directory, "test_batch.bin"))


def network(name, width_mult, hidden, channels, side, classes):
    layers, c = [], channels
    for v in CONFIGS[name]:
        if v == "M":
            layers.append(nn.MaxPool2d(2, 2))
            side //= 2
        else:
            # `vgg`'s width rule: rounded half away from zero, at least 1.
            out = max(1, math.floor(v * width_mult + 0.5))
            layers += [nn.Conv2d(c, out, 3, padding=1), nn.ReLU(inplace=True)]
            c = out
    return nn.Sequential(*layers, nn.Flatten(),
                         nn.Linear(c * side * side, hidden), nn.ReLU(True),
                         nn.Linear(hidden, hidden), nn.ReLU(True),
                         nn.Linear(hidden, classes))


def main():
    args = parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    generator = torch.Generator().manual_seed(0)
    if args.dataset == "digits":
        here = os.path.dirname(os.path.abspath(__file__))
        directory = args.data or os.path.join(here, "..", "..", "data", "digits")
        (train_x, train_y), (test_x, test_y) = digits(directory, args.test_fraction, generator)
        classes = 10
    else:
        if not args.data:
            raise SystemExit("--dataset cifar10 needs --data DIR (CIFAR-10's binary version)")
        (train_x, train_y), (test_x, test_y) = cifar10(args.data)
        classes = 10
    memory_format = torch.channels_last if args.memory_format == "channels_last" else torch.contiguous_format
    _, channels, side, _ = train_x.shape
    model = network(args.model, args.width_mult, args.hidden, channels, side, classes).to(
        memory_format=memory_format)
    parameters = sum(p.numel() for p in model.parameters())
    optimiser = torch.optim.Adam(model.parameters(), lr=args.lr, betas=(0.9, 0.999), eps=1e-8)
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimiser, args.epochs)
    loss_of = nn.CrossEntropyLoss()
    print("PyTorch %s, %d threads, %s, %s at width %g (%d parameters), %d training and %d test images" % (
        torch.__version__, torch.get_num_threads(), args.memory_format, args.model, args.width_mult, parameters,
        len(train_x), len(test_x)), flush=True)
    epochs = []
    for epoch in range(args.epochs):
        start = time.time()
        model.train()
        order = torch.randperm(len(train_x), generator=generator)
        loss_sum = 0.0
        for first in range(0, len(order), args.batch_size):
            batch = order[first:first + args.batch_size]
            x = train_x[batch].contiguous(memory_format=memory_format)
            optimiser.zero_grad(set_to_none=True)
            loss = loss_of(model(x), train_y[batch])
            loss.backward()
            optimiser.step()
            loss_sum += loss.item() * len(batch)
        model.eval()
        correct = 0
        with torch.no_grad():
            for first in range(0, len(test_x), args.batch_size):
                x = test_x[first:first + args.batch_size].contiguous(memory_format=memory_format)
                correct += (model(x).argmax(1) == test_y[first:first + args.batch_size]).sum().item()
        schedule.step()
        seconds = time.time() - start
        epochs.append({"epoch": epoch + 1, "seconds": seconds, "train_loss": loss_sum / len(train_x),
                       "test_accuracy": correct / len(test_x)})
        print("epoch %d/%d: train loss %.4f, test accuracy %.2f%% (%.2f s)" % (
            epoch + 1, args.epochs, loss_sum / len(train_x), 100.0 * correct / len(test_x), seconds), flush=True)
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"schema": "vgg-peer-train/1", "framework": "PyTorch", "version": torch.__version__,
                       "threads": torch.get_num_threads(), "memory_format": args.memory_format,
                       "dataset": args.dataset, "model": args.model, "width_mult": args.width_mult,
                       "hidden": args.hidden, "batch": args.batch_size, "parameters": parameters,
                       "train_images": len(train_x), "test_images": len(test_x), "epochs": epochs}, f, indent=2)


if __name__ == "__main__":
    main()
