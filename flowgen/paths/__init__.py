"""Probability paths ``x_t = α(t)·x_data + σ(t)·noise`` (t = 0 noise, t = 1 data) and prediction targets.

``get(name, **kwargs)`` builds a path by name from the explicit table ``PATHS``.
"""

from __future__ import annotations

from flowgen.paths import conventions
from flowgen.paths.schedules import (
    AffinePath,
    Coefficients,
    LinearPath,
    Path,
    SubVPPath,
    TrigPath,
    VEPath,
    VPCosinePath,
    VPLinearPath,
)
from flowgen.paths.targets import TARGETS, Denoised, check_target, convert, from_denoised, to_denoised

PATHS: dict[str, type[Path]] = {
    "linear": LinearPath,
    "vp_linear": VPLinearPath,
    "vp_cosine": VPCosinePath,
    "ve": VEPath,
    "sub_vp": SubVPPath,
    "trig": TrigPath,
    "custom": AffinePath,
}


def get(name: str | Path, **kwargs) -> Path:
    """A path by name (``"linear"``, ``"vp_linear"``, ...) with optional keyword overrides; a Path passes through."""
    if isinstance(name, Path):
        if kwargs:
            raise ValueError(f"keyword arguments {sorted(kwargs)} given with a Path instance {name!r}")
        return name
    from flowgen import options

    return options.build(PATHS, name, "path", kwargs)


__all__ = [
    "PATHS", "TARGETS", "AffinePath", "Coefficients", "Denoised", "LinearPath", "Path", "SubVPPath", "TrigPath",
    "VEPath", "VPCosinePath", "VPLinearPath", "check_target", "conventions", "convert", "from_denoised", "get",
    "to_denoised",
]
