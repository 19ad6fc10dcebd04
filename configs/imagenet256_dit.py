"""ImageNet 256×256, class-conditional DiT-XL/2 (Peebles & Xie 2023, "Scalable Diffusion Models with Transformers"),
in the latent space of sd-vae-ft-mse.

Published: FID 2.27 (50k samples) for DiT-XL/2 with classifier-free guidance 1.5, the paper's best ImageNet-256
model (its abstract; the 2.27 model is the one trained longest, 7M steps, a count this repository did not re-read
in the paper). Training as the paper describes it: AdamW with a constant learning rate of 1e-4 and no weight decay,
batch 256, random horizontal flips only, EMA 0.9999 (settings shared with the other ImageNet recipes,
``configs/_imagenet256.py``); DDPM's 1000-step linear β schedule from 1e-4 to 0.02, i.e. the continuous VP path
with β from 0.1 to 20 (``vp_linear``), the network predicting the noise with DDPM's plain ε-loss ("snr" weighting:
uniform in noise space), t uniform; samples by 250 DDPM (ancestral) steps with guidance 1.5.

Network: 674.8 M parameters (``--mode=describe``; 674,816,272 = ``dit_param_count(1152, 28, 2, 4, 1000)``). The DiT
code prints 675,129,632 for DiT-XL/2. The difference, 313,360, is exactly two things (tests/test_imagenet_recipes.py):
(1) its final layer has 8 output channels per pixel (``learn_sigma``: the noise and the variance interpolation v),
ours 4: D·p²·4 + p²·4 = 1152·16 + 16 = 18,448 parameters of ``final_layer.linear``; (2) its fixed sin-cos
positional embedding is stored as a frozen parameter of 256 tokens × 1152 = 294,912 numbers, ours is a constant.

Departure, stated: DiT learns the reverse-process variance Σ as well (the extra output channels, trained by the
variational bound L_vlb beside L_simple, as Nichol & Dhariwal 2021) and samples with it; flowgen predicts only the
mean (the noise) and samples with the fixed DDPM posterior variance β̃ (DDIM's η = 1, ``sample.solver_options``).
This changes the sampler's per-step noise, not the training of the mean: DiT's L_simple is our loss. With 250
steps the two variances differ little (Nichol & Dhariwal found learned Σ matters most for few steps), but the
2.27 is not reproduced by construction. Guidance is applied to all 4 latent channels (the DiT code's sampler guides
only the first 3 by default, "for exact reproducibility" of its own numbers).

Commands (paths are examples):

    # 1. encode ImageNet once (needs ImageNet as TFDS ArrayRecord and the sd-vae-ft-mse folder, docs/latent.md)
    python -m flowgen.latents --dataset=imagenet2012 --split=train --autoencoder=sd-vae-ft-mse \\
        --resolution=256 --protocol=adm --out=latents/imagenet256_sd-vae-ft-mse
    # 2. train (the 400K-step runs of the paper's ablations: --config.train.num_steps=400000)
    python -m flowgen.main --config=configs/imagenet256_dit.py --workdir=workdirs/imagenet256_dit
    # 3. 50k decoded samples at guidance 1.5, then FID against ADM's ImageNet-256 reference batch
    python -m flowgen.main --config=configs/imagenet256_dit.py --workdir=workdirs/imagenet256_dit --mode=sample \\
        --config.sample.num_samples=50000
    python -m flowgen.evals.fid workdirs/imagenet256_dit/samples/sample_step7000000_*.npz REFERENCE.npz
    # REFERENCE: ImageNet-256 reference images made by the same ADM crop, or their statistics (docs/evaluation.md)

``--mode=describe --config.data.mock=True`` counts the network without the encoded data (shape declared).
Variant ``small``: mock latents, a tiny DiT, 2 steps (``configs/_imagenet256.py``).
"""

from flowgen.train.config import load_config_module

_base = load_config_module(__file__, "_imagenet256")
VARIANTS = _base.VARIANTS


def get_config(variant: str = ""):
    c = _base.base(variant)
    c.path.name = "vp_linear"                # β 0.1 → 20: DDPM's linear schedule in continuous time
    c.loss.target = "noise"
    c.loss.weighting = "snr"                 # DDPM's L_simple, uniform in noise space
    c.loss.time_sampler = "uniform"
    c.sample.solver = "ddim"
    c.sample.solver_options = {"eta": 1.0}   # DDPM's ancestral sampler (posterior variance β̃)
    _base.dit_steps(c, variant)              # 7M training steps, 250 sampling steps on a uniform grid
    return c
