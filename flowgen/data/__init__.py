"""Data: 2-D toy sets (``toy``), scikit-learn's digits as a TFDS dataset (``digits``) and the TFDS + grain image
pipeline (``pipeline``).

Only the toy sets are imported here; ``flowgen.data.digits`` and ``flowgen.data.pipeline`` import
tensorflow_datasets and grain, so import them where image data are needed.
"""

from flowgen.data.toy import MIXTURE_DATASETS, TOY_DATASETS, toy_batch, toy_mixture, toy_sampler

__all__ = ["MIXTURE_DATASETS", "TOY_DATASETS", "toy_batch", "toy_mixture", "toy_sampler"]
