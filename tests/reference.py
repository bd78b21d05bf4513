"""Independent numpy references for the tests: the schedule as improved-diffusion's `GaussianDiffusion.__init__`.

Built from diffusers' ᾱ table (`scheduler.alphas_cumprod`, the ᾱ_t that `add_noise` and `step` use), with
β_t = 1 − ᾱ_t/ᾱ_{t−1}, in float64 — never through the package's own tables.
"""

from __future__ import annotations

import numpy as np


def np_schedule(scheduler) -> dict[str, np.ndarray]:
    ac = scheduler.alphas_cumprod.double().numpy()
    ac_prev = np.append(1.0, ac[:-1])
    alphas = ac / ac_prev
    betas = 1.0 - alphas
    post_var = betas * (1.0 - ac_prev) / (1.0 - ac)
    post_var_clipped = np.append(post_var[1], post_var[1:])  # β̃ at t = 1 reused at t = 0
    return {
        "betas": betas,
        "alphas": alphas,
        "ac": ac,
        "ac_prev": ac_prev,
        "a": np.sqrt(ac),
        "s": np.sqrt(1.0 - ac),
        "snr": ac / (1.0 - ac),
        "coef1": np.sqrt(ac_prev) * betas / (1.0 - ac),
        "coef2": np.sqrt(alphas) * (1.0 - ac_prev) / (1.0 - ac),
        "post_var": post_var,
        "post_var_clipped": post_var_clipped,
        "logvar_clipped": np.log(post_var_clipped),
        "var_fixed_small": post_var_clipped,
        "var_fixed_large": np.append(post_var[1], betas[1:]),  # improved-diffusion's fixed_large
    }
