"""``prepare(name, data_dir)``: what ``python -m flowgen.main --mode=prepare`` runs.

- toy sets (``flowgen.data.toy``): nothing to prepare, they are sampled on the fly;
- ``flowgen_digits``: written from scikit-learn's copy, offline, in about a second;
- the TFDS catalogue datasets (``flowgen.data.pipeline.IMAGE_DATASETS``): downloaded and written as ArrayRecord by
  TFDS's own builder. That needs internet access (and TensorFlow, with which TFDS's builders encode images): run it
  on such a machine and copy ``data_dir/<dataset>`` to where training reads it.

Idempotent: a dataset already prepared in ``data_dir`` is left as it is.
"""

from __future__ import annotations

import logging
import os
import socket

from flowgen.data.toy import TOY_DATASETS

# TFDS fetches catalogue datasets through its Google Cloud Storage mirror first; without a network TFDS's own
# download would hang for minutes before failing, so probe it first and fail within seconds.
_PROBE = ("storage.googleapis.com", 443)


def _require_network(name: str, data_dir: str, timeout: float = 5.0) -> None:
    try:
        socket.create_connection(_PROBE, timeout=timeout).close()
    except OSError as e:
        raise ConnectionError(
            f"cannot prepare {name!r}: no network ({type(e).__name__}: {e}). Run the same command on a machine with "
            f"internet access (and TensorFlow installed, which TFDS's builders use to encode images), then copy "
            f"{os.path.join(data_dir, name)} into this machine's data_dir."
        ) from e


def prepare(name: str, data_dir: str | os.PathLike | None = None) -> str | None:
    """Prepare dataset ``name`` in ``data_dir`` (TFDS's default if None); returns its folder (None for toy sets)."""
    if name in TOY_DATASETS:
        logging.info("%s is a 2-D toy set sampled on the fly: nothing to prepare", name)
        return None
    import tensorflow_datasets as tfds

    from flowgen.data import digits, pipeline

    spec = pipeline.dataset_spec(name)  # ValueError listing the supported names
    data_dir = pipeline.resolve_data_dir(data_dir)
    if spec.tfds_name == digits.NAME:
        folder = digits.prepare_digits(data_dir)
    else:
        _require_network(name, data_dir)
        builder = tfds.builder(spec.tfds_name, data_dir=data_dir, file_format="array_record")
        builder.download_and_prepare()
        folder = os.fspath(builder.data_dir)
    logging.info("%s is ready in %s", name, folder)
    return folder
