"""FID-Inception throughput on this machine: flowgen's JAX port vs the TorchScript model in PyTorch, side by side.

    python benchmarks/fid_inception.py --torch-python /path/to/venv-with-torch/bin/python [--batch 16 --rounds 5]

Both sides compute (N, 2048) pool features of the same uint8 batch of 299×299 images (no resize), float32, on the
CPU with every thread they get by default. flowgen runs ``inception.features`` in this process (jit, data-parallel
over ``jax.devices()``); PyTorch runs ``torch.jit.load(default_1.pt)`` under ``torch.no_grad()`` in a worker
subprocess started with ``--torch-python`` (torch is no flowgen dependency). After one warm-up call on each side,
the rounds alternate flowgen, torch, flowgen, torch, …, so a shared machine's drift hits both alike; reported are
images/s from the median round, the ratio flowgen / torch (target ≥ 1) and each round's ratio, with the machine's
float32 matmul GFLOP/s (2048² matmul in JAX), the GFLOP/s each side reaches at ~5.7 GFLOPs per image (2 × 2.85 G
MACs), ``uptime``'s load before and after, and how far flowgen's features are from torch's (max relative).
Writes ``results/benchmarks/fid_inception-<UTC time>.json`` (never overwrites); prints a Markdown table.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time

import jax
import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import common  # noqa: E402

from flowgen.evals import inception, inception_weights  # noqa: E402

GFLOP_PER_IMAGE = 5.71        # 2 × multiply-adds of the convolutions at 299² (2.85 G MACs)

TORCH_WORKER = r"""
import sys, time, numpy as np, torch
torch.set_grad_enabled(False)
model = torch.jit.load(sys.argv[1], map_location="cpu").eval()
images = np.load(sys.argv[2])
x = torch.from_numpy(images).permute(0, 3, 1, 2).float() / 128 - 1
model(x)                                           # warm-up (TorchScript profiling runs)
np.save(sys.argv[3], model(x).numpy())
print(json.dumps({"torch": torch.__version__, "threads": torch.get_num_threads()}), flush=True)
for line in sys.stdin:
    start = time.perf_counter()
    out = model(x)
    print(time.perf_counter() - start, flush=True)
""".replace("import sys,", "import json, sys,")


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--torch-python", default=None, help="a Python with torch installed (else flowgen only)")
    parser.add_argument("--weights", default=None, help="default_1.pt (default: fetch into the cache)")
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--out-dir", default=None)
    args = parser.parse_args()

    load_before, uptime_before = common.load_average(), common.uptime()
    print(f"before: {uptime_before}", flush=True)
    weights = args.weights or str(inception_weights.fetch())
    images = np.random.default_rng(0).integers(0, 256, (args.batch, 299, 299, 3), dtype=np.uint8)
    params = inception.load_params(weights)
    params_dev = jax.device_put(params)
    run_jax = lambda: inception.features(params_dev, images, batch_size=args.batch)
    start = time.perf_counter()
    ours = run_jax()
    compile_s = time.perf_counter() - start

    worker, torch_info = None, None
    if args.torch_python:
        with tempfile.TemporaryDirectory() as tmp:
            np.save(os.path.join(tmp, "images.npy"), images)
            worker, torch_info = common.start_worker(args.torch_python, TORCH_WORKER, weights,
                                                     os.path.join(tmp, "images.npy"), os.path.join(tmp, "features.npy"))
            theirs = np.load(os.path.join(tmp, "features.npy"))

    jax_s, torch_s = common.interleaved_rounds(run_jax, worker, args.rounds)
    load_after, uptime_after = common.load_average(), common.uptime()
    print(f"after:  {uptime_after}", flush=True)

    gflops = common.matmul_peak_gflops()
    jax_ips = args.batch / common.median(jax_s)
    rows = [["flowgen (JAX)", f"{jax_ips:.2f}", f"{jax_ips * GFLOP_PER_IMAGE:.1f}", f"{min(jax_s):.2f}"]]
    result = {"batch": args.batch, "rounds": args.rounds, "matmul_gflops": gflops, "jax_seconds": jax_s,
              "jax_images_per_s": jax_ips, "jax_first_call_s": compile_s, "torch": torch_info,
              "finite": bool(np.isfinite(ours).all()), "load_before": load_before, "load_after": load_after,
              "uptime_before": uptime_before, "uptime_after": uptime_after}
    if torch_s:
        torch_ips = args.batch / common.median(torch_s)
        rows.append([f"TorchScript (torch {torch_info['torch']}, {torch_info['threads']} threads)",
                     f"{torch_ips:.2f}", f"{torch_ips * GFLOP_PER_IMAGE:.1f}", f"{min(torch_s):.2f}"])
        result |= {"torch_seconds": torch_s, "torch_images_per_s": torch_ips, "ratio": jax_ips / torch_ips,
                   "round_ratios": [t / j for j, t in zip(jax_s, torch_s, strict=True)],
                   "max_rel_diff_vs_torch": float(np.abs(ours - theirs).max() / np.abs(theirs).max())}
    print(f"FID Inception-v3, {args.batch} images of 299², {args.rounds} interleaved rounds; "
          f"machine: {gflops:.1f} GFLOP/s float32 matmul (JAX), {os.cpu_count()} CPUs, {jax.device_count()} "
          f"JAX device(s); load average before {load_before}, after {load_after}\n")
    print(common.markdown_table(["", "images/s (median round)", "GFLOP/s", "best round s"], rows))
    if torch_s:
        print(f"\nratio flowgen / torch: {result['ratio']:.2f} (median rounds); single rounds: "
              f"{', '.join(f'{r:.2f}' for r in result['round_ratios'])}; features agree to "
              f"{result['max_rel_diff_vs_torch']:.1e} (max relative)")
    path = common.write_json("fid_inception", {"result": result, "environment": common.environment(),
                                               "time": common.now_utc()}, args.out_dir)
    print(f"\nwrote {path}")


if __name__ == "__main__":
    main()
