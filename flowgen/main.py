"""Command line: ``python -m flowgen.main --config=configs/NAME.py[:small] --workdir=DIR [--config.key=value ...]``.

    --mode=train     train (resuming from the newest good checkpoint in the workdir)
    --mode=sample    draw samples from the newest checkpoint into workdir/samples/ (never overwriting a file)
    --mode=sweep     run the NFE sweep of a sweep config (experiments/NAME.py) into the workdir, resumably
    --mode=prepare   build the dataset of --config.data.name in --config.data.data_dir (digits: offline)
    --mode=describe  build the run (no data read, nothing trained) and print the network's parameters, the FLOPs of
                     one training step (XLA's cost analysis) and, last, ``parameters: <N>``
    --restart        train from step 0 in a workdir whose checkpoints were all quarantined as damaged

Configs are ml_collections config files (``get_config(variant)``); any key can be overridden on the command line.
Every mistake in the flags or the config (unknown key, wrong type, bad value, missing file) and every refusal to
touch a workdir is one ``error: ...`` message naming the flag, the value and the choices, exit status 2, before
anything is compiled; errors while training are not caught (they keep their traceback). A training run stopped by
SIGTERM saves its checkpoint and exits with status 143 (``EXIT_PREEMPTED``), never 0, so a scheduler's ``afterok``
does not fire on an unfinished model; the same command resumes it. A sweep whose points failed writes the table of
the others, names each failed point with its log file and exits with status 1.
"""

from __future__ import annotations

import difflib
import glob
import logging
import os
import re
import sys

from absl import flags
from ml_collections import config_flags

_DEFAULT_CONFIG = os.path.join(os.path.dirname(os.path.abspath(__file__)), "train", "default_config.py")
_REPO_CONFIGS = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "configs")
MODES = ("train", "sample", "sweep", "prepare", "describe")
NO_WORKDIR = ("prepare", "describe")
EXIT_USAGE = 2
EXIT_FAILED_POINTS = 1
#: A training run stopped by SIGTERM after saving its checkpoint (128 + SIGTERM, as a shell reports a SIGTERM'd
#: process): not 0, so a scheduler's ``afterok`` dependency never fires on an unfinished model.
EXIT_PREEMPTED = 143


class CommandLineError(ValueError):
    """A flag or config value the command line cannot run with."""


def define_flags(values: flags.FlagValues, argv: list[str]) -> None:
    """The command line's flags, in ``values`` (a fresh FlagValues per call, so ``cli`` can run many times)."""
    config_flags.DEFINE_config_file(
        "config", _DEFAULT_CONFIG, "Path to a config file (configs/*.py), optionally ':variant'. Default: the 2-D "
        "rectified-flow base config.", flag_values=values, lock_config=True, sys_argv=argv)
    flags.DEFINE_string("workdir", None, "Where checkpoints, metrics and samples go.", flag_values=values)
    flags.DEFINE_enum("mode", "train", list(MODES), "What to do.", flag_values=values)
    flags.DEFINE_bool("restart", False, "Train from step 0 although the workdir's checkpoints were all quarantined "
                      "(they stay in checkpoints/corrupt/; earlier outputs are moved to previous-<time>/).",
                      flag_values=values)
    flags.DEFINE_string("coordinator", None, "Multi-host: coordinator address host:port for jax.distributed.",
                        flag_values=values)
    flags.DEFINE_integer("num_processes", None, "Multi-host: number of processes.", flag_values=values)
    flags.DEFINE_integer("process_id", None, "Multi-host: this process's index.", flag_values=values)
    flags.DEFINE_bool("distributed", False, "Multi-host: call jax.distributed.initialize() with no arguments, so JAX "
                      "finds the coordinator and this process's index from the cluster (TPU pod slice, SLURM, ...).",
                      flag_values=values)
    flags.DEFINE_bool("help", False, "Show this help.", short_name="h", flag_values=values)


def cli(argv: list[str] | None = None) -> int:
    """Parse ``argv`` (``sys.argv`` if None), run, and return the exit status (0, or 2 with ``error: ...``)."""
    argv = list(sys.argv if argv is None else argv)
    argv, added = _open_section_overrides(argv)      # before the config flags register their overrides
    values = flags.FlagValues()
    define_flags(values, argv)
    try:
        _check_config_file(argv)
        try:
            rest = values(argv)
        except Exception as e:  # noqa: BLE001 - every parse failure becomes one message, translated below
            raise CommandLineError(_parse_error_message(e, argv)) from e
        if values.help:
            print(values.main_module_help() or values.get_help())
            return 0
        if rest[1:]:
            raise CommandLineError(f"unexpected arguments {rest[1:]}: flags are --name=value")
        _add_to_open_sections(values.config, added)
        return _run(values)
    except CommandLineError as e:
        return _error(str(e))


