"""ImageNet 256×256, class-conditional SiT-XL/2 (Ma, Goldstein, Albergo, Boffi, Vanden-Eijnden & Xie 2024, "SiT:
Exploring Flow and Diffusion-based Generative Models with Scalable Interpolant Transformers"), in the latent space
of sd-vae-ft-mse.

Published: FID 2.06 (FID-50K) for SiT-XL/2 with classifier-free guidance 1.5, sampled by the SDE with the diffusion
coefficient w(t) = σ(t) (the paper's abstract gives the 2.06, reached "by exploring various diffusion coefficients").
Recipe: DiT-XL/2's network, data, optimiser and EMA unchanged (``configs/_imagenet256.py``; the SiT code's defaults:
AdamW 1e-4 constant, weight decay 0, batch 256, EMA 0.9999); the linear interpolant x_t = t·x + (1 − t)·ε (flowgen's
time: t = 0 noise) with the velocity target, t uniform on [0, 1]; 7M training steps (the DiT-XL/2 budget it is
compared with; not re-read in the paper here). Sampling as the SiT code's SDE defaults: Euler–Maruyama, 250 steps,
w(t) = σ(t) with norm 1 (``sample.solver_options = {"diffusion": "sigma"}``; in flowgen's drift
α̇·x̂ + (σ̇ − ½·w/σ)·ε̂ with σ = 1 − t, the same coefficient as SiT's w_t = σ_t in its reversed time), no noise on the
last step, guidance 1.5. The deterministic alternative is
``--config.sample.solver=heun --config.sample.solver_options={}`` (or ``dopri5``, the SiT code's ODE default); its
published number is not restated here.

Network: 674.8 M parameters (the same DiT-XL/2 as ``imagenet256_dit.py``); the SiT code prints 675,129,632 for the
same two reasons stated there: its ``learn_sigma=True`` final layer keeps 8 output channels and discards the last 4
(18,448 parameters), and its frozen positional embedding is a parameter (294,912).

Departures, stated: the SiT code's SDE sampler ends with a "Mean" step of width 0.04 (its ``last_step_size``
default) and keeps its grid away from the ends; flowgen's Euler–Maruyama runs a uniform grid over [0, 1] whose last
step (width 0.004) adds no noise.
Guidance is applied to all 4 latent channels (the SiT code, like DiT's, guides the first 3 by default).

Commands: encode ImageNet as in ``imagenet256_dit.py`` (``python -m flowgen.latents ... --protocol=adm``), then

    python -m flowgen.main --config=configs/imagenet256_sit.py --workdir=workdirs/imagenet256_sit
    python -m flowgen.main --config=configs/imagenet256_sit.py --workdir=workdirs/imagenet256_sit --mode=sample \\
        --config.sample.num_samples=50000        # then FID on the decoded images (docs/evaluation.md)

Variant ``small``: mock latents, a tiny DiT, 2 steps (``configs/_imagenet256.py``).
"""

from flowgen.train.config import load_config_module

_base = load_config_module(__file__, "_imagenet256")
VARIANTS = _base.VARIANTS


def get_config(variant: str = ""):
    c = _base.base(variant)
    c.path.name = "linear"
    c.loss.target = "velocity"
    c.loss.time_sampler = "uniform"
    c.sample.solver = "euler_maruyama"
    c.sample.solver_options = {"diffusion": "sigma", "diffusion_scale": 1.0}
    _base.dit_steps(c, variant)              # 7M training steps, 250 sampling steps on a uniform grid
    return c
