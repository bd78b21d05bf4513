"""What the study measures on one model: samples (respaced DDPM or DDIM), FID with its own sampling noise, the fast
bits/dim, the full bound, and nearest-neighbour distances to the training set.

FID is on the digits classifier's 128-d features against all 360 held-out digits; its own noise is the standard
deviation of the FID over bootstrap resamples of the generated images' features (the reference fixed).
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from ddpm_objectives_hf.evaluation.fid import frechet_distance


# ---------------------------------------------------------------------------------------------------- reference data
@dataclass
class Reference:
    """The digits every measurement compares with, loaded once per process.

    Attributes:
        heldout (`torch.Tensor`): the 360 held-out digits, [N, 1, 8, 8] in [−1, 1] (bits/dim).
        heldout01 (`torch.Tensor`): the same in [0, 1] (FID, distances).
        train01 (`torch.Tensor`): the 1,437 training digits in [0, 1].
        extractor: the digits classifier's feature network (`DigitsFeatureExtractor`).
        heldout_features, train_features (`torch.Tensor`): its float64 features of both sets.
        feature_info (`dict`): what `load_digits_classifier` says about it (accuracy, weights fingerprint).
    """

    heldout: torch.Tensor
    heldout01: torch.Tensor
    train01: torch.Tensor
    extractor: torch.nn.Module
    heldout_features: torch.Tensor
    train_features: torch.Tensor
    feature_info: dict

    @property
    def heldout_stats(self) -> tuple[torch.Tensor, torch.Tensor]:
        return gaussian_stats(self.heldout_features)


def load_digits(split: str) -> torch.Tensor:
    """A digits split as evaluate.py and train.py read it (the fixed split of ``load_digits_split``), [N, 1, 8, 8] in
    [−1, 1]: uint8 x ↦ x / 127.5 − 1."""
    from ddpm_objectives_hf.data import load_digits_split

    images, _ = load_digits_split(split)
    return torch.from_numpy(images).float().div(127.5).sub(1).unsqueeze(1)


def load_reference(device: str | torch.device = "cpu") -> Reference:
    from ddpm_objectives_hf.evaluation.features import DigitsFeatureExtractor, load_digits_classifier

    heldout, train = load_digits("test"), load_digits("train")
    classifier, info = load_digits_classifier(device=device)
    extractor = DigitsFeatureExtractor(classifier)
    heldout01, train01 = (heldout + 1) / 2, (train + 1) / 2
    return Reference(
        heldout=heldout.to(device),
        heldout01=heldout01,
        train01=train01,
        extractor=extractor,
        heldout_features=features_of(extractor, heldout01),
        train_features=features_of(extractor, train01),
        feature_info={k: info.get(k) for k in ("test_accuracy", "version", "seed", "weights_sha256")},
    )


# ---------------------------------------------------------------------------------------------------- FID
@torch.no_grad()
def features_of(extractor: torch.nn.Module, images01: torch.Tensor, batch_size: int = 512) -> torch.Tensor:
    """float64 CPU features of images in [0, 1]."""
    device = next(extractor.parameters(), torch.empty(0)).device
    parts = [
        extractor(images01[i : i + batch_size].to(device)).double().cpu() for i in range(0, len(images01), batch_size)
    ]
    return torch.cat(parts)


def gaussian_stats(features: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean and unbiased covariance (divisor N − 1) of [N, d] features, as FID uses them."""
    features = features.double()
    mean = features.mean(0)
    centred = features - mean
    return mean, centred.T @ centred / (len(features) - 1)


def fid_from_features(reference: tuple[torch.Tensor, torch.Tensor], features: torch.Tensor) -> float:
    """FID = the Fréchet distance between the reference Gaussian and that of ``features`` (fid.frechet_distance)."""
    mean, cov = gaussian_stats(features)
    return float(frechet_distance(reference[0], reference[1], mean, cov))


