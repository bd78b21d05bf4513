"""The likelihood the bound stands in for: log p(x0) of a trained denoiser by its probability-flow ODE.

The forward process of any DDPM schedule is the rotation ``x_φ = cos φ · x0 + sin φ · ε`` with the angle
``φ = atan(e^(−λ/2))`` (a = √ᾱ = cos φ, s = √(1 − ᾱ) = sin φ, λ = log SNR). Its probability-flow ODE
([Song et al. 2021](https://arxiv.org/abs/2011.13456)) moves samples with the expected velocity of the path,

    dx/dφ = v̂(x, φ) = E[cos φ · ε − sin φ · x0 | x_φ = x],

which is the v-prediction of [Salimans & Ho 2022](https://arxiv.org/abs/2202.00512): finite on the whole schedule,
zero terminal SNR (φ = π/2) included. Every target converts to it. The flow keeps the forward marginals, so by the
instantaneous change of variables

    log p_φ0(x(φ0)) = log N(x(φ1); 0, I) + ∫_{φ0}^{φ1} ∇·v̂(x(φ), φ) dφ,

from the schedule's first noise level φ0 (t = 0) to its last φ1 (t = T − 1). The data live in ``y = x / cos φ0``
(``y = x0 + σ0 ε``, the [−1, 1] scale), so ``log p(y) = log p_φ0(cos φ0 · y) + D log cos φ0``. The density is that
of the model at its smallest trained noise level; no network is queried outside the schedule.

The denoiser is queried at fractional timesteps: the t whose log-SNR, interpolated linearly between the discrete
steps, equals λ(φ) (on the last interval of a zero-terminal-SNR schedule, where λ_{T−1} = −∞, linearly in φ).
The ε, x0 and v targets convert exactly at the continuous noise level; μ̃'s coefficients are interpolated linearly
in t. An ε-prediction carries no information about x0 at SNR = 0 (x_T = ε), so with zero terminal SNR an ε model's
flow stops at the last step with SNR > 0, where the prior N(0, I) is off by O(SNR_{T−2}).

Each image's ODE is solved on its own by scipy's ``solve_ivp`` (float64 state, adaptive step), so its result does
not depend on the other images of the batch; the network still sees all images that wait for a right-hand side in
one call. The divergence is exact (one vector-Jacobian product per dimension) or Hutchinson's estimate with one
Rademacher probe held fixed through the solve (Song et al.'s setting).
"""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Callable
from typing import Any, Literal

import numpy as np
import torch
from scipy.integrate import solve_ivp
from tqdm.auto import tqdm

from .bpd import mean_with_interval
from .elbo import call_model, slice_model_kwargs
from .errors import ConfigError
from .likelihood import LOG2
from .options import POSITIVE, POSITIVE_INT, check_choice, check_range
from .scheduling_ddpm_objective import DDPMObjectiveScheduler, convert_prediction

Divergence = Literal["exact", "hutchinson"]
DIVERGENCES = ("exact", "hutchinson")
METHODS = ("RK45", "RK23", "DOP853", "Radau", "BDF", "LSODA")


