"""``configs/toy2d_rf.py`` with exact minibatch OT (used by ``benchmarks/ot_coupling.py``): data 8gaussians from
N(0, I), MLP 3×64; the variant names the assignment solver: ``--config=benchmarks/ot_coupling_config.py:auction``,
and ``+host<N>`` solves it on the host ahead of the step in N threads (``coupling_options.host_threads``), e.g.
``:emd+host2``."""

import importlib.util
import os


def get_config(variant: str = "emd"):
    path = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "configs", "toy2d_rf.py")
    spec = importlib.util.spec_from_file_location("flowgen_config_toy2d_rf", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    c = module.get_config()
    c.data.name = "8gaussians"
    c.model.kwargs = {"hidden": 64, "depth": 3}
    c.loss.coupling = "ot"
    solver, _, host = (variant or "emd").partition("+host")
    c.loss.coupling_options = {"solver": solver, "host_threads": int(host or 0)}
    c.train.sample_every = 0
    return c
