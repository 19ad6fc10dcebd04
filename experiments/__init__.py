"""Experiments: sweep configs (``get_config()``) run by ``python -m flowgen.main --mode=sweep``, and reproductions.

    python -m flowgen.main --mode=sweep --config=experiments/analytic_sweep.py --workdir=results/analytic_sweep
"""
