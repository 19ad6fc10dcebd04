"""Launchers: how a sweep's models are trained and its cells evaluated (``launcher`` section of a sweep config).

    local       in this process, one task after another (the default)
    processes   each task a local subprocess (``python -m flowgen.sweep.launch TASK.json``), ``max_parallel`` at once
    submitit    one job array per stage through submitit (``pip install flowgen[slurm]``): SLURM, or with
                ``cluster="local"`` submitit's own local executor (each job a subprocess); options below

A task is one point of the sweep: one model trained (resumably, in ``WORKDIR/models/NAME``, holding its
``.lock``, see ``flowgen.sweep.lock``) and its missing cells sampled and scored (written once). Both parts are
idempotent, so a task that failed or was killed is simply run again by the same command. Each task's output goes to
a log file (``WORKDIR/logs/point-MODEL.log``; submitit: its job's stdout), named in the report when it fails.

Add a launcher by writing a class with ``name``, ``OPTIONS`` ({option: default}) and ``run(tasks) -> [Failure]``
and adding it to ``LAUNCHERS``; nothing else names launchers.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import pickle
import subprocess
import sys
import time

from flowgen.main import EXIT_PREEMPTED  # 143: a task stopped by SIGTERM after saving (not 0: never afterok)

log = logging.getLogger("flowgen")


@dataclasses.dataclass(frozen=True)
class Task:
    stage: str            # "point": train the model if needed, then its missing cells
    model: str
    workdir: str          # the sweep's workdir (its launch/config.pkl holds the resolved sweep config)

    @property
    def label(self) -> str:
        return f"{self.stage}-{self.model}"

    @property
    def log(self) -> str:
        return os.path.join(self.workdir, "logs", f"{self.label}.log")


@dataclasses.dataclass(frozen=True)
class Failure:
    task: Task
    log: str
    message: str


def config_file(workdir: str) -> str:
    return os.path.join(workdir, "launch", "config.pkl")


def save_config(resolved: dict, workdir: str) -> None:
    """The resolved sweep config (every model explicit), for tasks run in other processes."""
    path = config_file(workdir)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    tmp = f"{path}.{os.getpid()}.tmp"
    with open(tmp, "wb") as f:
        pickle.dump(resolved, f)
    os.replace(tmp, path)


def execute(task: Task) -> None:
    """Run one task in this process (raises on failure; ``Preempted`` after saving on SIGTERM)."""
    from flowgen.sweep import runner

    if task.stage != "point":
        raise ValueError(f"unknown task stage {task.stage!r}; valid: point")
    with open(config_file(task.workdir), "rb") as f:
        resolved = pickle.load(f)
    runner.evaluate(resolved, task.workdir, only=task.model)       # the other models: its teachers, if any


# ------------------------------------------------------------------------------------------------ launchers
class Local:
    """Every task in this process, one after another; its log lines also go to its log file."""

    name = "local"
    OPTIONS: dict = {}

    def __init__(self, **options):
        pass

    def run(self, tasks: list[Task]) -> list[Failure]:
        from flowgen.train.loop import Preempted

        failures = []
        for task in tasks:
            os.makedirs(os.path.dirname(task.log), exist_ok=True)
            handler = logging.FileHandler(task.log)
            handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s"))
            log.addHandler(handler)
            try:
                execute(task)
            except Preempted:
                raise
            except Exception as e:  # noqa: BLE001 - a failed task is reported; the others go on
                log.exception("task %s failed", task.label)
                failures.append(Failure(task, task.log, f"{type(e).__name__}: {e}".splitlines()[0]))
            finally:
                log.removeHandler(handler)
                handler.close()
        return failures


class Processes:
    """Each task a subprocess of this one, ``max_parallel`` at a time (output in its log file)."""

    name = "processes"
    OPTIONS = {"max_parallel": 2}

    def __init__(self, max_parallel: int = 2):
        if isinstance(max_parallel, bool) or not isinstance(max_parallel, int) or max_parallel < 1:
            raise ValueError(f"launcher.max_parallel must be an integer >= 1; got {max_parallel!r}")
        self.max_parallel = max_parallel

    def run(self, tasks: list[Task]) -> list[Failure]:
        pending, running, failures = list(tasks), {}, []
        while pending or running:
            while pending and len(running) < self.max_parallel:
                task = pending.pop(0)
                os.makedirs(os.path.dirname(task.log), exist_ok=True)
                with open(task.log, "ab") as out:
                    running[task] = subprocess.Popen(
                        [sys.executable, "-m", "flowgen.sweep.launch", json.dumps(dataclasses.asdict(task))],
                        stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=_same_flowgen())
                log.info("started %s (pid %d), log %s", task.label, running[task].pid, task.log)
            time.sleep(0.2)
            for task, proc in list(running.items()):
                rc = proc.poll()
                if rc is None:
                    continue
                del running[task]
                if rc != 0:
                    what = "stopped by SIGTERM" if rc == EXIT_PREEMPTED else f"exit status {rc}"
                    failures.append(Failure(task, task.log, f"{what}: {_last_error(task.log)}"))
                log.info("%s %s", task.label, "done" if rc == 0 else f"failed (exit status {rc}), log {task.log}")
        return failures


class Submitit:
    """One job array per stage through submitit; ``cluster``: None (SLURM if ``srun`` exists, else local),
    "slurm" or "local" (submitit's local executor: each job a subprocess)."""

    name = "submitit"
    OPTIONS = {"cluster": None, "partition": None, "account": None, "qos": None, "constraint": None,
               "nodes": 1, "tasks_per_node": 1, "gpus_per_node": 0, "cpus_per_task": None, "mem_gb": None,
               "timeout_min": 60, "max_parallel": None, "folder": None}
    CLUSTERS = (None, "slurm", "local", "debug")

    def __init__(self, **options):
        try:
            import submitit  # noqa: F401
        except ImportError:
            raise ValueError("launcher.name='submitit' needs the submitit package: pip install 'flowgen[slurm]' (or "
                             "use launcher.name='local' or 'processes')") from None
        if options.get("cluster") not in self.CLUSTERS:
            raise ValueError(f"launcher.cluster={options['cluster']!r} is not one of: "
                             f"{', '.join(map(str, self.CLUSTERS))}")
        self.options = {**self.OPTIONS, **options}

    def parameters(self) -> dict:
        o = self.options
        params = {"timeout_min": o["timeout_min"], "nodes": o["nodes"], "tasks_per_node": o["tasks_per_node"],
                  "gpus_per_node": o["gpus_per_node"], "name": "flowgen"}
        params.update({k: o[k] for k in ("cpus_per_task", "mem_gb") if o[k] is not None})
        params.update({f"slurm_{k}": o[k] for k in ("partition", "account", "qos", "constraint") if o[k] is not None})
        if o["max_parallel"] is not None:
            params["slurm_array_parallelism"] = o["max_parallel"]
        return params

    def folder(self, workdir: str) -> str:
        return self.options["folder"] or os.path.join(workdir, "logs", "submitit")

    def executor(self, folder: str):
        """submitit's executor for this launcher's cluster and options (jobs' logs in ``folder/JOBID``)."""
        import submitit

        executor = submitit.AutoExecutor(folder=os.path.join(folder, "%j"), cluster=self.options["cluster"])
        executor.update_parameters(**self.parameters())
        return executor

    def run(self, tasks: list[Task]) -> list[Failure]:
        if not tasks:
            return []
        folder = self.folder(tasks[0].workdir)
        executor = self.executor(folder)
        jobs = executor.map_array(SubmititTask(), tasks)
        log.info("submitted %d %s job(s) (array %s) to %s; logs in %s", len(jobs), tasks[0].stage,
                 jobs[0].job_id.split("_")[0], executor.cluster, folder)
        failures = []
        for task, job in zip(tasks, jobs, strict=True):
            try:
                job.result()
            except Exception as e:  # noqa: BLE001 - submitit's FailedJobError etc.: reported with the job's log
                text = str(e).strip().splitlines()
                failures.append(Failure(task, str(job.paths.stdout), (text[-1] if text else type(e).__name__)[:300]))
        return failures


class SubmititTask:
    """The callable of a submitit job: runs one task; on timeout or preemption (submitit's signal) it is
    requeued as is (training resumes from its last checkpoint, cells already written are kept)."""

    def __call__(self, task: Task) -> None:
        import submitit

        logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s", stream=sys.stdout)
        if submitit.JobEnvironment().num_tasks > 1:     # tasks_per_node × nodes > 1: one multi-process JAX run
            import jax

            jax.distributed.initialize()                 # coordinator and process index from SLURM's environment
        execute(task)

    def checkpoint(self, task: Task):
        import submitit

        return submitit.helpers.DelayedSubmission(self, task)


LAUNCHERS = {cls.name: cls for cls in (Local, Processes, Submitit)}


#: The type of every launcher option (for ``defaults``: typed, unset fields that the command line can override).
OPTION_TYPES = {"max_parallel": int, "cluster": str, "partition": str, "account": str, "qos": str, "constraint": str,
                "nodes": int, "tasks_per_node": int, "gpus_per_node": int, "cpus_per_task": int, "mem_gb": float,
                "timeout_min": int, "folder": str}


def defaults():
    """A sweep config's ``launcher`` section: name "local" and every launcher's options unset (None), so that any of
    them can be set on the command line: ``--config.launcher.name=processes --config.launcher.max_parallel=4``."""
    import ml_collections
    from ml_collections.config_dict import placeholder

    return ml_collections.ConfigDict({"name": "local", **{k: placeholder(t) for k, t in OPTION_TYPES.items()}})


def get(options: dict):
    """The launcher of a ``launcher`` section ({"name": ..., option: value}; None = unset); a ValueError names a
    bad name or option and the valid ones."""
    options = {k: v for k, v in dict(options or {}).items() if v is not None}
    name = options.pop("name", None) or "local"
    if name not in LAUNCHERS:
        raise ValueError(f"launcher.name={name!r} is not one of: {', '.join(LAUNCHERS)}")
    cls = LAUNCHERS[name]
    unknown = sorted(set(options) - set(cls.OPTIONS))
    if unknown:
        valid = ", ".join(cls.OPTIONS) or "none"
        raise ValueError(f"launcher options {unknown} do not apply to launcher.name={name!r}; its options: {valid}")
    return cls(**options)


def _same_flowgen() -> dict:
    """This environment, with this process's flowgen first on PYTHONPATH (a subprocess runs the same code)."""
    import flowgen

    root = os.path.dirname(os.path.dirname(os.path.abspath(flowgen.__file__)))
    return {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in (root, os.environ.get("PYTHONPATH")) if p)}


def _last_error(path: str) -> str:
    """The last line of a log that names an error (else its last line)."""
    try:
        with open(path, errors="replace") as f:
            lines = [x.strip() for x in f.read().splitlines()[-200:] if x.strip()]
    except FileNotFoundError:
        return "no log"
    errors = [x for x in lines if "Error" in x or "error" in x or "Exception" in x]
    return (errors or lines or ["empty log"])[-1][:300]


def main(argv: list[str]) -> int:
    """``python -m flowgen.sweep.launch TASK_JSON``: one task in this process; exit 0, EXIT_PREEMPTED, or 1."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s", stream=sys.stdout)
    logging.getLogger("absl").setLevel(logging.WARNING)
    from flowgen.train.loop import Preempted

    task = Task(**json.loads(argv[1]))
    try:
        execute(task)
    except Preempted as e:
        log.warning("%s", e)
        return EXIT_PREEMPTED
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
