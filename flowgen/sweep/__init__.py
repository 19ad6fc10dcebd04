"""NFE-vs-quality sweeps of trained or analytic models: ``flowgen.sweep.runner.run(config, workdir)``.

Modules: spec (the config and its checks), budget (NFE budget → steps), metrics (the metric table), store (one
file per cell, written once), runner (training, sampling, scoring), report (CSV, Markdown, plots)."""
