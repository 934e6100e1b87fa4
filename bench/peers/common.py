"""The reference's timing loop and output, shared by the peer benchmarks."""
import argparse
import json
import math
import statistics
import time
from datetime import datetime

# The convolution widths of torchvision's VGG configurations ("M": a 2x2 max-pool), as `vgg summary` lists them.
CONFIGS = {
    "vgg11": [64, "M", 128, "M", 256, 256, "M", 512, 512, "M", 512, 512, "M"],
    "vgg13": [64, 64, "M", 128, 128, "M", 256, 256, "M", 512, 512, "M", 512, 512, "M"],
    "vgg16": [64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512, "M"],
    "vgg19": [64, 64, "M", 128, 128, "M", 256, 256, 256, 256, "M", 512, 512, 512, 512, "M",
              512, 512, 512, 512, "M"],
}


def parse_args(description):
    p = argparse.ArgumentParser(description=description)
    p.add_argument("--model", choices=sorted(CONFIGS), default="vgg16",
                   help="the network (the reference times vgg16)")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--num-batches", type=int, default=100)
    p.add_argument("--burn-in", type=int, default=10)
    p.add_argument("--image-size", type=int, default=224)
    p.add_argument("--mode", choices=["forward", "forward-backward", "both"], default="both")
    p.add_argument("--threads", type=int, default=0, help="0: the framework's default")
    p.add_argument("--json", help="write the summary here")
    p.add_argument("--device", default="cpu", help="PyTorch only: cpu or cuda")
    p.add_argument("--memory-format", choices=["contiguous", "channels_last"], default="contiguous",
                   help="PyTorch only: NCHW (contiguous) or NHWC (channels_last) tensors")
    p.add_argument("--batch-norm", action="store_true",
                   help="BatchNorm after every convolution (torchvision's vgg16_bn and kin; eval mode for "
                        "forward, train mode for forward-backward); not in TensorFlow's port")
    p.add_argument("--precision", choices=["f32", "bf16"], default="f32",
                   help="the arithmetic: f32, or bf16 (PyTorch: autocast to bfloat16; OpenVINO: "
                        "bf16 inference precision)")
    return p.parse_args()


def modes(args):
    return ["forward", "forward-backward"] if args.mode == "both" else [args.mode]


def time_run(step, label, args):
    """The reference's loop: burn-in, then timed steps; every timed step counts."""
    durations = []
    for i in range(args.num_batches + args.burn_in):
        start = time.time()
        step()
        duration = time.time() - start
        if i >= args.burn_in:
            if not (i - args.burn_in) % 10:
                print("%s: step %d, duration = %.3f" % (datetime.now(), i - args.burn_in, duration), flush=True)
            durations.append(duration)
    mean = sum(durations) / len(durations)
    sd = math.sqrt(max(sum(d * d for d in durations) / len(durations) - mean * mean, 0.0))
    print("%s: %s across %d steps, %.3f +/- %.3f sec/batch" % (datetime.now(), label, len(durations), mean, sd), flush=True)
    ordered = sorted(durations)
    p90_at = 0.9 * (len(ordered) - 1)
    lo, hi = math.floor(p90_at), math.ceil(p90_at)
    return {
        "steps": len(durations), "mean": mean, "sd": sd, "median": statistics.median(durations),
        "min": ordered[0], "max": ordered[-1], "p90": ordered[lo] + (ordered[hi] - ordered[lo]) * (p90_at - lo),
        "step_seconds": durations,
    }


def time_forward_only(args, forward, engine):
    """The forward mode of an inference engine, with its peak memory; forward-backward is skipped, said so."""
    results = {}
    for mode in modes(args):
        if mode != "forward":
            print("%s is an inference engine: %s skipped" % (engine, mode), flush=True)
            continue
        reset_peak_rss()
        results[mode] = time_run(forward, "Forward", args)
        results[mode]["peak_rss_bytes"] = peak_rss_bytes()
    return results


def softmax_argmax(logits):
    """The class of each row of logits (or of one vector), through softmax, as our forward computes it."""
    import numpy as np
    shifted = np.exp(logits - logits.max(axis=-1, keepdims=True))
    return (shifted / shifted.sum(axis=-1, keepdims=True)).argmax(axis=-1)


def peak_rss_bytes():
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        return None


def reset_peak_rss():
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
    except OSError:
        pass


def network(args):
    """The network run, named as `vgg bench --model` names it."""
    return args.model + ("_bn" if args.batch_norm else "")


def write(args, framework, version, threads, results):
    if args.json:
        with open(args.json, "w") as f:
            # Read by `vgg report` (crates/vgg-cli/src/report.rs) and `cargo xtask bench --peers`.
            json.dump({"schema": "vgg-peer-bench/1", "framework": framework, "version": version, "model": network(args),
                       "precision": args.precision, "threads": threads, "batch": args.batch_size, "image_size": args.image_size,
                       "burn_in": args.burn_in, "num_batches": args.num_batches, "modes": results}, f, indent=2)