def _run(values) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s", stream=sys.stdout)
    logging.getLogger("absl").setLevel(logging.WARNING)
    import jax

    from flowgen.data.pipeline import DatasetNotPreparedError
    from flowgen.sweep.lock import LockedError
    from flowgen.train import config as config_lib
    from flowgen.train.loop import Preempted
    from flowgen.train.resume import RunRefusedError

    if values.coordinator and values.distributed:
        return _error("--distributed finds the coordinator itself; give either it or --coordinator, not both")
    if values.coordinator:
        jax.distributed.initialize(values.coordinator, values.num_processes, values.process_id)
    elif values.distributed:
        jax.distributed.initialize()
    config = values.config
    mode = values.mode
    try:
        if mode not in NO_WORKDIR and values.workdir is None:
            raise CommandLineError(f"--workdir is required for --mode={mode}")
        if values.restart and mode != "train":
            raise CommandLineError("--restart only applies to --mode=train")
        if mode == "prepare":
            config_lib.check_dataset_name(config.data.name)
        elif mode == "sweep":
            from flowgen.sweep import spec as sweep_spec
            from flowgen.sweep.runner import require_local_workdir

            require_local_workdir(values.workdir)
            sweep_spec.parse(config)  # every check of the sweep config, before anything is trained or written
        else:
            config_lib.validate(config)
            config_lib.check_devices(config)
            if mode == "describe":
                from flowgen.train.run import Run

                description = Run.from_config(config).describe()
    except ValueError as e:  # config_lib's checks name the key, the value and the choices
        return _error(str(e))
    try:
        if mode == "prepare":
            from flowgen.data.prepare import prepare

            try:
                prepare(config.data.name, config.data.data_dir or None)
            except ConnectionError as e:  # no network: the message says where to run it instead
                return _error(str(e))
        elif mode == "sweep":
            from flowgen.sweep.runner import run as run_sweep

            result = run_sweep(config, values.workdir)
            print(result["markdown"])
            if result["failed"]:
                for f in result["failed"]:
                    print(f"error: {f.task.stage} of {f.task.model!r} failed ({f.message}); log: {f.log}",
                          file=sys.stderr)
                return EXIT_FAILED_POINTS
        elif mode == "describe":
            print(description)
        elif mode == "train":
            from flowgen.train.loop import train_and_evaluate

            train_and_evaluate(config, values.workdir, restart=values.restart)
        else:
            from flowgen.train.sample_mode import sample_from_checkpoint

            sample_from_checkpoint(config, values.workdir)
    except (RunRefusedError, DatasetNotPreparedError, LockedError) as e:  # refusals that changed nothing
        return _error(str(e))
    except Preempted as e:  # SIGTERM: saved, not finished
        print(f"preempted: {e}", file=sys.stderr)
        return EXIT_PREEMPTED
    return 0


def _error(message: str) -> int:
    print(f"error: {message}", file=sys.stderr)
    return EXIT_USAGE


def _config_argument(argv: list[str]) -> str | None:
    for i, arg in enumerate(argv):
        if arg.startswith("--config="):
            return arg.split("=", 1)[1]
        if arg == "--config" and i + 1 < len(argv):
            return argv[i + 1]
    return None


def available_configs(directory: str | None = None) -> list[str]:
    """The config files in ``directory`` (default: the repository's configs/)."""
    directory = directory if directory and os.path.isdir(directory) else _REPO_CONFIGS
    return sorted(os.path.relpath(p) for p in glob.glob(os.path.join(directory, "*.py"))
                  if not os.path.basename(p).startswith("_"))


def _check_config_file(argv: list[str]) -> None:
    value = _config_argument(argv)
    if value is None:
        return
    path = value.split(":", 1)[0]
    if not os.path.isfile(path):
        listed = available_configs(os.path.dirname(path))
        raise CommandLineError(f"--config={value}: no config file {path!r}. Available: {', '.join(listed)} "
                               "(add ':small' for a smoke-test variant)")


#: Sections whose keys are the options of what they configure (a network's, a data set's, a method's, a path's, a
#: time sampler's, a coupling's): a config file need not list them all, so an override may add a key there.
OPEN_SECTION = re.compile(r"(^|\.)(kwargs|\w+_options)$")


