"""Do the learning tests catch real bugs? Apply one deliberate mutation at a time to a copy of the repository and run
``tests/test_learning.py`` there; every test should fail under at least two mutations.

    python benchmarks/mutations.py                       # all mutations, one copy each (about 1.5 min per mutation)
    python benchmarks/mutations.py --only loss_sign      # one

Prints one line per mutation and test: PASSED (the mutation went unnoticed) or FAILED (caught).
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]

#: name -> (file, text, replacement): each a plausible one-line bug.
MUTATIONS = {
    "loss_sign": ("flowgen/losses.py", "(pred.astype(jnp.float32) - goal.astype(jnp.float32))",
                  "(pred.astype(jnp.float32) + goal.astype(jnp.float32))"),
    "velocity_target": ("flowgen/paths/targets.py", "return da * d.data + ds * d.noise",
                        "return da * d.data - ds * d.noise"),
    "ema_frozen": ("flowgen/train/step.py", "d * e + (1.0 - d) * p", "e"),
    "pseudo_huber_sign": ("flowgen/methods/pseudo_huber.py", "apply(params, x_t, t, cond, k_model) - goal",
                          "apply(params, x_t, t, cond, k_model) + goal"),
    # The few-step methods (also caught by tests/test_methods_fewstep.py: --tests tests/test_methods_fewstep.py).
    "meanflow_identity_sign": ("flowgen/methods/meanflow.py", "return u, f32(v) + jnp.reshape(",
                               "return u, f32(v) - jnp.reshape("),
    "meanflow_h_tangent": ("flowgen/methods/meanflow.py", "(f32(v), ones, -ones)", "(f32(v), ones, 0 * ones)"),
    "shortcut_half_step": ("flowgen/methods/shortcut.py", "target_net(x_t + _bcast(d, x_t) * s1, t + d)",
                           "target_net(x_t + _bcast(two_d, x_t) * s1, t + d)"),
    # Reflow and distillation (--tests tests/test_reflow.py catches both in seconds; test_learning's distill too).
    "distill_goal_sign": ("flowgen/methods/distill.py", "goal = ((x_data - x_start) / span)",
                          "goal = ((x_data + x_start) / span)"),
    "pairs_swapped": ("flowgen/reflow.py", '{"x_data": x1, "noise": np.asarray(x0),',
                      '{"x_data": np.asarray(x0), "noise": x1,'),
}


def run(name: str, tests: str) -> dict[str, str]:
    file, old, new = MUTATIONS[name]
    with tempfile.TemporaryDirectory() as tmp:
        copy = Path(tmp) / "repo"
        files = subprocess.run(["git", "ls-files"], cwd=REPO, capture_output=True, text=True, check=True).stdout
        for rel in files.split():
            if (REPO / rel).is_file():
                (copy / rel).parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(REPO / rel, copy / rel)
        text = (copy / file).read_text()
        if text.count(old) != 1:
            raise SystemExit(f"mutation {name}: {old!r} occurs {text.count(old)} times in {file}")
        (copy / file).write_text(text.replace(old, new))
        env = {**os.environ, "PYTHONPATH": str(copy)}
        out = subprocess.run([sys.executable, "-m", "pytest", "-q", "-rA", "-p", "no:cacheprovider", tests],
                             cwd=copy, env=env, capture_output=True, text=True).stdout
    return {test: outcome for outcome, test in re.findall(r"^(PASSED|FAILED) \S+::(\S+)", out, re.M)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--only", choices=sorted(MUTATIONS), action="append")
    parser.add_argument("--tests", default="tests/test_learning.py")
    args = parser.parse_args()
    for name in args.only or MUTATIONS:
        for test, outcome in sorted(run(name, args.tests).items()):
            print(f"{name:18s} {test:70s} {'caught' if outcome == 'FAILED' else 'NOT CAUGHT'}", flush=True)


if __name__ == "__main__":
    main()
