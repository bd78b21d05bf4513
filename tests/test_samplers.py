"""Tests for the timestep samplers: importance sampling (Nichol & Dhariwal 2021), stratified, logit-normal, uniform.

Expected probabilities are computed here with numpy/scipy; statistical checks use fixed generators and tolerances of
several standard errors (or a chi-square p-value), so they are deterministic and not flaky.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from scipy.special import logit
from scipy.stats import chi2, norm

from ddpm_objectives_hf import (
    ImportanceSampler,
    LogitNormalSampler,
    StratifiedSampler,
    TimestepSampler,
    make_timestep_sampler,
)


def chi_square_pvalue(counts: np.ndarray, probs: np.ndarray) -> float:
    """Pearson's chi-square p-value of counts against probabilities (bins with < 5 expected are pooled)."""
    n = counts.sum()
    expected = probs * n
    small = expected < 5
    obs = np.append(counts[~small], counts[small].sum())
    exp = np.append(expected[~small], expected[small].sum())
    if exp[-1] == 0:
        obs, exp = obs[:-1], exp[:-1]
    stat = ((obs - exp) ** 2 / exp).sum()
    return float(chi2.sf(stat, len(exp) - 1))


def weighted_estimate_check(t: torch.Tensor, w: torch.Tensor, table: np.ndarray, probs: np.ndarray):
    """E[w · L_t] under p must be mean_t L_t: the estimate lies within 4 standard errors (σ from p, in numpy)."""
    T = len(table)
    estimate = float((w.double().numpy() * table[t.numpy()]).mean())
    mu = table.mean()
    var = (probs * (table / (T * probs)) ** 2).sum() - mu**2
    se = math.sqrt(max(var, 0.0) / len(t))
    assert abs(estimate - mu) <= 4 * se + 1e-12, (estimate, mu, se)
    return estimate, mu, se


# ---------------------------------------------------------------------------------------------- importance
def _feed(sampler: ImportanceSampler, pairs: list[tuple[int, float]], batch: int):
    for i in range(0, len(pairs), batch):
        chunk = pairs[i : i + batch]
        sampler.update(torch.tensor([p[0] for p in chunk]), torch.tensor([p[1] for p in chunk]))


def _warm_history(T: int, per_t: int, seed: int):
    """A shuffled stream of (t, loss) with `per_t` entries per t; losses noisy around a t-dependent level."""
    rng = np.random.default_rng(seed)
    pairs = [(t, float((1.0 + t) * (1.0 + 0.5 * rng.standard_normal()) ** 2)) for t in range(T) for _ in range(per_t)]
    order = rng.permutation(len(pairs))
    return [pairs[i] for i in order]


def _expected_history(pairs, T, history=10):
    """The last `history` losses per t in arrival order (improved-diffusion's FIFO)."""
    per_t = {t: [] for t in range(T)}
    for t, loss in pairs:
        per_t[t].append(loss)
    return {t: v[-history:] for t, v in per_t.items()}


def _numpy_probabilities(hist: dict, T: int, floor=0.001) -> np.ndarray:
    """improved-diffusion `LossSecondMomentResampler.weights`, transcribed."""
    loss_history = np.array([hist[t] for t in range(T)])
    weights = np.sqrt(np.mean(loss_history**2, axis=-1))
    weights /= np.sum(weights)
    weights *= 1 - floor
    weights += floor / len(weights)
    return weights


def test_importance_uniform_until_warm():
    T = 12
    sampler = ImportanceSampler(T)
    np.testing.assert_allclose(sampler.probabilities().numpy(), np.full(T, 1 / T))
    pairs = _warm_history(T, 10, seed=0)
    _feed(sampler, pairs[:-1], batch=13)  # one t is one loss short of 10
    assert not bool(sampler.warmed_up())
    np.testing.assert_allclose(sampler.probabilities().numpy(), np.full(T, 1 / T))
    t, w = sampler.sample(64, generator=torch.Generator().manual_seed(0))
    assert torch.equal(w, torch.ones(64))
    _feed(sampler, pairs[-1:], batch=1)
    assert bool(sampler.warmed_up())
    assert not np.allclose(sampler.probabilities().numpy(), 1 / T)


