"""Autoencoder encoding throughput on this machine: flowgen's Flax KL autoencoder vs diffusers in PyTorch, side by side.

    python benchmarks/autoencoder_encode.py --torch-python /path/to/venv-with-torch-and-diffusers/bin/python \
        [--config sd_vae_ft_mse --size 256 --batch 2 --rounds 5]

Both sides encode the same batch of (B, size, size, 3) images in [−1, 1] to the posterior mean and std with the
full-size architecture (``flowgen/autoencoders/configs/<config>.json``) and the same random weights, float32, on the
CPU with every thread they get by default: the PyTorch worker (a subprocess of ``--torch-python``; torch and
diffusers are no flowgen dependencies) builds ``AutoencoderKL(**config)`` with seed 0 and saves it with
``save_pretrained`` into a temporary folder, which flowgen loads with ``from_pretrained`` (the real conversion). The
two posteriors are compared (max |diff| / max |reference|). After one warm-up call each (flowgen's compiles), rounds
alternate flowgen, torch, flowgen, torch, …, so a shared machine's drift hits both alike. Reported: images/s of the
median round, the ratio flowgen / torch (target ≥ 1), the GFLOP/s each reaches (FLOPs per image from XLA's cost
analysis of the encoder), the machine's float32 matmul peak (as in ``train.py --part peak``) and the load average
(``uptime``) before and after. Writes ``results/benchmarks/autoencoder_encode-<UTC time>.json``.
"""

from __future__ import annotations

import argparse
import functools
import os
import sys
import tempfile
import time

import jax
import jax.numpy as jnp
import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import common  # noqa: E402

from flowgen import autoencoders  # noqa: E402

