"""Command line: ``python -m flowgen.main --config=configs/NAME.py[:small] --workdir=DIR [--config.key=value ...]``.

    --mode=train     train (resuming from the newest good checkpoint in the workdir)
    --mode=sample    draw samples from the newest checkpoint into workdir/samples/
    --mode=sweep     run the NFE sweep of a sweep config (experiments/NAME.py) into the workdir, resumably
    --mode=prepare   build the dataset of --config.data.name in --config.data.data_dir (digits: offline)

Configs are ml_collections config files (``get_config(variant)``); any key can be overridden on the command line,
and unknown keys or wrong types are refused by ml_collections before anything runs.
"""

from __future__ import annotations

import logging
import os
import sys

from absl import app, flags
from ml_collections import config_flags

FLAGS = flags.FLAGS
_DEFAULT_CONFIG = os.path.join(os.path.dirname(os.path.abspath(__file__)), "train", "default_config.py")
config_flags.DEFINE_config_file("config", _DEFAULT_CONFIG,
                                "Path to a config file (configs/*.py), optionally ':variant'. Default: the 2-D "
                                "rectified-flow base config.", lock_config=True)
flags.DEFINE_string("workdir", None, "Where checkpoints, metrics and samples go.")
flags.DEFINE_enum("mode", "train", ["train", "sample", "sweep", "prepare"], "What to do.")
flags.DEFINE_string("coordinator", None, "Multi-host: coordinator address host:port for jax.distributed.")
flags.DEFINE_integer("num_processes", None, "Multi-host: number of processes.")
flags.DEFINE_integer("process_id", None, "Multi-host: this process's index.")


def main(argv) -> int:
    del argv
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s", stream=sys.stdout)
    logging.getLogger("absl").setLevel(logging.WARNING)
    import jax

    if FLAGS.coordinator:
        jax.distributed.initialize(FLAGS.coordinator, FLAGS.num_processes, FLAGS.process_id)
    config = FLAGS.config
    if FLAGS.mode == "prepare":
        from flowgen.data.prepare import prepare

        prepare(config.data.name, config.data.data_dir or None)
        return 0
    if FLAGS.workdir is None:
        raise app.UsageError("--workdir is required for --mode=train, --mode=sample and --mode=sweep")
    if FLAGS.mode == "sweep":
        from flowgen.sweep.runner import run as run_sweep

        print(run_sweep(config, FLAGS.workdir)["markdown"])
        return 0
    if FLAGS.mode == "train":
        from flowgen.train.loop import train_and_evaluate

        train_and_evaluate(config, FLAGS.workdir)
    else:
        from flowgen.train.loop import sample_from_checkpoint

        sample_from_checkpoint(config, FLAGS.workdir)
    return 0


def run() -> None:
    """Console-script entry point (``flowgen``)."""
    app.run(main)


if __name__ == "__main__":
    run()