@pytest.mark.parametrize("batch", [1, 7, 37, 500])
def test_importance_fifo_keeps_the_last_ten(batch):
    T = 15
    sampler = ImportanceSampler(T)
    pairs = _warm_history(T, 23, seed=1)  # duplicates of a t inside one batch, and > 10 per t in the big batch
    _feed(sampler, pairs, batch)
    expected = _expected_history(pairs, T)
    for t in range(T):
        np.testing.assert_allclose(sorted(sampler.loss_history[t].tolist()), sorted(expected[t]), rtol=1e-6)
    assert sampler.loss_counts.tolist() == [23] * T
    np.testing.assert_allclose(sampler.probabilities().numpy(), _numpy_probabilities(expected, T), rtol=1e-6)


def test_importance_many_duplicates_in_one_batch():
    T = 4
    sampler = ImportanceSampler(T)
    _feed(sampler, [(t, 1.0) for t in range(T) for _ in range(10)], batch=40)
    # 25 losses of t = 2 in one batch, then 3 more in the next: the FIFO holds the last 10 of the 28
    losses = list(np.arange(100.0, 125.0))
    sampler.update(torch.full((25,), 2), torch.tensor(losses))
    sampler.update(torch.tensor([2, 0, 2, 2]), torch.tensor([200.0, 5.0, 201.0, 202.0]))
    assert sorted(sampler.loss_history[2].tolist()) == sorted(losses[-7:] + [200.0, 201.0, 202.0])
    assert sorted(sampler.loss_history[0].tolist()) == sorted([1.0] * 9 + [5.0])
    assert sorted(sampler.loss_history[1].tolist()) == [1.0] * 10


def test_importance_probabilities_floor_and_unbiased_estimate():
    T = 30
    sampler = ImportanceSampler(T)
    pairs = _warm_history(T, 12, seed=2)
    _feed(sampler, pairs, batch=50)
    probs = _numpy_probabilities(_expected_history(pairs, T), T)
    np.testing.assert_allclose(sampler.probabilities().numpy(), probs, rtol=1e-6)
    assert probs.min() >= 0.001 / T
    # a fixed per-t loss table, different from the history that set p
    table = 0.2 + np.cos(np.arange(T) / 4.0) ** 2 + np.arange(T) / T
    n = 200_000
    t, w = sampler.sample(n, generator=torch.Generator().manual_seed(3))
    assert t.shape == (n,) and w.shape == (n,)
    np.testing.assert_allclose(w.double().numpy(), 1.0 / (T * probs[t.numpy()]), rtol=1e-6)
    weighted_estimate_check(t, w, table, probs)
    counts = np.bincount(t.numpy(), minlength=T)
    assert chi_square_pvalue(counts, probs) > 1e-4


def test_importance_floor_only_matters_for_zero_losses():
    T = 5
    sampler = ImportanceSampler(T)
    _feed(sampler, [(t, 0.0 if t == 0 else 1.0) for t in range(T) for _ in range(10)], batch=50)
    p = sampler.probabilities().numpy()
    assert p[0] == pytest.approx(0.001 / T, rel=1e-9)
    np.testing.assert_allclose(p[1:], (1 - 0.001) / 4 + 0.001 / T, rtol=1e-9)


def test_importance_state_dict_round_trip():
    T = 10
    a = ImportanceSampler(T)
    _feed(a, _warm_history(T, 14, seed=4), batch=9)
    b = ImportanceSampler(T)
    b.load_state_dict(a.state_dict())
    torch.testing.assert_close(b.probabilities(), a.probabilities())
    assert torch.equal(b.loss_counts, a.loss_counts)
    ta, wa = a.sample(32, generator=torch.Generator().manual_seed(5))
    tb, wb = b.sample(32, generator=torch.Generator().manual_seed(5))
    assert torch.equal(ta, tb) and torch.equal(wa, wb)
    # both continue the FIFO the same way
    more = _warm_history(T, 3, seed=6)
    _feed(a, more, batch=4)
    _feed(b, more, batch=4)
    torch.testing.assert_close(b.loss_history, a.loss_history)
    torch.testing.assert_close(b.probabilities(), a.probabilities())
    # the state is plain tensors (serialisable with torch.save)
    state = a.state_dict()
    assert set(state) == {"loss_history", "loss_counts"}
    assert state["loss_history"].shape == (T, 10)


def test_importance_rejects_bad_options():
    with pytest.raises(ValueError):
        ImportanceSampler(10, history=0)
    with pytest.raises(ValueError):
        ImportanceSampler(10, uniform_floor=1.5)
    with pytest.raises(ValueError):
        ImportanceSampler(0)


