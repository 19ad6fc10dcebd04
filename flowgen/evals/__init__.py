"""Evaluation: FID with the FID Inception-v3 in JAX (``inception``, ``fid``; weights from ``inception_weights``),
digits-FID for 8×8 digits (``digits_fid``), sample metrics for low-dimensional data (``sample_metrics``) and
log-likelihood / bits per dimension through the probability-flow ODE (``likelihood``)."""
