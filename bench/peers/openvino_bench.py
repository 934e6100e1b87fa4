#!/usr/bin/env python3
"""The reference's VGG-16 forward benchmark in OpenVINO, Intel's inference engine: the same network and
init as pytorch_bench.py, converted from PyTorch (openvino.convert_model), compiled for the CPU with the
inference precision asked for (OpenVINO picks bf16 by itself on CPUs that have it, so f32 is forced for
--precision f32). Inference only: forward-backward is skipped."""
import openvino as ov
import torch

import common
from pytorch_bench import vgg


def main():
    args = common.parse_args(__doc__)
    torch.manual_seed(0)
    model = vgg(args.model, args.batch_norm).eval()
    images = torch.randn(args.batch_size, 3, args.image_size, args.image_size) * 0.1
    converted = ov.convert_model(model, example_input=images)
    config = {"INFERENCE_PRECISION_HINT": "bf16" if args.precision == "bf16" else "f32",
              "PERFORMANCE_HINT": "LATENCY"}
    if args.threads:
        config["INFERENCE_NUM_THREADS"] = args.threads
    compiled = ov.Core().compile_model(converted, "CPU", config)
    print("OpenVINO %s on %s, inference precision %s" % (
        ov.__version__, compiled.get_property("EXECUTION_DEVICES"),
        compiled.get_property("INFERENCE_PRECISION_HINT")), flush=True)
    request = compiled.create_infer_request()
    data = images.numpy()

    def forward():
        request.infer({0: data})

    results = common.time_forward_only(args, forward, "OpenVINO")
    threads = compiled.get_property("INFERENCE_NUM_THREADS")
    # "2026.4.1-22982-e213a147257-releases/2026/4": the release number names it.
    common.write(args, "OpenVINO", ov.__version__.split("-")[0], threads, results)


if __name__ == "__main__":
    main()