# ---------------------------------------------------------------------------------------------- stratified
@pytest.mark.parametrize(("T", "batch"), [(64, 4), (50, 3), (1000, 8)])
def test_stratified_strata_disjoint_cover_and_uniform(T, batch):
    P = 2
    strata = batch * P
    samplers = [StratifiedSampler(T, num_processes=P, process_index=k) for k in range(P)]
    gens = [torch.Generator().manual_seed(10 + k) for k in range(P)]
    draws = 4000 if T < 1000 else 2000
    seen = [set() for _ in range(P)]
    all_t = []
    for _ in range(draws):
        for k, (sampler, gen) in enumerate(zip(samplers, gens)):
            t, w = sampler.sample(batch, generator=gen)
            assert torch.equal(w, torch.ones(batch))
            stratum = np.arange(batch) + k * batch
            lo = np.floor(T * stratum / strata)
            hi = np.ceil(T * (stratum + 1) / strata) - 1
            assert ((t.numpy() >= lo) & (t.numpy() <= hi)).all()
            seen[k].update(t.tolist())
            all_t.append(t.numpy())
    if T % strata == 0:
        assert not (seen[0] & seen[1])  # the processes' strata are disjoint
    if T < 1000:
        assert seen[0] | seen[1] == set(range(T))  # and together cover [0, T)
    counts = np.bincount(np.concatenate(all_t), minlength=T)
    assert chi_square_pvalue(counts, np.full(T, 1 / T)) > 1e-4


def test_stratified_single_process_one_sample_per_stratum():
    sampler = StratifiedSampler(100)
    t, _ = sampler.sample(10, generator=torch.Generator().manual_seed(0))
    assert (t.numpy() // 10 == np.arange(10)).all()


# ---------------------------------------------------------------------------------------------- logit-normal
def _logit_normal_probs(T, mean, std):
    edges = np.arange(T + 1) / T
    with np.errstate(divide="ignore"):
        z = (logit(edges) - mean) / std
    return np.diff(norm.cdf(z))


@pytest.mark.parametrize(("mean", "std"), [(0.0, 1.0), (0.5, 0.7), (-1.0, 1.5)])
def test_logit_normal_marginal_and_unbiased_weights(mean, std):
    T = 50
    probs = _logit_normal_probs(T, mean, std)
    sampler = LogitNormalSampler(T, mean=mean, std=std, unbiased=True)
    np.testing.assert_allclose(sampler.probabilities().numpy(), probs, rtol=1e-9, atol=1e-15)
    n = 200_000
    t, w = sampler.sample(n, generator=torch.Generator().manual_seed(1))
    counts = np.bincount(t.numpy(), minlength=T)
    assert chi_square_pvalue(counts, probs) > 1e-4
    np.testing.assert_allclose(w.double().numpy(), 1.0 / (T * probs[t.numpy()]), rtol=1e-6)
    table = 1.0 + np.sin(np.arange(T) / 7.0) ** 2
    weighted_estimate_check(t, w, table, probs)
    # by default it reweights on purpose: weight 1, same t for the same generator
    biased = LogitNormalSampler(T, mean=mean, std=std)
    t2, w2 = biased.sample(n, generator=torch.Generator().manual_seed(1))
    assert torch.equal(t2, t) and torch.equal(w2, torch.ones(n))


def test_logit_normal_rejects_bad_std():
    with pytest.raises(ValueError, match="std"):
        LogitNormalSampler(10, std=0.0)


# ---------------------------------------------------------------------------------------------- uniform, factory
def test_uniform_sampler():
    T = 40
    sampler = TimestepSampler(T)
    np.testing.assert_allclose(sampler.probabilities().numpy(), np.full(T, 1 / T))
    t, w = sampler.sample(100_000, generator=torch.Generator().manual_seed(0))
    assert torch.equal(w, torch.ones(100_000))
    assert chi_square_pvalue(np.bincount(t.numpy(), minlength=T), np.full(T, 1 / T)) > 1e-4
    sampler.update(t[:10], torch.ones(10))  # a no-op
    assert sampler.state_dict() == {}


def test_make_timestep_sampler():
    assert type(make_timestep_sampler("uniform", 10)) is TimestepSampler
    s = make_timestep_sampler("stratified", 10, num_processes=4, process_index=3)
    assert isinstance(s, StratifiedSampler) and (s.num_processes, s.process_index) == (4, 3)
    assert isinstance(make_timestep_sampler("importance", 10), ImportanceSampler)
    ln = make_timestep_sampler("logit_normal", 10, logit_mean=0.2, logit_std=0.5)
    assert isinstance(ln, LogitNormalSampler) and (ln.mean, ln.std) == (0.2, 0.5)
    with pytest.raises(ValueError, match="timestep_sampler"):
        make_timestep_sampler("cosine", 10)
