"""CIFAR-10 2-rectified flow and its one-step distillation (Liu, Gong & Liu 2023, "Flow Straight and Fast", ICLR).

Published (Table 1a: DDPM++ U-Net, unconditional, 50k samples): distilled to one step (1 NFE), 2-RF + distill FID
**4.85**, IS 9.01, recall 0.50 (1-RF + distill 6.18 / IS 9.08; 3-RF + distill 5.21 / IS 8.79, recall 0.51); at one
Euler step without distillation, 1-RF 378, 2-RF 12.21, 3-RF 8.15; solved with RK45, 1-RF 2.58 (recall 0.57, NFE 127)
and 2-RF 3.36 (recall 0.54, NFE 110). (Numbers we could confirm in two sources or the paper's text; the table's other
cells are not repeated here.)

The recipe, five commands (the 1-RF teacher is ``configs/cifar10_rf.py``, the authors' 1-RF settings):

    python -m flowgen.main --config=configs/cifar10_rf.py --workdir=workdirs/cifar10_1rf
    python -m flowgen.reflow --teacher=workdirs/cifar10_1rf --out=pairs/cifar10_1rf.npz \\
        --num_pairs=4000000 --solver=dopri5 --num_steps=1 --chunk=2048
    python -m flowgen.main --config=configs/cifar10_reflow.py:2rf --workdir=workdirs/cifar10_2rf
    python -m flowgen.reflow --teacher=workdirs/cifar10_2rf --out=pairs/cifar10_2rf.npz \\
        --num_pairs=4000000 --solver=dopri5 --num_steps=1 --chunk=2048
    python -m flowgen.main --config=configs/cifar10_reflow.py:distill --workdir=workdirs/cifar10_2rf_distill

Each stage starts from its teacher's raw parameters, as the authors fine-tune (``train.init_from``: 2-RF from
workdirs/cifar10_1rf, the distilled model from workdirs/cifar10_2rf; every EMA restarts from them, the optimiser and
its warm-up afresh). ``--config.data.kwargs.file=FILE`` and ``--config.train.init_from=WORKDIR`` point a variant
elsewhere. Pairs: 4M per stage, x₁ = Φ(x₀) of the teacher's EMA by ``dopri5`` at rtol = atol = 1e-5 (Dormand–Prince
5(4), the method of scipy's RK45, at the authors' tolerance), from t = 0 (the authors start at 1e-3). 4M pairs take
98 GB (x_data and noise, float32): they are memory-mapped and fed from the host (``HostPairsInput``, as is any set
over ``data.kwargs.device_max_mb`` = 64 MiB).

Variants (settings of the authors' code, RectifiedFlow's cifar10_rf_gaussian_reflow_train and _distill_k=1 configs,
read, not copied):
- ``2rf`` (or ``""``): flow matching with the coupling ``given`` on the 1-RF pairs; uniform t, linear path, velocity
  target; the DDPM++ U-Net of the 1-RF with dropout 0.1; Adam lr 2e-4, 5000 warm-up steps, grad clip 1; batch 128;
  EMA 0.9999; 1.3M steps (the code's default iteration count, which its reflow configs keep). Sampler: 1 Euler step
  (``--config.sample.solver=dopri5`` for the RK45 row).
- ``distill``: ``method.name = "distill"`` on the 2-RF pairs: the network at t = 0 regressed onto x₁ − x₀, sampled
  in one step (``one_step``, 1 NFE); otherwise as ``2rf``.
- ``small``, ``distill_small``: a tiny U-Net from a fresh initialisation, 2 steps at batch 8 on pairs fed from the
  host, for smoke runs (CI runs them on mock pairs of CIFAR-10's shape). On a real chain:

    python -m flowgen.main --config=configs/cifar10_rf.py:small --workdir=workdirs/rf_small
    python -m flowgen.reflow --teacher=workdirs/rf_small --out=pairs/cifar10_small.npz --num_pairs=64 \\
        --solver=euler --num_steps=2 --chunk=32
    python -m flowgen.main --config=configs/cifar10_reflow.py:small --workdir=workdirs/2rf_small \\
        --config.data.kwargs.file=pairs/cifar10_small.npz

Departures, stated: the authors' distillation loss is LPIPS; here it is the squared error (LPIPS needs pretrained
VGG/AlexNet weights that flowgen does not ship). Distillation at t = 0, not 1e-3. A batch's pairs are drawn with
replacement (``pair_indices``), the authors' without (``randperm``).
"""

from flowgen.train.config import load_config_module, on_pairs

_rf = load_config_module(__file__, "cifar10_rf")

#: The variants (``get_config("")`` is ``2rf``); ``tests/test_configs_smoke.py`` trains those ending in "small".
VARIANTS = ("2rf", "distill", "small", "distill_small")
#: The data set whose pairs these are: CIFAR-10's element shape for mock pairs in tests.
PAIRS_OF = "cifar10"
#: Where each stage's pairs are (``python -m flowgen.reflow --out=...`` above) and the workdir it starts from.
PAIRS_FILES = {"2rf": "pairs/cifar10_1rf.npz", "distill": "pairs/cifar10_2rf.npz"}
TEACHERS = {"2rf": "workdirs/cifar10_1rf", "distill": "workdirs/cifar10_2rf"}


def get_config(variant: str = ""):
    if variant not in ("", *VARIANTS):
        raise ValueError(f"unknown variant {variant!r}; valid: '', {', '.join(repr(v) for v in VARIANTS)}")
    stage = "distill" if variant.startswith("distill") else "2rf"
    c = on_pairs(_rf.get_config(), PAIRS_FILES[stage])
    c.data.random_flip = False                  # a pair is (x₀, Φ(x₀)): flipping x_data alone would break it
    c.model.kwargs = {**c.model.kwargs, "dropout": 0.1}
    c.ema.decays = (0.9999,)
    c.train.num_steps = 1_300_000
    c.train.init_from, c.train.init_params = TEACHERS[stage], "params"
    c.sample.ema = "ema"
    c.sample.solver, c.sample.num_steps, c.sample.grid = "euler", 1, "uniform"
    if stage == "distill":
        c.method.name = "distill"
        c.sample.solver = "one_step"
    if variant.endswith("small"):
        _rf.shrink_for_smoke_test(c)
        c.train.init_from = ""                  # a fresh tiny network (the smoke chain's teacher is another one)
        c.data.mock = False                     # pairs, not TFDS records
        c.data.kwargs = {"file": "pairs/cifar10_small.npz", "device_max_mb": 0.0}   # host-fed, as the 4M pairs
        c.model.kwargs = {"ch": 16, "ch_mult": (1,), "num_res_blocks": 1, "attn_resolutions": (), "dropout": 0.1,
                          "num_groups": 8}
        c.sample.solver, c.sample.num_steps = ("one_step", 1) if stage == "distill" else ("euler", 1)
    return c
