"""Digits-FID throughput: images/s of the classifier's features (jitted, batches of 1024) and of the whole
``digits_fid(images)`` call (features + float64 statistics + Fréchet distance), beside the machine's float32
matmul GFLOP/s so that the numbers can be compared across machines. Writes results/benchmarks/digits_fid-<UTC>.json.

    python benchmarks/digits_fid.py [--num-images 30000] [--rounds 5]
"""

from __future__ import annotations

import argparse
import os
import sys

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import common  # noqa: E402

from flowgen.evals import digits_fid  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--num-images", type=int, default=30000)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--out-dir", default=None)
    args = parser.parse_args()

    train = digits_fid.split_images("train")[0]
    images = np.resize(train, (args.num_images, 8, 8, 1))
    params = digits_fid.load_classifier()
    digits_fid.features(params, images[:2048])            # compile, and load the reference statistics once
    digits_fid.reference_stats()
    t_features = [common.time_call(lambda: digits_fid.features(params, images)) for _ in range(args.rounds)]
    t_fid = [common.time_call(lambda: digits_fid.digits_fid(images)) for _ in range(args.rounds)]
    gflops = common.matmul_peak_gflops()
    rows = [
        ["features", args.num_images, common.median(t_features), args.num_images / common.median(t_features)],
        ["digits_fid", args.num_images, common.median(t_fid), args.num_images / common.median(t_fid)],
    ]
    print(common.markdown_table(["what", "images", "median s", "images/s"], rows))
    print(f"\nfloat32 matmul peak: {gflops:.1f} GFLOP/s")
    payload = {
        "benchmark": "digits_fid",
        "time": common.now_utc(),
        "num_images": args.num_images,
        "rounds": args.rounds,
        "features_seconds": t_features,
        "digits_fid_seconds": t_fid,
        "features_images_per_s": rows[0][3],
        "digits_fid_images_per_s": rows[1][3],
        "matmul_gflops": gflops,
        "classifier_sha256": digits_fid.metadata()["sha256"],
        "environment": common.environment(),
    }
    print(f"wrote {common.write_json('digits_fid', payload, args.out_dir)}")


if __name__ == "__main__":
    main()