def bootstrap_fid(
    reference: tuple[torch.Tensor, torch.Tensor], features: torch.Tensor, num_resamples: int, seed: int = 0
) -> dict:
    """FID over ``num_resamples`` resamples (with replacement) of the generated features: its standard deviation is
    the FID's own sampling noise at this number of generated images (resampling repeats images, so the bootstrap
    mean sits above the FID; only the spread is used)."""
    generator = torch.Generator().manual_seed(seed)
    n = len(features)
    values = [
        fid_from_features(reference, features[torch.randint(0, n, (n,), generator=generator)])
        for _ in range(num_resamples)
    ]
    mean = sum(values) / len(values)
    std = math.sqrt(sum((v - mean) ** 2 for v in values) / max(len(values) - 1, 1))
    return {"std": std, "mean": mean, "resamples": num_resamples}


# ---------------------------------------------------------------------------------------------------- models
def load_model(model_dir: Path, ema_file: Path | None = None, device: str | torch.device = "cpu"):
    """``(unet, objective scheduler, sampling scheduler config)`` of a run's final pipeline, with the EMA weights of
    ``ema_file`` (an earlier step of the same run) loaded instead when given."""
    from diffusers import DDPMScheduler
    from safetensors.torch import load_file

    from ddpm_objectives_hf.training.pipelines import load_for_evaluation

    unet, scheduler, _ = load_for_evaluation(str(model_dir), device)
    if ema_file is not None:
        state = load_file(str(ema_file))
        missing = set(dict(unet.named_parameters())) - set(state)
        if missing:
            raise ValueError(f"{ema_file} lacks {sorted(missing)[:3]} ...")
        unet.load_state_dict(state, strict=False)  # parameters only; buffers come with the pipeline
    sampling_config = dict(DDPMScheduler.load_config(str(model_dir), subfolder="scheduler"))
    return unet.eval(), scheduler, sampling_config


def extract_ema(checkpoint: Path, unet: torch.nn.Module, out_file: Path) -> None:
    """The EMA weights of an accelerate checkpoint of train.py (the registered object whose state has
    ``shadow_params``, read with ``weights_only=True``) as a safetensors file of ``unet``'s parameter names."""
    from safetensors.torch import save_file

    from ddpm_objectives_hf.files import atomic_write

    names = [name for name, _ in unet.named_parameters()]
    for path in sorted(checkpoint.glob("custom_checkpoint_*.pkl")):
        state = torch.load(path, map_location="cpu", weights_only=True)
        if isinstance(state, dict) and "shadow_params" in state:
            shadow = state["shadow_params"]
            if len(shadow) != len(names):
                raise ValueError(f"{path}: {len(shadow)} EMA tensors for {len(names)} UNet parameters")
            tensors = {n: t.detach().float().contiguous() for n, t in zip(names, shadow)}
            atomic_write(out_file, lambda p, tensors=tensors: save_file(tensors, p))
            return
    raise FileNotFoundError(f"{checkpoint} holds no EMA state (was the run trained with --use_ema?)")


