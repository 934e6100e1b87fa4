#!/usr/bin/env python3
"""The reference's VGG-16 benchmark in PyTorch (--model: another VGG): same protocol, init, dropout and loss as `vgg bench`.
Forward: eval mode, no autograd, softmax and argmax. Forward-backward: train mode (dropout 0.5), gradients of
sum(fc8^2)/2 for every parameter, no optimiser step. --batch-norm: vgg16_bn (BatchNorm in eval mode forward,
on the batch's statistics in forward-backward). --precision bf16: both under
torch.autocast(dtype=torch.bfloat16), PyTorch's mixed precision (f32 weights and gradients)."""
import contextlib

import torch
import torch.nn as nn

import common


def vgg(name="vgg16", batch_norm=False):
    layers, c = [], 3
    for v in common.CONFIGS[name]:
        if v == "M":
            layers.append(nn.MaxPool2d(2, 2))
        else:
            layers.append(nn.Conv2d(c, v, 3, padding=1))
            if batch_norm:
                layers.append(nn.BatchNorm2d(v))
            layers.append(nn.ReLU(inplace=True))
            c = v
    model = nn.Sequential(*layers, nn.Flatten(),
                          nn.Linear(512 * 7 * 7, 4096), nn.ReLU(True), nn.Dropout(0.5),
                          nn.Linear(4096, 4096), nn.ReLU(True), nn.Dropout(0.5),
                          nn.Linear(4096, 1000))
    for m in model.modules():  # the reference's init: Xavier weights, conv biases 0, fc biases 0.1
        if isinstance(m, (nn.Conv2d, nn.Linear)):
            nn.init.xavier_uniform_(m.weight)
            nn.init.constant_(m.bias, 0.0 if isinstance(m, nn.Conv2d) else 0.1)
    return model


def main():
    args = common.parse_args(__doc__)
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    device = torch.device(args.device)
    # channels_last lets oneDNN (CPU) and cuDNN keep NHWC activations, often their fastest layout.
    memory_format = torch.channels_last if args.memory_format == "channels_last" else torch.contiguous_format
    model = vgg(args.model, args.batch_norm).to(device, memory_format=memory_format)
    params = list(model.parameters())
    images = (torch.randn(args.batch_size, 3, args.image_size, args.image_size) * 0.1).to(
        device, memory_format=memory_format)
    results = {}
    if device.type == "cuda":
        # PyTorch's defaults, stated: TF32 for cuDNN convolutions, full f32 for matrix products.
        print("GPU %s, cudnn.allow_tf32=%s, matmul.allow_tf32=%s" % (
            torch.cuda.get_device_name(device), torch.backends.cudnn.allow_tf32,
            torch.backends.cuda.matmul.allow_tf32), flush=True)

    def finish():
        # GPU work is queued: a step ends when the device has done it.
        if device.type == "cuda":
            torch.cuda.synchronize(device)

    def arithmetic():
        if args.precision == "bf16":
            return torch.autocast(device.type, dtype=torch.bfloat16)
        return contextlib.nullcontext()

    def forward():
        model.eval()
        with torch.no_grad(), arithmetic():
            torch.argmax(torch.softmax(model(images), 1), 1)
        finish()

    def forward_backward():
        model.train()
        with arithmetic():
            loss = model(images).float().pow(2).sum() / 2
        torch.autograd.grad(loss, params)
        finish()

    for mode in common.modes(args):
        common.reset_peak_rss()
        step, label = (forward, "Forward") if mode == "forward" else (forward_backward, "Forward-backward")
        results[mode] = common.time_run(step, label, args)
        results[mode]["peak_rss_bytes"] = common.peak_rss_bytes()
    framework = "PyTorch" if args.memory_format == "contiguous" else "PyTorch channels_last"
    common.write(args, framework, torch.__version__, torch.get_num_threads(), results)


if __name__ == "__main__":
    main()
