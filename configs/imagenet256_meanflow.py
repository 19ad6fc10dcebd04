"""ImageNet 256×256, class-conditional MeanFlow-XL/2 (Geng, Deng, Bai, Kolter & He 2025, "Mean Flows for One-step
Generative Modeling"), in the latent space of sd-vae-ft-mse, sampled in one step.

Published: FID 3.43 at 1 NFE (50k samples, trained from scratch; the paper's abstract). Recipe: the data and
optimiser of the other ImageNet recipes (``configs/_imagenet256.py``: 32×32×4 sd-vae-ft-mse latents, AdamW 1e-4
constant, batch 256, EMA 0.9999); DiT-XL/2 with the interval h = r − t as a second time input (MeanFlow's
``extra_times``: a second timestep embedder of 1152·256 + 1152 + 1152² + 1152 = 1,624,320 parameters, so
676.4 M parameters); the linear path; from flowgen/methods/meanflow.py's reading of the paper's ablations (its
Table 1): 25 % of each batch with r ≠ t, (t, r) logit-normal (−0.4, 1.0) in the paper's time, i.e. m = 0.4, s = 1
in flowgen's, adaptive weighting p = 1.0 (its ImageNet value), c = 1e-3; 240 epochs = 1,201,094 steps at batch 256.
Sampler: the method's own, 1 jump (1 NFE), from the EMA. The epochs and the optimiser were not re-read in the paper
here (only its abstract was reachable): they are the settings of the DiT/SiT recipes, to be checked against the
paper's configuration table before a run meant to reproduce it.

Departures, stated: (1) **no classifier-free guidance**: the paper's 3.43 trains guidance into the target (the
velocity in the MeanFlow target is a mix of the conditional and unconditional predictions with a weight ω fixed in
training); flowgen's MeanFlow has no such option (``MeanFlow.guidable = False``), so this recipe trains the plain
class-conditional MeanFlow with label dropout 0.1 and samples unguided: expect a worse FID than 3.43 (this is not
a reproduction of it). (2) Time features of 1·t, not DiT's 1000·t (``time_scale = 1``): the loss differentiates the
network in t and h (see flowgen/methods/meanflow.py). (3) The network takes (t, h = r − t), the pair the paper's
ablation found slightly better, not (t, r).

Commands: encode ImageNet as in ``imagenet256_dit.py`` (``python -m flowgen.latents ... --protocol=adm``), then

    python -m flowgen.main --config=configs/imagenet256_meanflow.py --workdir=workdirs/imagenet256_meanflow
    python -m flowgen.main --config=configs/imagenet256_meanflow.py --workdir=workdirs/imagenet256_meanflow \\
        --mode=sample --config.sample.num_samples=50000     # 1 NFE; then FID on the decoded images

Variant ``small``: mock latents, a tiny DiT with the h input, 2 steps (``configs/_imagenet256.py``).
"""

from flowgen.train.config import load_config_module

_base = load_config_module(__file__, "_imagenet256")
VARIANTS = _base.VARIANTS


def get_config(variant: str = ""):
    c = _base.base(variant)
    c.model.kwargs = {**c.model.kwargs, "time_scale": 1.0}
    c.path.name = "linear"
    c.method.name = "meanflow"
    c.method.kwargs = {"ratio": 0.25, "p": 1.0, "c": 1e-3}
    c.loss.target = "velocity"
    c.loss.time_sampler = "logit_normal"
    c.loss.time_sampler_options = {"m": 0.4, "s": 1.0}
    c.train.num_steps = _base.steps_for_epochs(240)
    c.sample.solver = "meanflow"
    c.sample.num_steps = 1
    c.sample.guidance = None                 # guidance is trained into the target in the paper: not implemented
    if variant == "small":
        c.train.num_steps = 2
    return c
