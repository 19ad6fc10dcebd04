"""Keep JAX's "no libtpu on this machine" INFO record out of flowgen's logs.

When ``JAX_PLATFORMS`` is unset JAX tries every backend it knows, the TPU one first; on a machine without libtpu
(any CPU or GPU machine) that attempt fails quietly and JAX logs, at INFO level on ``jax._src.xla_bridge``::

    Unable to initialize backend 'tpu': INTERNAL: Failed to open libtpu.so: libtpu.so: cannot open shared object
    file: No such file or directory

flowgen's command line logs INFO records, so every command printed that line first. ``quiet_missing_libtpu`` adds a
``logging.Filter`` to that one logger which drops exactly this record: the TPU backend, and the dynamic loader not
finding a file named ``libtpu.so`` (JAX tries the bare name only when neither the ``libtpu`` package nor
``TPU_LIBRARY_PATH`` gives a path). Nothing else changes:

- backend choice is JAX's own: nothing sets ``JAX_PLATFORMS``, so GPU and TPU machines pick their accelerator as
  before, and an explicit ``JAX_PLATFORMS`` (``tpu`` included) is honoured; a requested backend that fails raises
  JAX's error, which no log filter touches;
- every other record passes: other backends' failures, a libtpu that exists but fails to load or finds no TPU, and
  JAX's WARNINGs (e.g. "A Google TPU may be present on this machine, but ... libtpu is not installed", or the same
  for an NVIDIA GPU without a CUDA jaxlib), which ``JAX_PLATFORMS=cpu`` would have silenced.

It works whether or not JAX is imported yet (the filter sits on the named logger, which JAX fetches by the same
name), but must run before JAX initialises its backends; ``import flowgen`` runs it first thing, and
``python -m flowgen.main`` imports the package before its module.
"""

from __future__ import annotations

import logging

LOGGER = "jax._src.xla_bridge"


class MissingLibtpuFilter(logging.Filter):
    """Drops the INFO record of JAX's TPU backend failing because no file ``libtpu.so`` exists; passes all else."""

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno != logging.INFO:
            return True
        message = record.getMessage()
        return not (message.startswith("Unable to initialize backend 'tpu':")
                    and "libtpu.so: cannot open shared object file: No such file or directory" in message)


def quiet_missing_libtpu() -> None:
    """Adds ``MissingLibtpuFilter`` to JAX's backend logger, once."""
    logger = logging.getLogger(LOGGER)
    if not any(isinstance(f, MissingLibtpuFilter) for f in logger.filters):
        logger.addFilter(MissingLibtpuFilter())
