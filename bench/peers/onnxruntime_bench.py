#!/usr/bin/env python3
"""The reference's VGG-16 forward benchmark in ONNX Runtime: the same network and init as pytorch_bench.py,
exported to ONNX by PyTorch (opset 17, a dynamic batch) and run by ONNX Runtime's CPU execution provider in f32,
with all graph optimisations. Softmax and argmax follow on the host, as in our forward. Inference only:
forward-backward is skipped; f32 only (--precision bf16 is refused)."""
import os
import sys
import tempfile

import onnxruntime as ort
import torch

import common
from pytorch_bench import vgg


def main():
    args = common.parse_args(__doc__)
    if args.precision != "f32":
        sys.exit("onnxruntime_bench.py runs f32 only")
    torch.manual_seed(0)
    model = vgg(args.model, args.batch_norm).eval()
    images = torch.randn(args.batch_size, 3, args.image_size, args.image_size) * 0.1
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "vgg.onnx")
        torch.onnx.export(model, (images,), path, opset_version=17, dynamo=False,
                          input_names=["images"], output_names=["logits"],
                          dynamic_axes={"images": {0: "batch"}, "logits": {0: "batch"}})
        options = ort.SessionOptions()
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        if args.threads:
            options.intra_op_num_threads = args.threads
        session = ort.InferenceSession(path, options, providers=["CPUExecutionProvider"])
    print("ONNX Runtime %s, providers %s, f32" % (ort.__version__, session.get_providers()), flush=True)
    data = images.numpy()

    def forward():
        common.softmax_argmax(session.run(None, {"images": data})[0])

    results = common.time_forward_only(args, forward, "ONNX Runtime")
    threads = args.threads or os.cpu_count()
    common.write(args, "ONNX Runtime", ort.__version__, threads, results)


if __name__ == "__main__":
    main()
