"""The default config file of ``python -m flowgen.main`` when no --config is given: ``base_config()`` (rectified flow
on the 2-D circle of Gaussians). It lets ``--mode=prepare --config.data.name=NAME`` work without a config file."""

from flowgen.train.config import base_config


def get_config(variant: str = ""):
    if variant:
        raise ValueError(f"the default config has no variants; got {variant!r}")
    return base_config()
