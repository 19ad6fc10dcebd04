"""Evaluation: FID with the FID Inception-v3 in JAX (``inception``, ``fid``; weights from ``inception_weights``),
digits-FID for 8×8 digits (``digits_fid``: also its floor at any sample count, KID, precision/recall and the
legible fraction), KID and precision/recall on any features (``feature_metrics``), sample metrics for low-dimensional data (``sample_metrics``) and
log-likelihood / bits per dimension through the probability-flow ODE (``likelihood``)."""