@torch.no_grad()
def generate(
    unet,
    sampling_config: dict,
    sampler: str,
    num_steps: int,
    num_samples: int,
    seed: int,
    batch_size: int = 512,
) -> tuple[torch.Tensor, int]:
    """``num_samples`` images in [0, 1] with diffusers' ``DDPMScheduler`` respaced to ``num_steps`` (its own
    ``set_timesteps``; a learned variance is interpolated on the respaced β, as in Nichol & Dhariwal 2021) or
    ``DDIMScheduler`` (η = 0; a learned variance channel is dropped). Returns ``(images, network image-evaluations)``.
    """
    from diffusers import DDIMScheduler, DDPMScheduler
    from diffusers.utils.torch_utils import randn_tensor

    if sampler not in ("ddpm", "ddim"):
        raise ValueError(f"sampler must be 'ddpm' or 'ddim', got {sampler!r}")
    scheduler = (DDPMScheduler if sampler == "ddpm" else DDIMScheduler).from_config(sampling_config)
    scheduler.set_timesteps(num_steps)
    device = unet.device
    channels, size = unet.config.in_channels, unet.config.sample_size
    generator = torch.Generator(device=device).manual_seed(seed)
    out = []
    for first in range(0, num_samples, batch_size):
        n = min(batch_size, num_samples - first)
        x = randn_tensor((n, channels, size, size), generator=generator, device=device)
        for t in scheduler.timesteps:
            prediction = unet(x, t).sample
            if sampler == "ddim":
                x = scheduler.step(prediction[:, :channels], t, x, eta=0.0).prev_sample
            else:
                x = scheduler.step(prediction, t, x, generator=generator).prev_sample
        out.append((x / 2 + 0.5).clamp(0, 1).float().cpu())
    return torch.cat(out), num_samples * len(scheduler.timesteps)


def sample_and_score(
    unet, sampling_config: dict, reference: Reference, *, sampler: str, num_steps: int, num_samples: int, seed: int,
    bootstrap: int, samples_file: Path | None = None,
) -> dict:  # fmt: skip
    """Samples, their FID against the held-out digits with its bootstrap noise, and the classifier's view."""
    import numpy as np

    from ddpm_objectives_hf.evaluation.features import classifier_view

    start = time.perf_counter()
    samples, evaluations = generate(unet, sampling_config, sampler, num_steps, num_samples, seed)
    sampling_seconds = time.perf_counter() - start
    features = features_of(reference.extractor, samples)
    stats = reference.heldout_stats
    view = classifier_view(reference.extractor, samples)
    if samples_file is not None:
        from ddpm_objectives_hf.files import atomic_write

        array = (samples.numpy() * 255).round().astype(np.uint8)
        atomic_write(samples_file, lambda p: _save_npz(p, samples=array))
    return {
        "sampler": sampler,
        "num_steps": num_steps,
        "num_samples": num_samples,
        "num_reference": len(reference.heldout_features),
        "fid": fid_from_features(stats, features),
        "fid_bootstrap": bootstrap_fid(stats, features, bootstrap, seed),
        "classifier_confidence": view["mean_confidence"],
        "class_entropy_nats": view["class_entropy_nats"],
        "class_histogram": view["class_histogram"],
        "network_evaluations": evaluations,
        "sampling_seconds": sampling_seconds,
        "seconds": time.perf_counter() - start,
    }


def _save_npz(path: str, **arrays) -> None:
    import numpy as np

    with open(path, "wb") as f:  # a file object: numpy would add .npz to a temporary name
        np.savez_compressed(f, **arrays)


def load_samples(samples_file: Path) -> torch.Tensor:
    import numpy as np

    with np.load(samples_file) as data:
        return torch.from_numpy(data["samples"].astype(np.float32) / 255.0)


# ---------------------------------------------------------------------------------------------------- bits/dim
def fast_bpd(unet, scheduler, images: torch.Tensor, *, num_timesteps: int, seed: int, pilot_images: int = 8) -> dict:
    """The fast, unbiased bits/dim estimate (``bpd.estimate_bpd`` with a proposal learned on ``pilot_images``) and its
    95% interval over images."""
    from ddpm_objectives_hf.bpd import estimate_bpd, learn_proposal

    start = time.perf_counter()
    generator = torch.Generator(device=images.device).manual_seed(seed)
    with torch.no_grad():
        proposal, pilot_evaluations = learn_proposal(unet, scheduler, images[:pilot_images], generator=generator)
        fast = estimate_bpd(
            unet, scheduler, images, num_timesteps=num_timesteps, proposal=proposal, generator=generator,
            progress=False,
        )  # fmt: skip
    return {
        "bpd": fast["bpd"],
        "stderr": fast["stderr"],
        "ci95": list(fast["ci95"]),
        "per_image": [float(v) for v in fast["per_image"]],
        "num_images": len(images),
        "num_timesteps": num_timesteps,
        "network_evaluations": fast["evaluations_per_image"] * len(images) + pilot_evaluations,
        "seconds": time.perf_counter() - start,
    }


