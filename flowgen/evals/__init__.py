"""Evaluation: sample-quality metrics (FID and likelihood evaluation are on the roadmap, DESIGN.md)."""