def _open_section_overrides(argv: list[str]) -> tuple[list[str], list[tuple[list[str], str, object]]]:
    """``argv`` without the overrides that add a new key to an open section (``--config.model.kwargs.time_scale=10``,
    ``--config.data.kwargs.file=pairs.npz``: config flags only override keys that exist), and those additions as
    (section path, key, value), the value read as a Python literal where it is one (else the string)."""
    import ast

    candidates = [a for a in argv if (m := re.match(r"^--config\.([\w.]+)\.\w+=", a))
                  and OPEN_SECTION.search(m.group(1))]
    if not candidates:                  # the common case: nothing to add, the config file is not loaded twice
        return argv, []
    config = _load_config(argv)
    if config is None:
        return argv, []
    kept, added = [], []
    for arg in argv:
        match = re.match(r"^--config\.([\w.]+)=(.*)$", arg, re.S)
        if match:
            *parent, key = match.group(1).split(".")
            node = config
            for part in parent:
                node = node[part] if hasattr(node, "keys") and part in node.keys() else None
                if node is None:
                    break
            if node is not None and hasattr(node, "keys") and key not in node.keys() and \
                    OPEN_SECTION.search(".".join(parent)) and not difflib.get_close_matches(key, list(node.keys())):
                # (a key close to one the section has is taken as its typo: the parser's "did you mean" answers)
                try:
                    value = ast.literal_eval(match.group(2))
                except (ValueError, SyntaxError):
                    value = match.group(2)
                added.append((parent, key, value))
                continue
        kept.append(arg)
    return kept, added


def _add_to_open_sections(config, added) -> None:
    for parent, key, value in added:
        node = config
        for part in parent:
            node = node[part]
        with node.unlocked():
            node[key] = value


def _parse_error_message(error: Exception, argv: list[str]) -> str:
    """One readable line-group for a failure of absl/ml_collections parsing."""
    unknown = _unknown_key(argv)
    if unknown:
        return unknown
    text = str(error)
    if "Traceback (most recent call last)" in text:  # an exception inside get_config: its last line says it
        lines = [x for x in text.splitlines() if x.strip()]
        text = f"{lines[0]} {lines[-1].strip()}"
    match = re.match(r"flag --config\.([\w.]+)=", text)
    if match:
        kind = _key_type(argv, match.group(1))
        if kind:
            text += f" (config.{match.group(1)} takes {kind})"
    return text


def _load_config(argv: list[str]):
    """The config of ``--config`` without overrides (None if it cannot be loaded)."""
    value = _config_argument(argv) or _DEFAULT_CONFIG
    path, _, variant = value.partition(":")
    try:
        import importlib.util

        spec = importlib.util.spec_from_file_location("flowgen_cli_config", path)
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        return module.get_config(variant) if variant else module.get_config()
    except Exception:  # noqa: BLE001 - the parser's own message is used instead
        return None


def _unknown_key(argv: list[str]) -> str | None:
    """'--config.optim.lrr=1: ...' for the first override naming a key the config does not have, else None."""
    overrides = [a for a in argv if re.match(r"^--?(no)?config\.", a)]
    if not overrides:
        return None
    config = _load_config(argv)
    if config is None:
        return None
    for arg in overrides:
        key = re.sub(r"^--?(no)?config\.", "", arg.split("=", 1)[0])
        node, walked = config, []
        for part in key.split("."):
            keys = list(node.keys()) if hasattr(node, "keys") else []
            if part not in keys:
                where = ".".join(walked) or "the config"
                hint = difflib.get_close_matches(part, keys, n=1)
                suggestion = f"; did you mean {'.'.join([*walked, hint[0]])!r}?" if hint else "."
                valid = f"Keys of {where}: {', '.join(sorted(keys))}" if keys else f"{where} is not a section"
                return f"{arg}: unknown key {key!r}{suggestion} {valid}"
            node = node[part]
            walked.append(part)
    return None


def _key_type(argv: list[str], key: str) -> str | None:
    config = _load_config(argv)
    try:
        node = config
        for part in key.split("."):
            node = node[part]
    except Exception:  # noqa: BLE001
        return None
    return f"{type(node).__name__} values, e.g. {node!r}"


def run() -> None:
    """Console-script entry point (``flowgen``)."""
    sys.exit(cli())


if __name__ == "__main__":
    run()
