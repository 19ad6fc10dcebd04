"""Training throughput, measured (not a test). Three parts, each interleaved in rounds with medians reported:

``--part compare`` (toy2d_rf): steps/s of the real command ``python -m flowgen.main --config=configs/toy2d_rf.py``
  (its own summary: steps after the first call / training seconds, sampling and compilation excluded, checkpoint
  saves included) against ``train_minimal_jax.py`` (plain jax + optax, one jitted step per call and 32 steps fused
  with ``lax.scan``) and, with ``--torch-python``, the PyTorch eager mirror ``train_torch_mirror.py``.
``--part overhead``: the same command for toy2d_rf and digits_rf against the bare compiled program the loop runs
  (the loop's own jitted call on device-resident data, nothing else), so the ratio is what the loop adds (data
  feeding, logging, checkpoint saves, non-finite checks); each command run sits between two step-only runs.
``--part profile``: where the time of one config's compiled step goes (default digits_rf): a ``jax.profiler`` trace
  of ``--image-steps`` steps, each XLA operation's time summed by kind (convolution, matmul, elementwise/reduce,
  layout) using the optimised HLO, and the GFLOP/s the convolutions and matmuls reach.
``--part peak``: GFLOP/s of float32 matmuls at the MLP's shape (256×256 by 256×256, 100 chained in one program)
  and of large ones (best of 1024³ and 2048³, before and after the model steps), plus steps/s, examples/s and
  fraction of that peak (FLOPs from XLA's cost analysis of one step) for the digits U-Net and the CIFAR-10 U-Net
  and DiT-S/2 (batch ``--image-batch``; TFDS mock data).

    python benchmarks/train.py --part compare --rounds 5 --torch-python /path/to/venv-with-torch/bin/python
    python benchmarks/train.py --part compare --rounds 5 --baseline-repo /tmp/before   # before/after a change
    python benchmarks/train.py --part overhead --rounds 3
    python benchmarks/train.py --part peak
    python benchmarks/train.py --part profile --image-steps 5

Prints Markdown tables and writes ``results/benchmarks/train-<UTC time>.json``.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.util
import json
import os
import re
import subprocess
import sys
import tempfile
import time

import jax
import numpy as np

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from common import environment, markdown_table, matmul_gflops, matmul_peak_gflops, median, write_json  # noqa: E402

SUMMARY = re.compile(r"training [\d.]+ s = ([\d.]+) steps/s")
WITHOUT_SAVES = re.compile(r"; ([\d.]+) steps/s without them")
CIFAR_DIT = ["--config.model.name=dit",
             '--config.model.kwargs={"hidden": 384, "depth": 12, "num_heads": 6, "patch_size": 2}']


def load_config(name: str, overrides=()):
    spec = importlib.util.spec_from_file_location(name, os.path.join(REPO, "configs", f"{name}.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    config = module.get_config()
    for item in overrides:
        key, value = item.removeprefix("--config.").split("=", 1)
        *parents, leaf = key.split(".")
        node = config
        for p in parents:
            node = node[p]
        node[leaf] = json.loads(value) if value[:1] in "{[" or value.replace(".", "").isdigit() else value
    return config


# ------------------------------------------------------------------------------------ the bare compiled program

def bare_program(name: str, data_dir: str, overrides=()):
    """The loop's own compiled call for config ``name`` (same program, same steps per call) on device-resident data:
    ``(config, program, args, k, flops_per_step)`` where ``program(*args)`` returns ``(state, report)`` and the next
    call must pass the returned state in place of ``args[0]`` (it is donated)."""
    from flowgen.train import input as input_lib
    from flowgen.train import loop, sharding
    from flowgen.train.run import Run
    from flowgen.train.step import jit_train_chunk, make_train_call, make_train_step

    config = load_config(name, overrides)
    config.data.data_dir = data_dir
    mock = contextlib.nullcontext()
    if config.data.name == "cifar10":
        import tensorflow_datasets as tfds

        mock = tfds.testing.mock_data(num_examples=max(64, config.data.batch_size))
    with mock:
        setup = Run.from_config(config)
        data = setup.make_input()
    mesh = setup.mesh
    batch_sh, repl = sharding.batch_sharding(mesh), sharding.replicated(mesh)
    stacked = input_lib.stacked_sharding(batch_sh)
    k = loop.steps_per_call(config, data)
    step_fn = make_train_step(setup.loss_fn(), setup.optimizer, setup.schedule, setup.decays)
    if data.on_device:
        device_batch = lambda s: jax.lax.with_sharding_constraint(data.device_batch(s), batch_sh)  # noqa: E731
        batches, one_batch = {}, lambda state: device_batch(state.step)  # noqa: E731
    else:
        device_batch = None
        shape = (k, config.data.batch_size, *data.element_shape)
        host = {"x": np.random.default_rng(0).uniform(-1, 1, shape).astype(np.float32)}
        if data.num_classes:
            host["label"] = np.zeros(shape[:2], np.int32)
        batches = jax.device_put(host, stacked)
        one_batch = lambda state: jax.tree.map(lambda b: b[0], batches)  # noqa: E731
    state = setup.init_state()
    flops = jax.jit(lambda st, key: step_fn(st, one_batch(st), key)).lower(state, setup.keys[1]).compile()
    flops = (flops.cost_analysis() or {}).get("flops")
    program = jit_train_chunk(make_train_call(step_fn, device_batch, k), setup.state_sharding, stacked, repl)
    return config, program, (state, batches, setup.keys[1], k), k, flops


def step_only(name: str, steps: int, data_dir: str, overrides=()) -> dict:
    """steps/s of the loop's own compiled call (same program, same steps per call) on device-resident data."""
    config, program, (state, *args), k, flops = bare_program(name, data_dir, overrides)
    t0 = time.perf_counter()
    state, report = program(state, *args)
    jax.block_until_ready(report)
    compile_s = time.perf_counter() - t0
    calls = max(steps // k, 1)
    t0 = time.perf_counter()
    for _ in range(calls):
        state, report = program(state, *args)
    jax.block_until_ready(report)
    dt = time.perf_counter() - t0
    return {"config": name + (" " + " ".join(overrides) if overrides else ""), "batch": config.data.batch_size,
            "params": sum(int(np.prod(x.shape)) for x in jax.tree.leaves(state.params)), "steps_per_call": k,
            "compile_s": compile_s, "steps_per_s": calls * k / dt, "examples_per_s": calls * k * config.data.batch_size
            / dt, "flops_per_step": flops, "loss": float(report["metrics"]["loss"])}


# --------------------------------------------------------------------------------------------- subprocess runners

def _run(cmd, timeout=3600, repo=REPO) -> str:
    env = {**os.environ, "PYTHONPATH": repo}
    out = subprocess.run(cmd, cwd=repo, env=env, capture_output=True, text=True, timeout=timeout)
    if out.returncode:
        raise RuntimeError(f"{' '.join(cmd)} failed:\n{out.stdout[-3000:]}\n{out.stderr[-3000:]}")
    return out.stdout + out.stderr


def cli_rate(config: str, extra=(), repo=REPO) -> dict:
    """steps/s of ``python -m flowgen.main`` (of the checkout ``repo``) as its closing summary states it, with and
    without checkpoint saves."""
    with tempfile.TemporaryDirectory() as workdir:
        text = _run([sys.executable, "-m", "flowgen.main", f"--config=configs/{config}.py", f"--workdir={workdir}",
                     *extra], repo=repo)
    return {"": float(SUMMARY.search(text).group(1)),
            " (without checkpoint pauses)": float(WITHOUT_SAVES.search(text).group(1))}


def json_line(cmd) -> dict:
    """The last JSON object a command prints on a line of its own."""
    return json.loads([line for line in _run(cmd).splitlines() if line.startswith("{")][-1])


def step_only_sub(name: str, steps: int, data_dir: str) -> float:
    return json_line([sys.executable, __file__, "--step-only", name, "--steps", str(steps),
                      "--data-dir", data_dir])["steps_per_s"]


# ------------------------------------------------------------------------------------------------------- parts

def part_compare(args) -> dict:
    steps = str(args.toy_steps)
    contenders = {
        "flowgen CLI": lambda: cli_rate("toy2d_rf", [f"--config.train.num_steps={steps}"]),
        "minimal JAX, 1 step/call": lambda: json_line(
            [sys.executable, "benchmarks/train_minimal_jax.py", "--steps", steps, "--fuse", "1"])["steps_per_s"],
        "minimal JAX, 32 steps/call (scan)": lambda: json_line(
            [sys.executable, "benchmarks/train_minimal_jax.py", "--steps", steps, "--fuse", "32"])["steps_per_s"],
    }
    if args.baseline_repo:   # the same command from another checkout (e.g. before a change), in the same rounds
        contenders["flowgen CLI (baseline)"] = lambda: cli_rate("toy2d_rf", [f"--config.train.num_steps={steps}"],
                                                                repo=os.path.abspath(args.baseline_repo))
    if args.torch_python:
        contenders["PyTorch eager"] = lambda: json_line(
            [args.torch_python, "benchmarks/train_torch_mirror.py", "--steps", "1000"])["steps_per_s"]
    rates = _interleave(contenders, args.rounds)
    # The reference is one contender, the minimal variant with the best median: taking each round's faster of the
    # two would favour the minimal loop with the noise of the two draws.
    best = max((k for k in rates if k.startswith("minimal")), key=lambda k: median(rates[k]))
    rows = [[k, median(v), min(v), max(v), median(v) / median(rates[best])] for k, v in rates.items()]
    print(markdown_table(["toy2d_rf", "median steps/s", "min", "max", f"/ median of {best}"], rows))
    per_round = {}
    for name in (k for k in rates if k.startswith("flowgen CLI")):
        per_round[name] = [c / m for c, m in zip(rates[name], rates[best], strict=True)]
        print(f"\n{name} / {best}, same round: median {median(per_round[name]):.3f} "
              f"(rounds: {', '.join(f'{r:.3f}' for r in per_round[name])}); fastest round / fastest round: "
              f"{max(rates[name]) / max(rates[best]):.3f}")
        if args.torch_python:
            print(f"{name} / PyTorch eager (medians): {median(rates[name]) / median(rates['PyTorch eager']):.2f}")
    return {"rates": rates, "reference": best, "cli_over_minimal_per_round": per_round}


def part_overhead(args) -> dict:
    """Each CLI run between two step-only runs of the same config (S C S C ... S): a CLI run's ratio is to the mean
    of its two neighbours, so the machine's drift (±10 % over minutes here) cancels to first order; rotating whole
    contenders, as ``compare`` does, left a toy CLI run minutes (of digits runs) away from its step-only run."""
    runs = {"toy2d_rf": ([f"--config.train.num_steps={args.toy_steps}"], args.toy_steps),
            "digits_rf": ([f"--config.train.num_steps={args.digits_steps}", "--config.train.sample_every=0"], 100)}
    rates, rows = {}, []
    for name, (extra, steps) in runs.items():
        bare = [step_only_sub(name, steps, args.data_dir)]
        cli = []
        for r in range(args.rounds):
            cli.append(cli_rate(name, extra)[""])
            bare.append(step_only_sub(name, steps, args.data_dir))
            print(f"round {r + 1}/{args.rounds}  {name}: step only {bare[-2]:.2f}, CLI {cli[-1]:.2f}, step only "
                  f"{bare[-1]:.2f} steps/s", file=sys.stderr, flush=True)
        ratios = [c / ((b0 + b1) / 2) for c, b0, b1 in zip(cli, bare[:-1], bare[1:], strict=True)]
        rates[name] = {"step_only": bare, "cli": cli, "cli_over_neighbouring_step_only": ratios}
        rows.append([name, median(bare), median(cli), median(ratios), 1 - median(ratios),
                     ", ".join(f"{x:.3f}" for x in ratios)])
    print(markdown_table(["config", "step only steps/s", "CLI steps/s", "CLI / step only (median of runs)",
                          "overhead", "runs"], rows))
    return {"rates": rates}


def part_peak(args) -> dict:
    small = matmul_gflops(256, 100, 20)
    large_before = matmul_peak_gflops()
    rows = []
    for name, overrides in [("digits_rf", []), ("cifar10_rf", [f"--config.data.batch_size={args.image_batch}"]),
                            ("cifar10_rf", [f"--config.data.batch_size={args.image_batch}", *CIFAR_DIT])]:
        r = step_only(name, args.image_steps, args.data_dir, overrides)
        gflops = r["flops_per_step"] * r["steps_per_s"] / 1e9 if r["flops_per_step"] else float("nan")
        rows.append([r["config"].replace("--config.", ""), r["batch"], r["params"], r["compile_s"], r["steps_per_s"],
                     r["examples_per_s"], (r["flops_per_step"] or float("nan")) / 1e9, gflops])
    large_after = matmul_peak_gflops()
    large = max(large_before, large_after)
    print(f"float32 matmul GFLOP/s (best of repeats): 256x256 @ 256x256 {small:.1f} (100 chained); large "
          f"(best of 1024^3 and 2048^3) {large:.1f} (before the steps {large_before:.1f}, after {large_after:.1f})\n")
    rows = [[*row, row[-1] / large] for row in rows]
    print(markdown_table(["config", "batch", "params", "compile s", "steps/s", "examples/s", "GFLOP/step",
                          "GFLOP/s", "/ large-matmul peak"], rows))
    return {"matmul_gflops_256": small, "matmul_gflops_large": large, "large_before_after": [large_before, large_after],
            "rows": rows}


# ------------------------------------------------------------------------------------------------------ profile

_OP = re.compile(r"^\s*(?:ROOT\s+)?%?(?P<name>[\w.\-]+)\s*=\s*(?P<rest>.*)$")
_OPCODE = re.compile(r"(?<![\w.\-%])([a-z][a-z0-9\-]*)\(")
_CALLS = re.compile(r"(?:calls|to_apply|body|condition)=\{?%?([\w.\-]+)")
_COMPUTATION = re.compile(r"^(?:ENTRY\s+)?%?(?P<name>[\w.\-]+)\s.*\{\s*$")


def hlo_op_kinds(hlo_text: str) -> dict[str, str]:
    """Each instruction of an optimised HLO module mapped to what it computes: ``convolution``, ``matmul`` (dot),
    ``elementwise/reduce`` (everything else that computes), ``layout`` (copy, transpose, slicing, concatenation),
    ``control`` (while, conditional: containers whose time is their body's). Fusions get the kind of the
    heaviest op inside them (convolution > matmul > the rest)."""
    ops: dict[str, list] = {}            # computation -> [(name, opcode, called computations)]
    current = None
    for line in hlo_text.splitlines():
        m = _COMPUTATION.match(line)
        if m and "=" not in line.split("{")[0]:
            current = m["name"]
            ops[current] = []
            continue
        m = _OP.match(line)
        if m and current is not None:
            opcode = _OPCODE.search(m["rest"])
            ops[current].append((m["name"], opcode.group(1) if opcode else "?", _CALLS.findall(m["rest"])))
    rank = {"convolution": 3, "matmul": 2, "elementwise/reduce": 1, "layout": 0}

    def kind_of(opcode, called, seen=()):
        if opcode in ("while", "conditional"):
            return "control"
        if opcode == "convolution":
            return "convolution"
        if opcode == "dot":
            return "matmul"
        if called:
            kinds = [kind_of(o, c, (*seen, *called)) for comp in called if comp not in seen
                     for _, o, c in ops.get(comp, [])]
            kinds = [k for k in kinds if k in rank]
            return max(kinds, key=rank.get) if kinds else "elementwise/reduce"
        if opcode in ("copy", "transpose", "slice", "dynamic-slice", "dynamic-update-slice", "concatenate",
                      "pad", "reshape", "bitcast", "broadcast", "gather", "scatter", "tuple", "get-tuple-element",
                      "parameter", "constant"):
            return "layout"
        return "elementwise/reduce"

    return {name: kind_of(opcode, called) for comp in ops.values() for name, opcode, called in comp}


def profile_step(name: str, data_dir: str, calls: int, overrides=()) -> dict:
    """Time per kind of XLA operation in the compiled step, from a ``jax.profiler`` trace (XLA:CPU records one event
    per executed operation, named after its HLO instruction) and the optimised HLO (``compiled.as_text()``)."""
    import collections
    import glob
    import gzip

    config, program, (state, *args), k, flops = bare_program(name, data_dir, overrides)
    kinds = hlo_op_kinds(program.lower(state, *args).compile().as_text())
    state, report = program(state, *args)                  # compile and warm up
    jax.block_until_ready(report)
    with tempfile.TemporaryDirectory() as trace_dir:
        t0 = time.perf_counter()
        with jax.profiler.trace(trace_dir, create_perfetto_trace=True):
            for _ in range(calls):
                state, report = program(state, *args)
            jax.block_until_ready(report)
        wall = time.perf_counter() - t0
        (path,) = glob.glob(os.path.join(trace_dir, "**", "perfetto_trace.json.gz"), recursive=True)
        with gzip.open(path) as f:
            trace = json.load(f)
    events = trace["traceEvents"] if isinstance(trace, dict) else trace
    seconds: dict[str, float] = collections.defaultdict(float)
    by_op: dict[str, float] = collections.defaultdict(float)
    for e in events:
        op = (e.get("args") or {}).get("hlo_op")
        if e.get("ph") == "X" and op:
            kind = kinds.get(op, "unmatched")
            if kind != "control":
                seconds[kind] += e["dur"] * 1e-6 / (calls * k)
                by_op[op] += e["dur"] * 1e-6 / (calls * k)
    return {"config": name, "wall_s_per_step": wall / (calls * k), "flops_per_step": flops,
            "op_seconds_per_step": dict(seconds),
            "top_ops": sorted(by_op.items(), key=lambda kv: -kv[1])[:12]}


def part_profile(args) -> dict:
    peak = matmul_peak_gflops()
    r = profile_step(args.profile_config, args.data_dir, args.image_steps)
    total = sum(r["op_seconds_per_step"].values())
    flops = r["flops_per_step"] or float("nan")
    compute = sum(v for k, v in r["op_seconds_per_step"].items() if k in ("convolution", "matmul"))
    print(f"{r['config']}: {r['wall_s_per_step'] * 1e3:.0f} ms per step (wall, under the profiler), "
          f"{flops / 1e9:.2f} GFLOP per step; large-matmul peak {peak:.0f} GFLOP/s\n")
    rows = [[kind, sec * 1e3, sec / total] for kind, sec in sorted(r["op_seconds_per_step"].items(),
                                                                    key=lambda kv: -kv[1])]
    print(markdown_table(["kind of XLA op", "ms per step (sum of its ops' durations)", "share"], rows))
    print(f"\nconvolutions and matmuls: {compute / total:.0%} of the op time; doing (almost) all FLOPs, they ran at "
          f"{flops / compute / 1e9:.0f} GFLOP/s, {flops / compute / 1e9 / peak:.0%} of the large-matmul peak; the "
          f"other {1 - compute / total:.0%} (normalisation, activations, optimiser and EMA updates, copies) is "
          "memory-bound")
    print("\nheaviest ops (ms per step):", ", ".join(f"{op} {sec * 1e3:.1f}" for op, sec in r["top_ops"]))
    return {**r, "matmul_gflops_large": peak}


def _interleave(contenders: dict, rounds: int) -> dict:
    """Run every contender once per round, in a rotated order; a contender returning a dict {suffix: rate}
    contributes one series per suffix."""
    rates: dict[str, list] = {}
    for r in range(rounds):
        order = list(contenders)
        order = order[r % len(order):] + order[:r % len(order)]     # rotate, so no contender always goes first
        for k in order:
            got = contenders[k]()
            for suffix, rate in (got.items() if isinstance(got, dict) else [("", got)]):
                rates.setdefault(k + suffix, []).append(rate)
                print(f"round {r + 1}/{rounds}  {k + suffix}: {rate:.1f} steps/s", file=sys.stderr, flush=True)
    return rates


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--part", choices=["compare", "overhead", "peak", "profile"], default="compare")
    parser.add_argument("--profile-config", default="digits_rf", help="--part profile: the config whose step to trace")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--torch-python", default=None, help="a Python interpreter with torch installed")
    parser.add_argument("--baseline-repo", default=None,
                        help="--part compare: also run the command from this checkout (e.g. `git worktree add "
                             "/tmp/before REV`), interleaved in the same rounds")
    parser.add_argument("--toy-steps", type=int, default=6000,
                        help="--part compare/overhead: steps of each toy run (the config's 2000 take 8 s here, too "
                             "short to average out the machine's drift; the schedule is constant after warm-up)")
    parser.add_argument("--digits-steps", type=int, default=500,
                        help="--part overhead: steps of each digits run (one checkpoint, at the end; its one-time "
                             "costs, the first epoch's decoding and that save, weigh 3x more in 150 steps)")
    parser.add_argument("--image-batch", type=int, default=16)
    parser.add_argument("--image-steps", type=int, default=3)
    parser.add_argument("--data-dir", default=os.path.join(REPO, "results", "data"))
    parser.add_argument("--step-only", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--steps", type=int, default=2000, help=argparse.SUPPRESS)
    parser.add_argument("--out-dir", default=None)
    args = parser.parse_args(argv)
    if args.step_only:
        print(json.dumps(step_only(args.step_only, args.steps, args.data_dir)))
        return
    parts = {"compare": part_compare, "overhead": part_overhead, "peak": part_peak, "profile": part_profile}
    result = parts[args.part](args)
    print(f"\n{jax.device_count()} x {jax.devices()[0].device_kind}, {os.cpu_count()} CPUs, "
          f"load average {os.getloadavg()[0]:.1f} (at the end)")
    path = write_json(f"train-{args.part}", {"part": args.part, "result": result, "environment": environment(),
                                             "load_average_end": os.getloadavg(), "rounds": args.rounds},
                      args.out_dir)
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
