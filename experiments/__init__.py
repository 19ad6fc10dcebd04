"""Experiments: sweeps over paths × solvers × NFE that write a results table (CSV/Markdown/JSON) and plots.

    python -m experiments.analytic_sweep            # NFE vs. quality of every solver on the exact 2-D mixture
"""