class ContinuousSchedule:
    """A discrete DDPM schedule read at continuous noise levels: the angle φ of each step and, for any φ between the
    first and the last, the fractional timestep and the conversion coefficients there (float64 numpy).

    Args:
        scheduler ([`DDPMObjectiveScheduler`]): the model's schedule (its float64 ᾱ table).
    """

    def __init__(self, scheduler: DDPMObjectiveScheduler):
        tables = scheduler._tables
        a = tables["sqrt_alphas_cumprod"].numpy()
        s = tables["sqrt_one_minus_alphas_cumprod"].numpy()
        self.phi = np.arctan2(s, a)  # increasing in t; π/2 at zero terminal SNR
        self.coef1 = tables["coef1"].numpy()
        self.coef2 = tables["coef2"].numpy()
        with np.errstate(divide="ignore"):
            self.log_snr = 2.0 * (np.log(a) - np.log(s))
        finite = np.isfinite(self.log_snr)
        self.num_finite = int(finite.sum())  # steps with 0 < SNR < ∞ (all but a zero-terminal-SNR last step)
        self.zero_terminal_snr = not finite[-1]

    def timestep(self, phi: np.ndarray) -> np.ndarray:
        """The fractional timestep of the angles ``phi``: linear in log-SNR between steps (in φ on a last interval
        that ends at SNR = 0)."""
        phi = np.asarray(phi, dtype=np.float64)
        n = self.num_finite
        steps = np.arange(len(self.phi), dtype=np.float64)
        with np.errstate(divide="ignore"):
            log_snr = 2.0 * (np.log(np.cos(phi)) - np.log(np.sin(phi)))
        t = np.interp(-log_snr, -self.log_snr[:n], steps[:n]) if n > 1 else np.zeros_like(phi)
        if self.zero_terminal_snr and n >= 1:
            last = phi > self.phi[n - 1]
            t = np.where(last, np.interp(phi, self.phi[n - 1 :], steps[n - 1 :]), t)
        return t

    def mean_coefficients(self, timesteps: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """``(coef1, coef2)`` of μ̃ at fractional timesteps, linear in t between the steps."""
        steps = np.arange(len(self.phi), dtype=np.float64)
        return np.interp(timesteps, steps, self.coef1), np.interp(timesteps, steps, self.coef2)

    def segments(self, prediction_type: str) -> list[tuple[str, float, float]]:
        """The integration: in ``log σ = log tan φ`` (= −λ/2) from the first noise level to the last finite one,
        then, where the flow goes on to SNR = 0, in φ up to π/2. ``(variable, start, end)`` each."""
        phi0, phi1 = self.span(prediction_type)
        last_finite = float(self.phi[self.num_finite - 1])
        parts = [("log_sigma", math.log(math.tan(phi0)), math.log(math.tan(min(phi1, last_finite))))]
        if phi1 > last_finite:
            parts.append(("phi", last_finite, phi1))
        return parts

    def span(self, prediction_type: str) -> tuple[float, float]:
        """``(φ0, φ1)``: the first noise level to the last one where ``prediction_type`` gives the velocity."""
        last = len(self.phi) - 1
        if self.zero_terminal_snr and prediction_type == "epsilon":
            last = self.num_finite - 1
        if last < 1:
            raise ConfigError("the probability-flow ODE needs a schedule of at least 2 noise levels", "scheduler")
        return float(self.phi[0]), float(self.phi[last])


def velocity(
    model: Callable,
    scheduler: DDPMObjectiveScheduler,
    schedule: ContinuousSchedule,
    x: torch.Tensor,
    phi: np.ndarray,
    model_kwargs: dict[str, Any] | None = None,
) -> torch.Tensor:
    """v̂(x, φ) = cos φ · ε̂ − sin φ · x̂0, the probability-flow velocity dx/dφ of the model's prediction at the angles
    ``phi`` [N] (the network called at their fractional timesteps; variance channels dropped)."""
    t = schedule.timestep(phi)

    def column(values: np.ndarray) -> torch.Tensor:
        return torch.as_tensor(values, dtype=x.dtype, device=x.device).reshape((-1,) + (1,) * (x.ndim - 1))

    # fractional timesteps in at least float32 (bfloat16 would round t = 999 to a multiple of 4)
    timesteps = torch.as_tensor(t, dtype=torch.float64 if x.dtype == torch.float64 else torch.float32, device=x.device)
    output = call_model(model, x, timesteps, model_kwargs)
    prediction, _ = scheduler.split_model_output(output, x)
    coef1, coef2 = schedule.mean_coefficients(t)
    return convert_prediction(
        prediction.to(x.dtype),
        x,
        a=column(np.cos(phi)),
        s=column(np.sin(phi)),
        coef1=column(coef1),
        coef2=column(coef2),
        from_type=scheduler.config.prediction_type,
        to_type="v_prediction",
    )


def _velocity_and_divergence(fn, x: torch.Tensor, probes: torch.Tensor | None, chunk: int):
    """``(v̂, ∇·v̂)`` of ``fn(x, rows)`` per sample: Hutchinson's ``zᵀ (∂v̂/∂x) z`` with the probes ``z`` [N, ...], or
    the exact trace (``probes=None``: one vector-Jacobian product per dimension, ``chunk`` rows per network call)."""
    n, dims = x.shape[0], x[0].numel()
    if probes is not None:
        with torch.enable_grad():
            xg = x.detach().requires_grad_(True)
            v = fn(xg, torch.arange(n))
            (grad,) = torch.autograd.grad(v, xg, grad_outputs=probes)
        return v.detach(), (grad * probes).flatten(1).sum(1)
    # exact: each row repeated once per dimension d, with the basis vector e_d as its probe
    basis = torch.eye(dims, dtype=x.dtype, device=x.device).reshape((dims,) + x.shape[1:])
    rows = torch.arange(n).repeat_interleave(dims)
    which = torch.arange(dims).repeat(n)
    v_out, trace = torch.empty_like(x), x.new_zeros(n)
    for start in range(0, n * dims, chunk):
        r, d = rows[start : start + chunk], which[start : start + chunk]
        with torch.enable_grad():
            xg = x[r].detach().requires_grad_(True)
            v = fn(xg, r)
            (grad,) = torch.autograd.grad(v, xg, grad_outputs=basis[d])
        trace.index_add_(0, r.to(x.device), (grad * basis[d]).flatten(1).sum(1))
        first = d == 0
        v_out[r[first]] = v.detach()[first]
    return v_out, trace


class _Lockstep:
    """One chain of ``solve_ivp`` calls (the ``segments``) per row, each row in its own thread; the right-hand sides
    of all rows waiting at a time are evaluated by one call of ``rhs(rows, variables, values, states)`` in the
    calling thread."""

    def __init__(self, rhs: Callable, states: np.ndarray, segments: list, solver: dict, progress):
        self.rhs, self.states, self.segments, self.solver, self.progress = rhs, states, segments, solver, progress
        self.cond = threading.Condition()
        self.pending: dict[int, tuple[str, float, np.ndarray]] = {}
        self.results: dict[int, np.ndarray] = {}
        self.ends: dict[int, tuple[np.ndarray, int]] = {}
        self.alive = len(states)
        self.error: BaseException | None = None

    def _fun(self, row: int, variable: str):
        def fun(value: float, state: np.ndarray) -> np.ndarray:
            with self.cond:
                if self.error is not None:
                    raise _Aborted
                self.pending[row] = (variable, value, state)
                self.cond.notify_all()
                while row not in self.results:
                    if self.error is not None:
                        raise _Aborted
                    self.cond.wait()
                return self.results.pop(row)

        return fun

    def _solve(self, row: int) -> None:
        try:
            state, evaluations = self.states[row], 0
            for variable, start, end in self.segments:
                solution = solve_ivp(self._fun(row, variable), (start, end), state, **self.solver)
                if not solution.success:
                    raise RuntimeError(f"the ODE solve of image {row} failed: {solution.message}")
                state, evaluations = solution.y[:, -1], evaluations + solution.nfev
            with self.cond:
                self.ends[row] = (state, evaluations)
        except _Aborted:
            pass
        except BaseException as err:  # noqa: BLE001  (handed to the calling thread)
            with self.cond:
                self.error = self.error or err
        finally:
            with self.cond:
                self.alive -= 1
                self.cond.notify_all()
            self.progress.update(1)

    def run(self) -> dict[int, tuple[np.ndarray, int]]:
        """``{row: (final state, right-hand sides evaluated)}``."""
        threads = [
            threading.Thread(target=self._solve, args=(i,), name=f"ode-solve-{i}", daemon=True)
            for i in range(len(self.states))
        ]
        for thread in threads:
            thread.start()
        try:
            while True:
                with self.cond:
                    while len(self.pending) < self.alive and self.error is None:
                        self.cond.wait()
                    if self.error is not None:
                        raise self.error
                    if self.alive == 0:
                        break
                    batch, self.pending = self.pending, {}
                rows = sorted(batch)
                variables = [batch[r][0] for r in rows]
                values = np.array([batch[r][1] for r in rows])
                out = self.rhs(rows, variables, values, np.stack([batch[r][2] for r in rows]))
                with self.cond:
                    self.results.update(zip(rows, out))
                    self.cond.notify_all()
        except BaseException as err:
            with self.cond:
                self.error = self.error or err
                self.cond.notify_all()
            raise
        finally:
            for thread in threads:
                thread.join(timeout=1.0)
        return self.ends


class _Aborted(Exception):
    """Raised in a solve's thread when another solve or the network call failed."""


def check_ode_options(*, rtol: float, atol: float, divergence: str, method: str, draws: int | None = None) -> None:
    """One-line errors, naming the parameter, for the solver's options."""
    check_range("ode_rtol", rtol, POSITIVE)
    check_range("ode_atol", atol, POSITIVE)
    check_choice("ode_divergence", divergence, DIVERGENCES)
    check_choice("ode_method", method, METHODS)
    if draws is not None:
        check_range("ode_draws", draws, POSITIVE_INT)


@torch.no_grad()
def ode_log_likelihood(
    model: Callable,
    scheduler: DDPMObjectiveScheduler,
    samples: torch.Tensor,
    *,
    divergence: Divergence = "hutchinson",
    probes: torch.Tensor | None = None,
    rtol: float = 1e-5,
    atol: float = 1e-5,
    method: str = "RK45",
    batch_size: int = 256,
    generator: torch.Generator | None = None,
    progress: bool = True,
    model_kwargs: dict[str, Any] | None = None,
) -> dict[str, torch.Tensor]:
    """log p(y) of continuous samples y under the model's probability-flow ODE, per sample, in nats.

    Args:
        model (`Callable`): a diffusers model or ``model(x_t, t, **model_kwargs)`` (see :func:`call_model`); queried
            at fractional timesteps, in its parameters' dtype (float64 for a plain callable).
        scheduler ([`DDPMObjectiveScheduler`]): the model's schedule and target.
        samples (`torch.Tensor`): y, [N, C, H, W] on the data scale ([−1, 1]; dequantised images for bits/dim).
        divergence (`"exact"` or `"hutchinson"`, defaults to `"hutchinson"`): the trace of ∂v̂/∂x exactly (D
            vector-Jacobian products per evaluation) or by one Rademacher probe per sample, fixed through the solve.
        probes (`torch.Tensor`, *optional*): Hutchinson's probes, shaped as ``samples`` (drawn from ``generator``
            when `None`).
        rtol (`float` > 0, defaults to 1e-5): relative tolerance of the solver (Song et al.'s value).
        atol (`float` > 0, defaults to 1e-5): absolute tolerance of the solver.
        method (`str`, defaults to `"RK45"`): a ``scipy.integrate.solve_ivp`` method.
        batch_size (`int`, defaults to 256): samples solved at once (and rows per network call for ``"exact"``).
        generator (`torch.Generator`, *optional*): for the probes.
        progress (`bool`, defaults to `True`): a progress bar over the solved samples.
        model_kwargs (`dict`, *optional*): the conditioning of the N samples (e.g. ``{"class_labels": y}``: then
            ``log p(x | y)``), split per sample by :func:`slice_model_kwargs`.

    Returns:
        `dict` of [N] tensors (float64): ``log_likelihood`` (log p(y), nats), ``prior`` (log N(x(φ1); 0, I)),
        ``divergence_integral`` (∫ ∇·v̂ dφ) and ``evaluations`` (right-hand sides evaluated, each one network call).
    """
    check_ode_options(rtol=rtol, atol=atol, divergence=divergence, method=method)
    check_range("batch_size", batch_size, POSITIVE_INT)
    if not isinstance(scheduler, DDPMObjectiveScheduler):
        raise ConfigError(
            "the probability-flow ODE needs a DDPM-family schedule (a DDPMObjectiveScheduler)", "scheduler"
        )
    schedule = ContinuousSchedule(scheduler)
    phi0, _ = schedule.span(scheduler.config.prediction_type)
    segments = schedule.segments(scheduler.config.prediction_type)
    parameter = next(iter(model.parameters()), None) if isinstance(model, torch.nn.Module) else None
    dtype = parameter.dtype if parameter is not None else torch.float64
    device = parameter.device if parameter is not None else samples.device
    n, shape = samples.shape[0], samples.shape[1:]
    dims = int(np.prod(shape))
    if divergence == "hutchinson" and probes is None:
        probes = (
            torch.randint(0, 2, samples.shape, generator=generator, device=samples.device).to(samples.dtype) * 2 - 1
        )
    out = {k: torch.zeros(n, dtype=torch.float64) for k in ("log_likelihood", "prior", "divergence_integral")}
    out["evaluations"] = torch.zeros(n, dtype=torch.long)
    bar = tqdm(total=n, desc="ODE log-likelihood", disable=not progress)
    for start in range(0, n, batch_size):
        rows_all = slice(start, min(start + batch_size, n))
        y = samples[rows_all].double().cpu()
        m = y.shape[0]
        kwargs = slice_model_kwargs(model_kwargs, rows_all, n)
        z = probes[rows_all].to(device=device, dtype=dtype) if divergence == "hutchinson" else None

        def rhs(rows: list[int], variables: list, values: np.ndarray, states: np.ndarray, kwargs=kwargs, z=z, m=m):
            """d(x, ∫∇·v̂)/d(variable): in φ, (v̂, ∇·v̂); in log σ, both times dφ/d log σ = sin φ cos φ."""
            index = torch.as_tensor(rows)
            x = torch.from_numpy(states[:, :dims]).reshape((len(rows),) + tuple(shape)).to(device=device, dtype=dtype)
            in_log_sigma = np.array([v == "log_sigma" for v in variables])
            phis = np.where(in_log_sigma, np.arctan(np.exp(np.where(in_log_sigma, values, 0.0))), values)
            scale = np.where(in_log_sigma, np.sin(phis) * np.cos(phis), 1.0)[:, None]

            def fn(xs: torch.Tensor, sub: torch.Tensor) -> torch.Tensor:
                picked = index[sub]
                return velocity(
                    model, scheduler, schedule, xs, phis[sub.numpy()], slice_model_kwargs(kwargs, picked, m)
                )

            v, div = _velocity_and_divergence(fn, x, None if z is None else z[index], max(batch_size, 1))
            derivative = np.concatenate([v.double().cpu().flatten(1).numpy(), div.double().cpu().numpy()[:, None]], 1)
            return derivative * scale

        x_start = y.flatten(1) * math.cos(phi0)
        states = np.concatenate([x_start.numpy(), np.zeros((m, 1))], axis=1)
        solver = {"method": method, "rtol": rtol, "atol": atol}
        ends = _Lockstep(rhs, states, segments, solver, bar).run()
        for row in range(m):
            end, evaluations = ends[row]
            x_end, integral = end[:dims], end[dims]
            prior = -0.5 * float(x_end @ x_end) - 0.5 * dims * math.log(2 * math.pi)
            i = start + row
            out["prior"][i] = prior
            out["divergence_integral"][i] = integral
            out["log_likelihood"][i] = prior + integral + dims * math.log(math.cos(phi0))
            out["evaluations"][i] = evaluations
    bar.close()
    return out


def ode_bpd(
    model: Callable,
    scheduler: DDPMObjectiveScheduler,
    images: torch.Tensor,
    *,
    draws: int = 1,
    divergence: Divergence = "hutchinson",
    rtol: float = 1e-5,
    atol: float = 1e-5,
    method: str = "RK45",
    num_bins: int = 256,
    batch_size: int = 256,
    generator: torch.Generator | None = None,
    progress: bool = True,
    model_kwargs: dict[str, Any] | None = None,
) -> dict:
    """Bits/dim of images on the ``num_bins``-level grid by the probability-flow ODE, uniformly dequantised.

    Each draw adds u ~ U(−h, h)^D, h = 1/(num_bins − 1) (the decoder's bins) and, for Hutchinson, a fresh probe;
    ``−log P(x) ≤ −E_u log p(x + u) + D log((num_bins − 1)/2)`` (Jensen), so

        bits/dim = −log p(x + u) / (D ln 2) + log₂((num_bins − 1) / 2),

    in the units of the variational bound (Song et al. 2021's convention, over ``draws`` draws).

    Args:
        model, scheduler, divergence, rtol, atol, method, batch_size, progress, model_kwargs: as in
            :func:`ode_log_likelihood`.
        images (`torch.Tensor`): [N, C, H, W] in [−1, 1] on the grid.
        draws (`int` >= 1, defaults to 1): dequantisation (and probe) draws per image.
        num_bins (`int`, defaults to 256): levels of the data (8-bit: 256).
        generator (`torch.Generator`, *optional*): for the dequantisation noise and the probes.

    Returns:
        `dict` with ``per_image`` [N] (bits/dim, mean over draws), ``bpd`` (mean), ``stderr`` and ``ci95`` (over
        images), ``estimator_stderr`` (the noise of ``bpd`` from the dequantisation and probe draws alone),
        ``evaluations_per_image``, ``seconds_per_image``, ``draws``, ``divergence``, ``rtol``, ``atol``, ``method``.
    """
    check_ode_options(rtol=rtol, atol=atol, divergence=divergence, method=method, draws=draws)
    n, dims = images.shape[0], images[0].numel()
    half_bin = 1.0 / (num_bins - 1)
    per_draw, calls = [], []
    begin = time.perf_counter()
    for _ in range(draws):
        u = (
            torch.rand(images.shape, generator=generator, device=images.device, dtype=torch.float64) * 2 - 1
        ) * half_bin
        result = ode_log_likelihood(
            model,
            scheduler,
            images.double() + u,
            divergence=divergence,
            rtol=rtol,
            atol=atol,
            method=method,
            batch_size=batch_size,
            generator=generator,
            progress=progress,
            model_kwargs=model_kwargs,
        )
        per_draw.append(-result["log_likelihood"] / (dims * LOG2) + math.log2((num_bins - 1) / 2))
        calls.append(result["evaluations"].double())
    seconds = time.perf_counter() - begin
    values = torch.stack(per_draw)  # [draws, N]
    per_image = values.mean(0)
    within = float(values.var(0, unbiased=True).mean() / (draws * n)) ** 0.5 if draws > 1 else float("nan")
    return {
        "per_image": per_image,
        **mean_with_interval(per_image),
        "estimator_stderr": within,
        "evaluations_per_image": float(torch.stack(calls).mean()),
        "seconds_per_image": seconds / (n * draws),
        "draws": draws,
        "divergence": divergence,
        "rtol": rtol,
        "atol": atol,
        "method": method,
    }
