"""Reproduction: Tong et al. 2023 ("Improving and generalizing flow-based generative models with minibatch optimal
transport"), the 2-D table — W2 and normalised path energy of I-CFM, OT-CFM, SB-CFM, FM (Lipman) and 2-RF on four
tasks, flowgen beside the authors' own library (torchcfm, PyTorch) under one protocol.

    python -m experiments.reproductions.tong_2d --workdir results/tong_2d --steps 2000   # flowgen (resumable)
    /path/to/torch-venv/bin/python experiments/reproductions/tong_2d_torchcfm.py --workdir results/tong_2d --steps 2000
    python -m experiments.reproductions.tong_2d --workdir results/tong_2d --report       # tong_2d.md from both

(``tong_2d.md`` was made so; leave out ``--steps`` for the runner's 20,000.)

Measured (2026-12-06, both libraries at once on the 2-core CPU, one core each): ``--steps 2000`` with the five
seeds took 64 min of training for flowgen's 95 runs and 65 min for torchcfm's; the default 20,000 steps would take
about 9 hours per library (the exact OT of OT-CFM and SB-CFM, ~27 ms per batch, dominates).

The first command trains every (task, method, seed) with flowgen's own training loop (``train_and_evaluate``, one
workdir each), solves its Euler trajectory from the evaluation points and writes it to
``runs/<task>/<method>/flowgen-<seed>-<steps>.npz`` (with the training seconds); it also writes ``protocol/`` — the
evaluation points and every training batch of the target (and source) data as arrays, so the torchcfm script (in
its own environment; torch is never a flowgen dependency) trains on exactly the same batches and is scored on the
same points. A run already written is skipped.

Protocol (the authors' runner, ``runner/configs/{experiment/cfm,model/*}.yaml``): network 3×64 SELU with t
concatenated to x (torchcfm's ``MLP``: ``model.kwargs = {"hidden": 64, "depth": 3, "time_embedding": "concat",
"activation": "selu"}``, 8,706 parameters both sides), AdamW lr 1e-3, weight decay 1e-5, no warm-up, no clipping,
no EMA (the raw parameters are scored), batch 512, σ = 0.1; t ~ U[0, 1]. Scored on 1000 held-out points: Euler with
100 steps from 1000 source points, W2 by exact EMD between the samples and the held-out target points, path energy
PE = mean Σ_k ‖x_{k+1} − x_k‖²/Δt along the Euler trajectory (exactly the Euler integral of ‖v‖², as torchcfm's
runner accumulates it), NPE = |PE − W2²(q₀, q₁)| / W2²(q₀, q₁) with W2² by exact EMD between ``REF_POINTS`` source
and target points.

Methods:
    icfm    I-CFM: independent pairs, x_t = t·x₁ + (1 − t)·x₀ + σ·ε, target x₁ − x₀ (``method.name = "cfm"``)
    otcfm   OT-CFM: the same on exact minibatch-OT pairs (``loss.coupling = "ot"``, POT's network simplex)
    sbcfm   SB-CFM: s(t) = σ·sqrt(t(1 − t)) (``method.kwargs.noise = "bridge"``) on OT pairs (flowgen/methods/cfm.py)
    fm      Lipman et al.'s flow matching: linear path with σ_min = 0.1 (``path.kwargs.sigma_min``), Gaussian source
            only (as in the authors' script)
    2rf     2-rectified flow: I-CFM for half the steps, then the same network fine-tuned for the other half on
            pairs (x₀, Φ(x₀)) of the frozen first stage (Euler, 100 steps; one fresh pair per training example,
            as the runner's on-the-fly reflow draws them)

Tasks (flowgen's toy sets; the runner's data differ in scale, see the report): N → 8gaussians (8 Gaussians of std 1
on a circle of radius 5), moons → 8gaussians, N → moons (noise 0.05), N → scurve.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[2]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

SIGMA = 0.1
BATCH = 512
EVAL_POINTS = 1000
EULER_STEPS = 100
REF_POINTS = 4000
EVAL_SEED = 10_000            # evaluation points of seed s: keys EVAL_SEED + s (source) and 2·EVAL_SEED + s (target)
SOURCE_SEED = 5_000           # a non-Gaussian source's batches of seed s come from toy seed SOURCE_SEED + s

EIGHT = ("circle", {"num_components": 8, "radius": 5.0, "std": 1.0})
MOONS = ("moons", {"noise": 0.05})
TASKS = {
    "N-8gaussians": (("gaussian", {}), EIGHT),
    "moons-8gaussians": (MOONS, EIGHT),
    "N-moons": (("gaussian", {}), MOONS),
    "N-scurve": (("gaussian", {}), ("scurve", {"noise": 0.05})),
}
METHODS = ("icfm", "otcfm", "sbcfm", "fm", "2rf")
SEEDS = (42, 43, 44, 45, 46)


def gaussian_source(task: str) -> bool:
    return TASKS[task][0][0] == "gaussian"


def methods_for(task: str) -> tuple[str, ...]:
    return METHODS if gaussian_source(task) else tuple(m for m in METHODS if m != "fm")


# ------------------------------------------------------------------------------------------------------ configs

def run_config(task: str, method: str, seed: int, steps: int, stage: str = ""):
    """flowgen's config for one run (``stage`` "rf1" / "rf2" for the two halves of 2-RF)."""
    from flowgen.train.config import base_config

    (source, source_kwargs), (target, target_kwargs) = TASKS[task]
    c = base_config()
    c.seed = seed
    c.data.name, c.data.kwargs, c.data.batch_size = target, dict(target_kwargs), BATCH
    c.source.name, c.source.kwargs = source, dict(source_kwargs)
    c.model.kwargs = {"hidden": 64, "depth": 3, "time_embedding": "concat", "activation": "selu"}
    c.method.name, c.method.kwargs = "cfm", {"sigma": SIGMA, "noise": "constant"}
    if method in ("otcfm", "sbcfm"):
        c.loss.coupling, c.loss.coupling_options = "ot", {"solver": "emd"}
    if method == "sbcfm":
        c.method.kwargs = {"sigma": SIGMA, "noise": "bridge"}
    if method == "fm":
        c.method.name, c.method.kwargs = "flow_matching", {}
        c.path.kwargs = {"sigma_min": SIGMA}
    c.optim.update({"name": "adamw", "lr": 1e-3, "weight_decay": 1e-5, "warmup_steps": 0, "grad_clip": 0.0})
    c.sample.ema = "params"
    c.train.update({"num_steps": steps, "log_every": max(steps // 4, 1), "checkpoint_every": steps,
                    "sample_every": 0, "keep_checkpoints": 1})
    if stage == "rf1":
        c.train.num_steps = steps // 2
        c.train.checkpoint_every = steps // 2
    return c


def reflow_config(task, seed, steps, first_stage: str, pairs: str):
    c = run_config(task, "2rf", seed, steps)
    c.data.name, c.data.kwargs = "pairs", {"file": pairs}
    c.source.name, c.source.kwargs = "gaussian", {}        # flowgen's rule: a pairs data set brings its own x₀
    c.loss.coupling = "given"
    c.train.num_steps = steps - steps // 2
    c.train.checkpoint_every = c.train.num_steps
    c.train.init_from, c.train.init_params = first_stage, "params"
    return c


# ------------------------------------------------------------------------------------------------------ data

def _toy(name, kwargs, seed, step, n):
    from flowgen.data import toy

    return np.asarray(toy.toy_batch(name, seed, step, n, **kwargs), np.float32)


def eval_points(task: str, seed: int, n: int = EVAL_POINTS) -> tuple[np.ndarray, np.ndarray]:
    """(source points, held-out target points), each (n, 2), of seed ``seed``."""
    import jax

    (source, skw), (target, tkw) = TASKS[task]
    x0 = (np.asarray(jax.random.normal(jax.random.key(EVAL_SEED + seed), (n, 2)), np.float32)
          if source == "gaussian" else _toy(source, skw, EVAL_SEED + seed, 0, n))
    return x0, _toy(target, tkw, 2 * EVAL_SEED + seed, 0, n)


def data_floor(task: str, seed: int) -> float:
    """W2 between the held-out target points of ``seed`` and another independent set of as many: what a perfect
    model scores (the floor of the W2 columns at this sample size)."""
    from flowgen.evals.sample_metrics import wasserstein2

    target, kwargs = TASKS[task][1]
    return wasserstein2(eval_points(task, seed)[1], _toy(target, kwargs, 3 * EVAL_SEED + seed, 0, EVAL_POINTS))


def reference_w2_squared(task: str) -> float:
    """W2²(q₀, q₁) by exact EMD between ``REF_POINTS`` source and target points (seed 0 of the evaluation keys)."""
    from flowgen.evals.sample_metrics import wasserstein2

    x0, x1 = eval_points(task, -1, REF_POINTS)
    return wasserstein2(x0, x1) ** 2


def write_protocol(out: Path, tasks, seeds, steps: int) -> None:
    """Everything the torchcfm side needs: evaluation points, the reference W2², and every training batch."""
    import jax
    import jax.numpy as jnp

    from flowgen.data import toy

    out.mkdir(parents=True, exist_ok=True)
    meta_file = out / "protocol.json"
    meta = json.loads(meta_file.read_text()) if meta_file.exists() else {}
    for task in tasks:
        if task not in meta.get("w2_squared", {}):
            meta.setdefault("w2_squared", {})[task] = reference_w2_squared(task)
        (source, skw), (target, tkw) = TASKS[task]
        for seed in seeds:
            f = out / f"{task}-{seed}-{steps}.npz"
            if f.exists():
                continue
            x0, x1 = eval_points(task, seed)
            draw = lambda name, kw, s: np.asarray(jax.jit(jax.vmap(  # noqa: E731
                lambda k: toy.toy_batch(name, s, k, BATCH, **kw)))(jnp.arange(steps)), np.float32)
            arrays = {"eval_x0": x0, "eval_x1": x1, "train_x1": draw(target, tkw, seed)}
            if source != "gaussian":
                arrays["train_x0"] = draw(source, skw, SOURCE_SEED + seed)
            np.savez(f.with_suffix(".tmp.npz"), **arrays)
            os.replace(f.with_suffix(".tmp.npz"), f)
    meta.update({"sigma": SIGMA, "batch": BATCH, "euler_steps": EULER_STEPS, "eval_points": EVAL_POINTS,
                 "ref_points": REF_POINTS})
    meta_file.write_text(json.dumps(meta, indent=1))


# ------------------------------------------------------------------------------------------------------ scoring

def euler_trajectory(fn, x0: np.ndarray, steps: int = EULER_STEPS) -> np.ndarray:
    """Positions (steps + 1, n, 2) of dx/dt = v(x, t) by Euler on the uniform grid of [0, 1]."""
    import jax
    import jax.numpy as jnp

    times = jnp.linspace(0.0, 1.0, steps + 1)

    @jax.jit
    def solve(x):
        def step(x, k):
            t0, t1 = times[k], times[k + 1]
            x = x + (t1 - t0) * fn(x, jnp.full((x.shape[0],), t0, x.dtype))
            return x, x

        _, xs = jax.lax.scan(step, x, jnp.arange(steps))
        return jnp.concatenate([x[None], xs])

    return np.asarray(solve(jnp.asarray(x0)), np.float64)


def score(positions: np.ndarray, x1: np.ndarray, w2_squared_ref: float) -> dict:
    from flowgen.evals.sample_metrics import path_energy, wasserstein2

    times = np.linspace(0.0, 1.0, positions.shape[0])
    pe = path_energy(times, positions)
    return {"w2": wasserstein2(positions[-1], x1), "path_energy": pe,
            "npe": abs(pe - w2_squared_ref) / w2_squared_ref}


def _train(config, workdir: Path) -> float:
    from flowgen.train.loop import train_and_evaluate

    start = time.perf_counter()
    train_and_evaluate(config, str(workdir))
    return time.perf_counter() - start


def run_one(root: Path, task: str, method: str, seed: int, steps: int) -> tuple[np.ndarray, float]:
    """Train one run with flowgen; returns (the Euler trajectory of its evaluation points, training seconds)."""
    import flowgen as fg
    from flowgen import reflow

    work = root / "flowgen" / task / method / str(seed)
    if method == "2rf":
        first, pairs = work / "rf1", work / "pairs.npz"
        seconds = _train(run_config(task, method, seed, steps, stage="rf1"), first)
        start = time.perf_counter()
        if not pairs.exists():
            reflow.generate_pairs(str(first), str(pairs), num_pairs=BATCH * (steps - steps // 2), solver="euler",
                                  num_steps=EULER_STEPS, seed=seed, params="params")
        seconds += time.perf_counter() - start
        seconds += _train(reflow_config(task, seed, steps, str(first), str(pairs)), work / "rf2")
        model_dir = work / "rf2"
    else:
        seconds = _train(run_config(task, method, seed, steps), work)
        model_dir = work
    model = fg.load_model(str(model_dir), params="params")
    x0, _ = eval_points(task, seed)
    return euler_trajectory(model.fn, x0), seconds


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--workdir", default="results/tong_2d")
    ap.add_argument("--steps", type=int, default=20000, help="training steps per run (the runner: ~20k)")
    ap.add_argument("--seeds", default=",".join(map(str, SEEDS)))
    ap.add_argument("--tasks", default=",".join(TASKS))
    ap.add_argument("--methods", default=",".join(METHODS))
    ap.add_argument("--report", action="store_true", help="write the report from the runs found, train nothing")
    ap.add_argument("--out", default=str(Path(__file__).with_suffix(".md")), help="the report's file")
    args = ap.parse_args(argv)
    try:
        seeds = [int(s) for s in args.seeds.split(",")]
    except ValueError:
        ap.error(f"--seeds={args.seeds!r}: give integers separated by commas, e.g. 42,43,44")
    tasks, methods = args.tasks.split(","), args.methods.split(",")
    for bad, valid, what in ((set(tasks) - set(TASKS), TASKS, "--tasks"), (set(methods) - set(METHODS), METHODS,
                                                                             "--methods")):
        if bad:
            ap.error(f"{what}: unknown {sorted(bad)}; valid: {', '.join(valid)}")
    if args.steps < 2:
        ap.error(f"--steps={args.steps}: must be >= 2")
    root = Path(args.workdir)
    if args.report:
        from experiments.reproductions import tong_2d_report

        tong_2d_report.write(root, Path(args.out))
        print(f"wrote {args.out}")
        return 0
    write_protocol(root / "protocol", tasks, seeds, args.steps)
    w2ref = json.loads((root / "protocol" / "protocol.json").read_text())["w2_squared"]
    for seed in seeds:                 # seed by seed: an interrupted sweep leaves whole tables of fewer seeds
        for task in tasks:
            for method in (m for m in methods if m in methods_for(task)):
                out = root / "runs" / task / method / f"flowgen-{seed}-{args.steps}.npz"
                if out.exists():
                    continue
                positions, seconds = run_one(root, task, method, seed, args.steps)
                out.parent.mkdir(parents=True, exist_ok=True)
                np.savez(out.with_suffix(".tmp.npz"), positions=positions, train_seconds=seconds)
                os.replace(out.with_suffix(".tmp.npz"), out)
                result = score(positions, eval_points(task, seed)[1], w2ref[task])
                print(f"{task} {method} seed {seed}: W2 {result['w2']:.3f}, NPE {result['npe']:.3f}, "
                      f"{args.steps / seconds:.0f} steps/s", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