TORCH_WORKER = r"""
import json, sys, time, numpy as np, torch
import diffusers, diffusers.utils.import_utils as iu
try:
    import torchvision  # noqa: F401
except Exception:            # a torchvision built for another torch: diffusers does not need it here
    iu._torchvision_available = False
from diffusers import AutoencoderKL
config_path, folder, images_path = sys.argv[1:4]
torch.set_grad_enabled(False)
torch.manual_seed(0)
cfg = {k: v for k, v in json.load(open(config_path)).items() if not k.startswith("_")}
vae = AutoencoderKL(**cfg).eval()
vae.save_pretrained(folder, safe_serialization=True)
x = torch.from_numpy(np.load(images_path)).permute(0, 3, 1, 2).contiguous()
def encode():
    dist = vae.encode(x).latent_dist
    return dist.mean, dist.std
mean, std = encode()                                  # warm-up
np.save(folder + "/torch_mean.npy", mean.permute(0, 2, 3, 1).numpy())
np.save(folder + "/torch_std.npy", std.permute(0, 2, 3, 1).numpy())
print(json.dumps({"torch": torch.__version__, "diffusers": diffusers.__version__,
                  "threads": torch.get_num_threads()}), flush=True)
for line in sys.stdin:
    start = time.perf_counter()
    encode()
    print(time.perf_counter() - start, flush=True)
"""


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--torch-python", default=None, help="a Python with torch and diffusers (else flowgen only)")
    parser.add_argument("--config", default="sd_vae_ft_mse", choices=autoencoders.FULL_SIZE)
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--out-dir", default=None)
    args = parser.parse_args()

    load_before, uptime_before = common.load_average(), common.uptime()
    print(f"before: {uptime_before}", flush=True)
    images = np.random.default_rng(0).uniform(-1, 1, (args.batch, args.size, args.size, 3)).astype(np.float32)
    config_path = autoencoders.config.CONFIG_DIR / f"{args.config}.json"
    tmp = tempfile.TemporaryDirectory()
    worker, torch_info, agreement = None, None, None
    if args.torch_python:
        np.save(os.path.join(tmp.name, "images.npy"), images)
        worker, torch_info = common.start_worker(args.torch_python, TORCH_WORKER, str(config_path), tmp.name,
                                                 os.path.join(tmp.name, "images.npy"))
        vae = autoencoders.from_pretrained(tmp.name)
    else:                                             # random weights of the same architecture
        cfg = autoencoders.config_from_dict(autoencoders.full_size_config(args.config))
        module = autoencoders.KLAutoencoder(cfg)
        params = jax.jit(module.init)(jax.random.key(0), jnp.zeros((1, 8, 8, 3)))
        vae = autoencoders.Autoencoder(cfg, params)

    x = jax.device_put(images)
    run_jax = lambda: vae.encode(x)
    start = time.perf_counter()
    mean, std = jax.block_until_ready(run_jax())
    first_call_s = time.perf_counter() - start
    encode = jax.jit(functools.partial(vae.module.apply, method="encode"))
    flops = encode.lower(vae.params, x).compile().cost_analysis()
    flops = flops[0] if isinstance(flops, list) else flops
    gflop_per_image = float(flops.get("flops", 0.0)) / args.batch / 1e9
    if worker:
        err = lambda a, b: float(np.abs(np.asarray(a, np.float64) - b).max() / np.abs(b).max())
        torch_mean, torch_std = (np.load(os.path.join(tmp.name, f"torch_{k}.npy")) for k in ("mean", "std"))
        # the sums say which side changed if two runs ever disagree (both sides are deterministic run to run)
        agreement = {"mean": err(mean, torch_mean), "std": err(std, torch_std),
                     "sums": {"jax_mean": float(np.sum(mean, dtype=np.float64)),
                              "jax_std": float(np.sum(std, dtype=np.float64)),
                              "torch_mean": float(np.sum(torch_mean, dtype=np.float64)),
                              "torch_std": float(np.sum(torch_std, dtype=np.float64))}}

    jax_s, torch_s = common.interleaved_rounds(run_jax, worker, args.rounds)
    tmp.cleanup()

    gflops = common.matmul_peak_gflops()
    load_after, uptime_after = common.load_average(), common.uptime()
    jax_ips = args.batch / common.median(jax_s)
    rows = [["flowgen (Flax, XLA:CPU)", f"{jax_ips:.3f}", f"{jax_ips * gflop_per_image:.1f}", f"{min(jax_s):.2f}"]]
    result = {"config": args.config, "size": args.size, "batch": args.batch, "rounds": args.rounds,
              "gflop_per_image": gflop_per_image, "matmul_gflops": gflops, "jax_seconds": jax_s,
              "jax_images_per_s": jax_ips, "jax_first_call_s": first_call_s, "torch": torch_info,
              "load_before": load_before, "load_after": load_after, "uptime_before": uptime_before,
              "uptime_after": uptime_after, "max_rel_diff_vs_torch": agreement,
              "finite": bool(np.isfinite(np.asarray(mean)).all() and np.isfinite(np.asarray(std)).all())}
    if torch_s:
        torch_ips = args.batch / common.median(torch_s)
        rows.append([f"diffusers {torch_info['diffusers']} (torch {torch_info['torch']}, "
                     f"{torch_info['threads']} threads)", f"{torch_ips:.3f}", f"{torch_ips * gflop_per_image:.1f}",
                     f"{min(torch_s):.2f}"])
        result |= {"torch_seconds": torch_s, "torch_images_per_s": torch_ips, "ratio": jax_ips / torch_ips,
                   "ratio_per_round": [t / j for j, t in zip(jax_s, torch_s, strict=True)]}
    print(f"\n{args.config} encoder, {args.batch} images of {args.size}², {args.rounds} interleaved rounds, "
          f"{gflop_per_image:.0f} GFLOP per image; machine: {gflops:.1f} GFLOP/s float32 matmul (JAX), "
          f"{os.cpu_count()} CPUs; load average before {load_before}, after {load_after}\n")
    print(common.markdown_table(["", "images/s (median round)", "GFLOP/s", "best round s"], rows))
    if torch_s:
        print(f"\nratio flowgen / torch: {result['ratio']:.2f} (rounds: "
              + ", ".join(f"{r:.2f}" for r in result["ratio_per_round"]) + ")")
        print(f"flowgen vs diffusers on the same weights: max rel diff mean {agreement['mean']:.1e}, "
              f"std {agreement['std']:.1e}")
    path = common.write_json("autoencoder_encode", {"result": result, "environment": common.environment(),
                                                    "time": common.now_utc()}, args.out_dir)
    print(f"\nwrote {path}")


if __name__ == "__main__":
    main()
