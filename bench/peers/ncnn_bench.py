#!/usr/bin/env python3
"""The reference's VGG-16 forward benchmark in ncnn, Tencent's inference engine: the same network and init as
pytorch_bench.py, converted by pnnx (TorchScript to ncnn's param/bin) and run by ncnn's Python binding on the
CPU in f32 (its fp16 and bf16 storage and arithmetic turned off; Winograd and packed layouts on, its defaults).
ncnn runs one image at a time: a batch of N is N runs. Softmax and argmax follow on the host, as in our forward.
Inference only: forward-backward is skipped; f32 only (--precision bf16 is refused)."""
import os
import sys
import tempfile

import ncnn
import numpy as np
import pnnx
import torch

import common
from pytorch_bench import vgg


class Named(torch.nn.Module):
    def __init__(self, net):
        super().__init__()
        self.net = net

    def forward(self, x):
        return self.net(x)


def main():
    args = common.parse_args(__doc__)
    if args.precision != "f32":
        sys.exit("ncnn_bench.py runs f32 only")
    torch.manual_seed(0)
    model = vgg(args.model, args.batch_norm).eval()
    images = torch.randn(args.batch_size, 3, args.image_size, args.image_size) * 0.1
    net = ncnn.Net()
    net.opt.use_vulkan_compute = False
    net.opt.use_fp16_packed = False
    net.opt.use_fp16_storage = False
    net.opt.use_fp16_arithmetic = False
    net.opt.use_bf16_storage = False
    threads = args.threads or os.cpu_count()
    net.opt.num_threads = threads
    with tempfile.TemporaryDirectory() as tmp:
        traced = os.path.join(tmp, "vgg.pt")
        # pnnx writes vgg.ncnn.param and vgg.ncnn.bin beside the TorchScript file; its Python
        # listing names modules by path, which a bare Sequential's "0", "1" ... cannot be.
        pnnx.export(Named(model), traced, (images[:1],))
        base = os.path.join(tmp, "vgg.ncnn")
        if net.load_param(base + ".param") or net.load_model(base + ".bin"):
            sys.exit("ncnn could not load the converted model")
        with open(base + ".param") as f:
            names = f.read().split()
    # pnnx names the graph's input in0 and its output out0.
    input_name, output_name = "in0", "out0"
    if input_name not in names or output_name not in names:
        sys.exit("the converted model has no in0/out0 blobs")
    print("ncnn %s, %d threads, f32 (fp16/bf16 off), one image at a time" % (ncnn.__version__, threads), flush=True)
    batch = [ncnn.Mat(images[i].numpy().copy()) for i in range(args.batch_size)]

    def forward():
        for image in batch:
            with net.create_extractor() as ex:
                ex.input(input_name, image)
                _, out = ex.extract(output_name)
                common.softmax_argmax(np.array(out))

    results = common.time_forward_only(args, forward, "ncnn")
    common.write(args, "ncnn", ncnn.__version__, threads, results)


if __name__ == "__main__":
    main()
