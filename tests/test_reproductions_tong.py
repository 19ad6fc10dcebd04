"""``experiments/reproductions/tong_2d.py``: the protocol it hands to torchcfm, a tiny end-to-end run of flowgen's
side, the report's scoring of a trajectory file in torchcfm's format, and its verdict rules."""

import json
import math

import numpy as np
import pytest

from experiments.reproductions import tong_2d, tong_2d_report
from flowgen.evals.sample_metrics import wasserstein2


def test_score_is_w2_and_tongs_normalised_path_energy():
    """A straight constant-speed trajectory along the optimal assignment has PE = W2² of its ends: NPE = 0."""
    rng = np.random.default_rng(0)
    x0, x1 = rng.normal(size=(64, 2)), rng.normal(size=(64, 2)) + 3.0
    w2_sq = wasserstein2(x0, x1) ** 2
    from flowgen.couplings import emd_permutation

    cost = ((x0[:, None] - x1[None]) ** 2).sum(-1)
    ends = x1[emd_permutation(cost)]
    positions = np.stack([x0 + s * (ends - x0) for s in np.linspace(0, 1, 11)])
    out = tong_2d.score(positions, x1, w2_sq)
    assert math.isclose(out["w2"], 0.0, abs_tol=1e-9) and out["npe"] < 1e-9
    out = tong_2d.score(positions, x1, w2_sq / 2)
    assert math.isclose(out["npe"], 1.0, rel_tol=1e-9)


def test_flowgen_side_end_to_end_and_report(tmp_path, monkeypatch):
    """Two seeds of I-CFM on N → moons for a few steps: the protocol the torchcfm script reads, resumability, and
    a report that scores a torchcfm-format trajectory file with the same code and states its verdicts."""
    monkeypatch.setattr(tong_2d, "REF_POINTS", 500)          # the reference W2²'s sample: smaller, faster
    args = ["--workdir", str(tmp_path), "--steps", "6", "--seeds", "42,43", "--tasks", "N-moons", "--methods", "icfm"]
    assert tong_2d.main(args) == 0
    protocol = json.loads((tmp_path / "protocol" / "protocol.json").read_text())
    assert protocol["batch"] == 512 and set(protocol["w2_squared"]) == {"N-moons"}
    with np.load(tmp_path / "protocol" / "N-moons-42-6.npz") as z:
        assert z["train_x1"].shape == (6, 512, 2) and z["eval_x0"].shape == (1000, 2) and "train_x0" not in z
        np.testing.assert_array_equal(z["eval_x1"], tong_2d.eval_points("N-moons", 42)[1])
    runs = sorted((tmp_path / "runs" / "N-moons" / "icfm").glob("*.npz"))
    assert [r.name for r in runs] == ["flowgen-42-6.npz", "flowgen-43-6.npz"]
    stamp = runs[0].stat().st_mtime_ns
    assert tong_2d.main(args) == 0 and runs[0].stat().st_mtime_ns == stamp        # resumed: nothing redone
    with np.load(runs[0]) as z:           # a torchcfm file has this format; here: the same trajectory
        np.savez(runs[0].parent / "torchcfm-42-6.npz", positions=z["positions"], train_seconds=1.0)
        np.savez(runs[0].parent / "torchcfm-43-6.npz", positions=z["positions"], train_seconds=1.0)
    out = tmp_path / "report.md"
    assert tong_2d.main(["--workdir", str(tmp_path), "--report", "--out", str(out)]) == 0
    text = out.read_text()
    assert "## N → moons" in text and "| I-CFM |" in text and "6 steps" in text and "seeds 42, 43" in text


@pytest.mark.parametrize("better, worse, verdict", [
    ({1: 0.1, 2: 0.12, 3: 0.11}, {1: 0.5, 2: 0.52, 3: 0.49}, "holds"),
    ({1: 0.5, 2: 0.52, 3: 0.49}, {1: 0.1, 2: 0.12, 3: 0.11}, "does not hold"),
    ({1: 0.1, 2: 0.5, 3: 0.3}, {1: 0.4, 2: 0.2, 3: 0.3}, "undecided"),
    ({1: 0.1}, {1: 0.5}, "undecided (fewer than 2 seeds)"),
])
def test_paired_verdicts(better, worse, verdict):
    assert tong_2d_report.paired_verdict(better, worse) == verdict


def test_no_worse_claims_hold_unless_significantly_worse():
    same = ({1: 0.1, 2: 0.5, 3: 0.3}, {1: 0.4, 2: 0.2, 3: 0.3})
    assert tong_2d_report.paired_verdict(*same, kind="no worse") == "holds"
    worse = ({1: 0.5, 2: 0.52, 3: 0.49}, {1: 0.1, 2: 0.12, 3: 0.11})
    assert tong_2d_report.paired_verdict(*worse, kind="no worse") == "does not hold"
