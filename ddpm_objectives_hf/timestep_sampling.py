"""Timestep samplers: which t each training sample sees, and the weight that keeps the objective unbiased.

``sampler.sample(batch_size, device, generator)`` returns ``(timesteps, weights)``; the training loss is
``mean(weights · per_sample_loss)``. Samplers that learn (``importance``) take ``sampler.update(timesteps, losses)``
after each step; pass an ``accelerate.Accelerator`` to pool the losses of all processes. Every sampler keeps its
state on the device (no host synchronisation per step) and checkpoints through ``state_dict``.
"""

from __future__ import annotations

from typing import Literal

import torch

from .options import check_choice


class TimestepSampler:
    """Uniform timesteps: ``t ~ Uniform({0, …, T − 1})`` (the paper's {1, …, T}, zero-based), weight 1."""

    def __init__(self, num_timesteps: int):
        if num_timesteps < 1:
            raise ValueError(f"num_timesteps must be >= 1, got {num_timesteps}")
        self.num_timesteps = num_timesteps

    def probabilities(self, device: torch.device | str = "cpu") -> torch.Tensor:
        """p(t) over the T timesteps."""
        return torch.full((self.num_timesteps,), 1.0 / self.num_timesteps, device=device)

    def sample(
        self, batch_size: int, device: torch.device | str = "cpu", generator: torch.Generator | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        t = torch.randint(0, self.num_timesteps, (batch_size,), device=device, generator=generator)
        return t, torch.ones(batch_size, device=device)

    def update(self, timesteps: torch.Tensor, losses: torch.Tensor, accelerator=None) -> None:
        """Record per-sample losses (a no-op except for learning samplers)."""

    def state_dict(self) -> dict:
        return {}

    def load_state_dict(self, state: dict) -> None:
        pass


class StratifiedSampler(TimestepSampler):
    """One stratum of [0, 1) per sample of the global batch (``batch_size × num_processes`` strata), so each
    process covers its own strata; t = ⌊T (i + u) / (B P)⌋ with u ~ U[0, 1). Unbiased with weight 1."""

    def __init__(self, num_timesteps: int, num_processes: int = 1, process_index: int = 0):
        super().__init__(num_timesteps)
        self.num_processes = num_processes
        self.process_index = process_index

    def sample(self, batch_size, device="cpu", generator=None):
        strata = batch_size * self.num_processes
        index = torch.arange(batch_size, device=device) + self.process_index * batch_size
        u = torch.rand(batch_size, device=device, generator=generator)
        t = ((index + u) / strata * self.num_timesteps).long().clamp_(0, self.num_timesteps - 1)
        return t, torch.ones(batch_size, device=device)


class ImportanceSampler(TimestepSampler):
    """Loss-second-moment importance sampling: ``p_t ∝ √E[L_t²]``, weight ``1 / (T p_t)`` ([Nichol & Dhariwal 2021](https://arxiv.org/abs/2102.09672)).

    p_t ∝ √E[L_t²] over the last ``history`` losses at each t, mixed with a uniform floor:
    ``p = (1 − floor) p + floor / T``; uniform until every t has ``history`` losses. Each sample is weighted
    ``1 / (T p_t)`` so the expected loss is the uniform-t objective.
    """

    def __init__(self, num_timesteps: int, history: int = 10, uniform_floor: float = 0.001):
        super().__init__(num_timesteps)
        if history < 1 or not 0 <= uniform_floor <= 1:
            raise ValueError("history must be >= 1 and uniform_floor in [0, 1]")
        self.history = history
        self.uniform_floor = uniform_floor
        self.loss_history = torch.zeros(num_timesteps, history, dtype=torch.float64)
        self.loss_counts = torch.zeros(num_timesteps, dtype=torch.long)

    def _to(self, device) -> None:
        if self.loss_history.device != torch.device(device):
            self.loss_history = self.loss_history.to(device)
            self.loss_counts = self.loss_counts.to(device)

    def warmed_up(self) -> torch.Tensor:
        return (self.loss_counts >= self.history).all()

    def probabilities(self, device="cpu") -> torch.Tensor:
        self._to(device)
        second_moment = (self.loss_history**2).mean(dim=1).sqrt()
        p = second_moment / second_moment.sum().clamp_min(torch.finfo(second_moment.dtype).tiny)
        p = p * (1 - self.uniform_floor) + self.uniform_floor / self.num_timesteps
        uniform = torch.full_like(p, 1.0 / self.num_timesteps)
        return torch.where(self.warmed_up() & (second_moment.sum() > 0), p, uniform)

    def sample(self, batch_size, device="cpu", generator=None):
        p = self.probabilities(device)
        t = torch.multinomial(p, batch_size, replacement=True, generator=generator)
        weights = 1.0 / (self.num_timesteps * p[t])
        return t, weights.float()

    def update(self, timesteps: torch.Tensor, losses: torch.Tensor, accelerator=None) -> None:
        """Append each (t, loss) to t's FIFO of the last ``history`` losses, pooled over processes."""
        timesteps, losses = timesteps.detach().long().flatten(), losses.detach().double().flatten()
        if accelerator is not None and accelerator.num_processes > 1:
            timesteps, losses = _gather_padded(accelerator, timesteps, losses)
        self._to(timesteps.device)
        order = torch.sort(timesteps, stable=True).indices  # keep arrival order within each t
        t_sorted, loss_sorted = timesteps[order], losses[order]
        counts = torch.bincount(t_sorted, minlength=self.num_timesteps)
        first = torch.cumsum(counts, 0) - counts  # position of each t's first entry in the sorted batch
        rank = torch.arange(len(t_sorted), device=t_sorted.device) - first[t_sorted]
        # only the last `history` entries of each t in this batch survive
        keep = rank >= counts[t_sorted] - self.history
        slot = (self.loss_counts[t_sorted] + rank) % self.history
        self.loss_history[t_sorted[keep], slot[keep]] = loss_sorted[keep]
        self.loss_counts += counts

    def state_dict(self) -> dict:
        return {"loss_history": self.loss_history.cpu(), "loss_counts": self.loss_counts.cpu()}

    def load_state_dict(self, state: dict) -> None:
        self.loss_history = state["loss_history"].to(self.loss_history.device, torch.float64)
        self.loss_counts = state["loss_counts"].to(self.loss_counts.device, torch.long)


class LogitNormalSampler(TimestepSampler):
    """t = ⌊T · sigmoid(n)⌋ with n ~ N(mean, std²) ([Esser et al. 2024](https://arxiv.org/abs/2403.03206)).

    By default this reweights the objective on purpose (weight 1, as SD3). With ``unbiased=True`` each sample is
    weighted ``1 / (T p_t)`` with p_t the discretised logit-normal mass, which recovers the uniform-t objective.
    """

    def __init__(self, num_timesteps: int, mean: float = 0.0, std: float = 1.0, unbiased: bool = False):
        super().__init__(num_timesteps)
        if not std > 0:
            raise ValueError(f"logit_normal std must be > 0, got {std}")
        self.mean, self.std, self.unbiased = mean, std, unbiased

    def probabilities(self, device="cpu") -> torch.Tensor:
        edges = torch.linspace(0, 1, self.num_timesteps + 1, dtype=torch.float64)
        z = (torch.logit(edges) - self.mean) / self.std
        cdf = torch.special.ndtr(z)
        return (cdf[1:] - cdf[:-1]).clamp_min(1e-300).to(device)

    def sample(self, batch_size, device="cpu", generator=None):
        n = torch.randn(batch_size, device=device, generator=generator) * self.std + self.mean
        t = (torch.sigmoid(n) * self.num_timesteps).long().clamp_(0, self.num_timesteps - 1)
        if not self.unbiased:
            return t, torch.ones(batch_size, device=device)
        p = self.probabilities(device)
        return t, (1.0 / (self.num_timesteps * p[t])).float()


# The class that `make_timestep_sampler` builds for each name (its docstring describes the sampler on model cards).
TIMESTEP_SAMPLER_CLASSES: dict[str, type[TimestepSampler]] = {
    "uniform": TimestepSampler,
    "stratified": StratifiedSampler,
    "importance": ImportanceSampler,
    "logit_normal": LogitNormalSampler,
}
TIMESTEP_SAMPLERS = tuple(TIMESTEP_SAMPLER_CLASSES)


def _gather_padded(accelerator, timesteps: torch.Tensor, losses: torch.Tensor):
    """Gather (t, loss) pairs from every process, whatever each one's batch size."""
    values = torch.stack([timesteps.double(), losses, torch.ones_like(losses)], dim=1)
    values = accelerator.pad_across_processes(values, dim=0, pad_index=0)
    values = accelerator.gather(values)
    values = values[values[:, 2] > 0]
    return values[:, 0].long(), values[:, 1]


def make_timestep_sampler(
    name: Literal["uniform", "stratified", "importance", "logit_normal"],
    num_timesteps: int,
    *,
    num_processes: int = 1,
    process_index: int = 0,
    logit_mean: float = 0.0,
    logit_std: float = 1.0,
) -> TimestepSampler:
    """Build a sampler by name (`uniform`, `stratified`, `importance`, `logit_normal`)."""
    check_choice("timestep_sampler", name, TIMESTEP_SAMPLERS)
    options = {
        "stratified": {"num_processes": num_processes, "process_index": process_index},
        "logit_normal": {"mean": logit_mean, "std": logit_std},
    }.get(name, {})
    return TIMESTEP_SAMPLER_CLASSES[name](num_timesteps, **options)
