"""Evaluation: sample metrics for low-dimensional data (``sample_metrics``), digits-FID (``digits_fid``) and
log-likelihood / bits per dimension through the probability-flow ODE (``likelihood``)."""