def full_bound(unet, scheduler, images: torch.Tensor, *, seed: int) -> dict:
    """The full variational bound over all T steps (``bpd.full_bpd``): N × T network calls."""
    from ddpm_objectives_hf.bpd import full_bpd

    start = time.perf_counter()
    generator = torch.Generator(device=images.device).manual_seed(seed)
    with torch.no_grad():
        full = full_bpd(unet, scheduler, images, generator=generator, progress=False)
    total = full["total"].double()
    return {
        "bpd": float(total.mean()),
        "stderr": float(total.std() / math.sqrt(len(total))),
        "num_images": len(images),
        "network_evaluations": len(images) * scheduler.config.num_train_timesteps,
        "seconds": time.perf_counter() - start,
    }


def exact_bpd(unet, scheduler, images: torch.Tensor, *, draws: int, seed: int) -> dict:
    """The exact likelihood's bits/dim by the probability-flow ODE (``ode.ode_bpd``: RK45 at rtol = atol = 1e-5,
    Hutchinson divergence, ``draws`` dequantisation draws), with its per-image values for paired comparisons."""
    from ddpm_objectives_hf.ode import ode_bpd

    start = time.perf_counter()
    generator = torch.Generator(device=images.device).manual_seed(seed)
    result = ode_bpd(unet, scheduler, images, draws=draws, generator=generator, progress=False)
    return {
        "bpd": result["bpd"],
        "stderr": result["stderr"],
        "ci95": list(result["ci95"]),
        "estimator_stderr": result["estimator_stderr"],
        "per_image": [float(v) for v in result["per_image"]],
        "num_images": len(images),
        "draws": draws,
        "network_evaluations": result["evaluations_per_image"] * len(images),
        "seconds": time.perf_counter() - start,
    }


# ---------------------------------------------------------------------------------------------------- L_vlb noise
@torch.no_grad()
def loss_estimate_noise(
    unet, scheduler, train_images: torch.Tensor, *, batch_size: int, batches: int, seed: int, history: int = 10
) -> dict:
    """How noisy one training step's loss estimate is with uniform t and with importance-sampled t, for the same
    weights: the standard deviation over ``batches`` minibatches of ``mean(w · L)`` (``losses.diffusion_loss``, as
    train.py computes it), with the uniform sampler and with an ``ImportanceSampler`` whose history (``history``
    losses at every t) is filled from this model first, as training fills it.

    Both estimate the same objective (the importance weights are 1 / (T p_t)), so the ratio of the two standard
    deviations is the variance reduction of Nichol & Dhariwal 2021, §3.3 (their p_t ∝ √E[L_t²]).
    """
    from ddpm_objectives_hf.losses import diffusion_loss
    from ddpm_objectives_hf.timestep_sampling import ImportanceSampler, TimestepSampler

    start = time.perf_counter()
    device = unet.device
    T = scheduler.config.num_train_timesteps
    generator = torch.Generator(device=device).manual_seed(seed)
    pick = torch.Generator().manual_seed(seed)
    images = train_images.to(device)

    def draw(n: int) -> torch.Tensor:
        return images[torch.randint(0, len(images), (n,), generator=pick).to(device)]

    importance = ImportanceSampler(T, history=history)
    chunk = 500
    for _ in range(history):  # every t, `history` times: the sampler is then warmed up
        for first in range(0, T, chunk):
            t = torch.arange(first, min(first + chunk, T), device=device)
            out = diffusion_loss(unet, draw(len(t)), scheduler, timesteps=t, generator=generator)
            importance.update(t, out.per_sample_loss)
    result: dict = {"batch_size": batch_size, "batches": batches, "history": history}
    for name, sampler in (("uniform", TimestepSampler(T)), ("importance", importance)):
        estimates = torch.tensor(
            [
                float(
                    diffusion_loss(
                        unet, draw(batch_size), scheduler, timestep_sampler=sampler, generator=generator
                    ).loss
                )
                for _ in range(batches)
            ],
            dtype=torch.float64,
        )
        result[name] = {"mean": float(estimates.mean()), "std": float(estimates.std())}
    result["std_ratio"] = result["importance"]["std"] / result["uniform"]["std"]
    result["network_evaluations"] = history * T + 2 * batches * batch_size
    result["seconds"] = time.perf_counter() - start
    return result


