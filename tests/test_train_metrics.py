"""Metric records: one merged row per step from the append-only ``metrics.jsonl`` (the throughput meter is tested
with the fused steps, in test_train_fused.py)."""

import json

import pytest

from flowgen.train.metrics import read_metrics


def test_read_metrics_merges_rows_of_a_step_and_prefers_the_later_ones(tmp_path):
    rows = [{"step": 10, "time": 1.0, "loss": 0.5}, {"step": 20, "time": 2.0, "loss": 0.4},
            {"step": 20, "time": 2.1, "sample/w2": 0.3},               # a sampling row at a logged step
            {"step": 20, "time": 9.0, "loss": 0.4},                    # logged again after a resume from step 10
            {"step": 30, "time": 10.0, "loss": 0.2}]
    (tmp_path / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows) + "\n")
    assert read_metrics(tmp_path) == [{"step": 10, "time": 1.0, "loss": 0.5},
                                      {"step": 20, "time": 9.0, "loss": 0.4, "sample/w2": 0.3},
                                      {"step": 30, "time": 10.0, "loss": 0.2}]
    with pytest.raises(FileNotFoundError):
        read_metrics(tmp_path / "nothing")