# ---------------------------------------------------------------------------------------------------- memorization
QUANTILES = torch.tensor([0.05, 0.25, 0.5, 0.75, 0.95], dtype=torch.float64)


def nearest(queries: torch.Tensor, keys: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Euclidean distance from each query row to its nearest key row, and that key's index."""
    distances = torch.cdist(queries.double().flatten(1), keys.double().flatten(1))
    d, index = distances.min(dim=1)
    return d, index


def memorization(samples01: torch.Tensor, reference: Reference, num_pairs: int = 8, seed: int = 0) -> dict:
    """Nearest-neighbour distances of generated samples to the training digits, beside those of held-out digits.

    In pixel space ([0, 1], 64-d) and in the digits classifier's feature space. ``closer_to_train`` is the fraction
    of samples whose nearest image among a random training subset of the held-out split's size is nearer than their
    nearest held-out digit; for samples that copy no training image it is 1/2 (the two sets are exchangeable), and
    ``closer_to_train_fresh`` is the same fraction for training digits outside the subset (drawn from the same
    distribution: the finite-sample reference). ``closest_pairs`` are the ``num_pairs`` samples nearest to a
    training digit (pixel space) with that digit.
    """
    generator = torch.Generator().manual_seed(seed)
    n_held = len(reference.heldout01)
    order = torch.randperm(len(reference.train01), generator=generator)
    subset, fresh = order[:n_held], order[n_held : 2 * n_held]
    spaces = {
        "pixel": (samples01, reference.train01, reference.heldout01),
        "feature": (features_of(reference.extractor, samples01), reference.train_features, reference.heldout_features),
    }
    out: dict = {"num_samples": len(samples01), "num_train": len(reference.train01), "num_heldout": n_held}
    for space, (queries, train, heldout) in spaces.items():
        d_train, _ = nearest(queries, train)
        d_held_to_train, _ = nearest(heldout, train)
        d_subset, _ = nearest(queries, train[subset])
        d_heldout, _ = nearest(queries, heldout)
        f_subset, _ = nearest(train[fresh], train[subset])
        f_heldout, _ = nearest(train[fresh], heldout)
        out[space] = {
            "nn_train_median": float(d_train.median()),
            "heldout_nn_train_median": float(d_held_to_train.median()),
            "nn_ratio": float(d_train.median() / d_held_to_train.median()),
            "nn_train_quantiles": torch.quantile(d_train, QUANTILES).tolist(),
            "heldout_nn_train_quantiles": torch.quantile(d_held_to_train, QUANTILES).tolist(),
            "closer_to_train": float((d_subset < d_heldout).double().mean()),
            "closer_to_train_fresh": float((f_subset < f_heldout).double().mean()),
        }  # fmt: skip
    d_train, index = nearest(samples01, reference.train01)
    closest = torch.argsort(d_train)[:num_pairs]
    out["closest_pairs"] = [
        {
            "distance": float(d_train[i]),
            "sample": [round(float(v), 4) for v in samples01[i].flatten()],
            "train": [round(float(v), 4) for v in reference.train01[index[i]].flatten()],
            "train_index": int(index[i]),
        }
        for i in closest
    ]
    return out
