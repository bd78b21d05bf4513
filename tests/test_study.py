"""The study's pure parts (benchmarks/study): run-cache keys, interval maths, claim verdicts, the "steps to reach"
ratio, loss noise, FID from features, nearest-neighbour checks, the sampler loop against diffusers' DDPMPipeline,
and the page generated from a small fake results file."""

from __future__ import annotations

import math
import random
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch

from benchmarks.study import cache, claims, page, profiles, runner, stats

# ---------------------------------------------------------------------------------------------------- cache keys


def test_run_key_covers_flags_and_seed_not_evaluation_settings(tmp_path: Path):
    p = profiles.CPU
    flags = p.train_flags("eps-simple", 0)
    assert cache.flags_hash(flags) == cache.flags_hash(list(flags))  # deterministic
    assert cache.flags_hash(flags) != cache.flags_hash(p.train_flags("eps-simple", 1))  # the seed
    assert cache.flags_hash(flags) != cache.flags_hash(p.train_flags("v-simple", 0))  # the objective
    assert cache.flags_hash(flags) != cache.flags_hash(replace(p, steps=800, curve_points=(800,)).train_flags(
        "eps-simple", 0))  # fmt: skip
    # evaluation settings are not training flags: changing them reuses the trained runs
    other = replace(p, fid_samples=999, sampling_steps=7, bpd_images=11, sweep_samples=5)
    assert other.train_flags("eps-simple", 0) == flags
    folder = cache.run_folder(tmp_path, "eps-simple", 0, flags)
    assert folder.parent == tmp_path and folder.name == f"eps-simple-s0-{cache.flags_hash(flags)}"
    assert cache.measurement_name("fid", step=400, ddpm=50, n=256) == "fid-step400-ddpm50-n256"


def test_cached_computes_once_and_recomputes_a_damaged_file(tmp_path: Path):
    calls = []
    path = tmp_path / "m.json"
    assert cache.cached(path, lambda: calls.append(1) or {"v": 1}) == {"v": 1}
    assert cache.cached(path, lambda: calls.append(1) or {"v": 2}) == {"v": 1}
    path.write_text("{not json")
    assert cache.cached(path, lambda: calls.append(1) or {"v": 3}) == {"v": 3}
    assert len(calls) == 2


def test_profiles_checkpoint_every_curve_point():
    for p in profiles.PROFILES.values():
        assert p.curve_points[-1] == p.steps
        assert all(s % p.checkpointing_steps == 0 for s in p.curve_points)
        assert len(p.seeds) >= (2 if p.name == "quick" else 3)
    with pytest.raises(ValueError, match="curve_points"):
        replace(profiles.QUICK, curve_points=(50, 25, 100))
    with pytest.raises(ValueError, match="unknown"):
        replace(profiles.QUICK, objectives=("nope",))


def test_extra_sweep_seeds_are_runs_of_the_sweep_objectives_only():
    p = profiles.CONVERGED
    extra = [(o, s) for o, s in p.runs() if s not in p.seeds]
    assert extra and {o for o, _ in extra} == set(p.sweep_objectives)
    assert sorted(s for o, s in extra if o == "eps-simple") == sorted(p.sweep_extra_seeds)
    assert len(p.runs()) == len(p.objectives) * len(p.seeds) + len(p.sweep_objectives) * len(p.sweep_extra_seeds)
    chosen = profiles.select(p, ["eps-simple", "eps-hybrid"], [3])
    assert chosen.runs() == [("eps-simple", 3), ("eps-hybrid", 3)]  # --seeds: only those
    assert profiles.select(p, ["eps-kl"]).runs() == [("eps-kl", s) for s in p.seeds]  # not a sweep objective


def test_measurements_are_unique_and_cover_the_profile():
    p = profiles.QUICK
    for name in p.objectives:
        spec = runner.RunSpec(name, 0, p, "/nowhere")
        names = [m for m, _, _ in runner.measurements(spec)]
        assert len(names) == len(set(names))
        fids = [s for _, _, s in runner.measurements(spec) if s["kind"] == "fid"]
        sweep = 2 * len(p.sweep_steps) if name in p.sweep_objectives else 0
        curve = len(p.curve_points) if name in p.curve_objectives else 1
        # the sweep's DDPM at the profile's own steps and sample count is the final FID itself
        shared = int(
            name in p.sweep_objectives and p.sampling_steps in p.sweep_steps and p.sweep_samples == p.fid_samples
        )
        assert len(fids) == curve + sweep - shared


def test_a_complete_run_is_not_retrained_and_ctrl_c_stops_the_study(tmp_path: Path, monkeypatch):
    from ddpm_objectives_hf.training.run_folder import write_json

    spec = runner.RunSpec("eps-simple", 0, profiles.QUICK, str(tmp_path))
    monkeypatch.setattr(runner, "train_script", lambda argv: 130)  # train.py's exit status after Ctrl-C
    with pytest.raises(KeyboardInterrupt):
        runner.ensure_trained(spec)
    write_json(spec.folder / runner.RUN_RECORD, {"name": "eps-simple", "seed": 0})
    monkeypatch.setattr(runner, "train_script", lambda argv: pytest.fail("a complete run was trained again"))
    assert runner.ensure_trained(spec) == {"name": "eps-simple", "seed": 0}


def test_plan_counts_only_what_the_cache_lacks(tmp_path: Path):
    from ddpm_objectives_hf.training.run_folder import write_json

    p = profiles.QUICK
    before = runner.plan(p, 1.0, 1.0, cache_dir=str(tmp_path))
    assert before["todo"] == before["total"] and before["total"]["training_steps"] == len(p.runs()) * p.steps
    spec = runner.RunSpec(p.objectives[0], p.seeds[0], p, str(tmp_path))
    name, _, settings = runner.measurements(spec)[1]  # the final FID
    write_json(spec.folder / runner.RUN_RECORD, {})
    write_json(spec.folder / "evals" / f"{name}.json", {})
    after = runner.plan(p, 1.0, 1.0, cache_dir=str(tmp_path))["todo"]
    assert after["training_steps"] == before["total"]["training_steps"] - p.steps
    cost = runner.network_evaluations(p, settings)
    assert cost == p.fid_samples * p.sampling_steps
    assert after["network_evaluations"] == before["total"]["network_evaluations"] - cost


# ---------------------------------------------------------------------------------------------------- intervals
def test_t_interval_by_hand_and_against_scipy():
    s = stats.t_interval([1.0, 2.0, 3.0])
    half = 4.302652729911275 / math.sqrt(3)  # t_{0.975, 2}, from tables; s = 1
    assert s["mean"] == pytest.approx(2.0) and s["std"] == pytest.approx(1.0)
    assert (s["lo"], s["hi"]) == pytest.approx((2 - half, 2 + half))
    from scipy.stats import ttest_1samp

    values = [0.3, -1.2, 2.5, 0.9, 1.1]
    ci = ttest_1samp(values, 0).confidence_interval(0.95)
    s = stats.t_interval(values)
    assert (s["lo"], s["hi"]) == pytest.approx((ci.low, ci.high))
    assert stats.t_interval([4.0])["lo"] == -math.inf and stats.t_interval([4.0])["n"] == 1
    assert stats.t_interval([float("nan"), None])["n"] == 0


def test_paired_difference_uses_common_seeds_only():
    a = {"0": 1.0, "1": 2.0, "2": 4.0, "3": 9.0}
    b = {"0": 0.5, "1": 1.0, "2": 2.0}
    d = stats.paired_difference(a, b)
    assert d["seeds"] == ["0", "1", "2"] and d["values"] == [0.5, 1.0, 2.0]
    assert d["mean"] == pytest.approx(3.5 / 3)


@pytest.mark.parametrize(
    "lo, hi, sign, expected",
    [
        (-2.0, -0.5, -1, stats.HOLDS),
        (-2.0, -0.5, +1, stats.FAILS),
        (0.5, 2.0, +1, stats.HOLDS),
        (0.5, 2.0, -1, stats.FAILS),
        (-0.5, 2.0, -1, stats.UNRESOLVED),
        (-0.5, 2.0, +1, stats.UNRESOLVED),
    ],
)
def test_verdict(lo, hi, sign, expected):
    assert stats.verdict({"n": 3, "mean": (lo + hi) / 2, "lo": lo, "hi": hi}, sign) == expected


def test_verdict_edge_cases():
    assert stats.verdict(stats.t_interval([-5.0]), -1) == stats.UNRESOLVED  # one seed: no interval
    assert stats.verdict(stats.t_interval([]), -1) == stats.NO_DATA
    assert stats.verdict(stats.t_interval([-1.0, -1.1, -0.9]), -1) == stats.HOLDS
    with pytest.raises(ValueError):
        stats.verdict({"n": 3, "mean": 0, "lo": -1, "hi": 1}, 0)


def test_steps_to_reach_interpolates_the_first_crossing():
    steps, fid = [100, 200, 400, 800], [50.0, 30.0, 20.0, 25.0]
    assert stats.steps_to_reach(steps, fid, 25.0) == (pytest.approx(300.0), "interpolated")  # 200 + 200 · 5/10
    assert stats.steps_to_reach(steps, fid, 60.0) == (100.0, "at_or_before")
    assert stats.steps_to_reach(steps, fid, 10.0) == (None, "not_reached")


def test_reach_ratio_and_its_verdict():
    curves = {str(s): ([100, 200, 400], [40.0, 20.0 + s, 10.0]) for s in range(3)}
    targets = {"0": 30.0, "1": 30.0, "2": 30.0}
    r = stats.reach_ratio(curves, targets, final_step=400)
    # seed s crosses 30 between 100 (40) and 200 (20 + s): 100 + 100 · 10 / (20 − s)
    expected = [(100 + 100 * 10 / (20 - s)) / 400 for s in range(3)]
    assert r["values"] == pytest.approx(expected) and r["not_reached"] == []
    assert stats.ratio_verdict(r) == stats.HOLDS
    r = stats.reach_ratio(curves, {"0": 30.0, "1": 30.0, "2": 5.0}, final_step=400)
    assert r["not_reached"] == ["2"] and stats.ratio_verdict(r) != stats.HOLDS
    assert stats.ratio_verdict(stats.reach_ratio(curves, {k: 1.0 for k in targets}, 400)) == stats.FAILS
    assert stats.ratio_verdict(stats.reach_ratio({}, {}, 400)) == stats.NO_DATA


def test_step_noise_recovers_sigma_under_a_trend():
    rng = np.random.default_rng(0)
    n, sigma = 20000, 0.3
    losses = np.linspace(5.0, 1.0, n) + sigma * rng.standard_normal(n)
    assert stats.step_noise(losses.tolist()) == pytest.approx(sigma, rel=0.03)
    assert math.isnan(stats.step_noise([1.0, 2.0]))


# ---------------------------------------------------------------------------------------------------- measurements
def _scipy_fid(a: np.ndarray, b: np.ndarray) -> float:
    from scipy.linalg import sqrtm

    mu1, mu2 = a.mean(0), b.mean(0)
    s1, s2 = np.cov(a, rowvar=False), np.cov(b, rowvar=False)
    covmean = sqrtm(s1 @ s2).real
    return float(((mu1 - mu2) ** 2).sum() + np.trace(s1 + s2 - 2 * covmean))


def test_fid_from_features_matches_the_textbook_formula_and_bootstrap_is_seeded():
    from benchmarks.study import measure

    g = torch.Generator().manual_seed(0)
    real = torch.randn(300, 6, generator=g, dtype=torch.float64)
    fake = 0.3 + 1.2 * torch.randn(200, 6, generator=g, dtype=torch.float64)
    ref = measure.gaussian_stats(real)
    assert measure.fid_from_features(ref, fake) == pytest.approx(_scipy_fid(real.numpy(), fake.numpy()), rel=1e-8)
    assert measure.fid_from_features(ref, real) == pytest.approx(0.0, abs=1e-9)
    b1, b2 = measure.bootstrap_fid(ref, fake, 20, seed=3), measure.bootstrap_fid(ref, fake, 20, seed=3)
    assert b1 == b2 and b1["std"] > 0


def _fake_reference(n_train=40, n_held=12):
    from benchmarks.study import measure

    g = torch.Generator().manual_seed(0)
    train = torch.rand(n_train, 1, 8, 8, generator=g)
    held = torch.rand(n_held, 1, 8, 8, generator=g)
    flat = torch.nn.Flatten()
    return measure.Reference(
        heldout=held * 2 - 1, heldout01=held, train01=train, extractor=flat,
        heldout_features=flat(held).double(), train_features=flat(train).double(), feature_info={},
    )  # fmt: skip


def test_memorization_flags_copies_and_not_fresh_draws():
    from benchmarks.study import measure

    ref = _fake_reference()
    copies = ref.train01[:10].clone()
    m = measure.memorization(copies, ref, num_pairs=3)
    for space in ("pixel", "feature"):
        assert m[space]["nn_train_median"] == pytest.approx(0.0, abs=1e-6)
        assert m[space]["nn_ratio"] == pytest.approx(0.0, abs=1e-6)
    assert len(m["closest_pairs"]) == 3 and m["closest_pairs"][0]["distance"] == pytest.approx(0.0, abs=1e-6)
    assert m["closest_pairs"][0]["sample"] == pytest.approx(m["closest_pairs"][0]["train"], abs=1e-4)
    fresh = torch.rand(10, 1, 8, 8, generator=torch.Generator().manual_seed(5))
    assert measure.memorization(fresh, ref)["pixel"]["nn_train_median"] > 0.5
    d, i = measure.nearest(torch.zeros(1, 2), torch.tensor([[3.0, 4.0], [1.0, 0.0]]))
    assert float(d[0]) == pytest.approx(1.0) and int(i[0]) == 1


@pytest.mark.parametrize("out_channels", [1, 2])
def test_ddpm_sampler_loop_equals_diffusers_pipeline(out_channels):
    from diffusers import DDPMPipeline, DDPMScheduler
    from tiny import tiny_unet

    from benchmarks.study import measure

    unet = tiny_unet(out_channels).eval()
    variance = "learned_range" if out_channels == 2 else "fixed_small"
    config = dict(DDPMScheduler(variance_type=variance).config)
    images, evaluations = measure.generate(unet, config, "ddpm", 4, 3, seed=7)
    expected = DDPMPipeline(unet=unet, scheduler=DDPMScheduler.from_config(config))(
        batch_size=3, generator=torch.Generator().manual_seed(7), num_inference_steps=4, output_type="np"
    ).images
    assert evaluations == 12
    torch.testing.assert_close(images, torch.from_numpy(expected).permute(0, 3, 1, 2), atol=1e-5, rtol=0)
    ddim, _ = measure.generate(unet, config, "ddim", 4, 3, seed=7)
    assert ddim.shape == (3, 1, 8, 8) and 0 <= float(ddim.min()) and float(ddim.max()) <= 1


def test_loss_estimate_noise_compares_two_samplers_of_the_same_objective():
    from tiny import tiny_unet

    from benchmarks.study import measure
    from ddpm_objectives_hf import DDPMObjectiveScheduler

    scheduler = DDPMObjectiveScheduler(loss_type="kl")
    x0 = torch.rand(32, 1, 8, 8, generator=torch.Generator().manual_seed(0)) * 2 - 1
    r = measure.loss_estimate_noise(tiny_unet().eval(), scheduler, x0, batch_size=8, batches=6, seed=0, history=1)
    assert r["network_evaluations"] == 1000 + 2 * 6 * 8
    assert r["std_ratio"] == pytest.approx(r["importance"]["std"] / r["uniform"]["std"])
    assert r["uniform"]["std"] > 0 and r["importance"]["std"] > 0


# ---------------------------------------------------------------------------------------------------- the page
def _fake_results(objectives=("eps-simple", "eps-kl", "eps-kl-uniform", "eps-hybrid", "eps-min_snr5"), seeds=3):
    """Results in runner.collect's layout, with every measurement the quick profile names: eps-kl's bits/dim is
    1 lower than eps-simple's with small seed noise (a claim that must hold), its FID higher by 10 (holds), the
    hybrid's bits/dim equal to eps-simple's up to noise larger than the difference (not resolved)."""
    p = replace(profiles.QUICK, objectives=tuple(objectives), seeds=tuple(range(seeds)),
                curve_objectives=("eps-simple", "eps-min_snr5", "eps-hybrid"), ode_images=8)  # fmt: skip
    rng = random.Random(0)
    base_bpd = {"eps-simple": 5.0, "eps-kl": 4.0, "eps-kl-uniform": 4.3, "eps-hybrid": 5.0, "eps-min_snr5": 6.0}
    base_fid = {"eps-simple": 30.0, "eps-kl": 40.0, "eps-kl-uniform": 42.0, "eps-hybrid": 31.0, "eps-min_snr5": 28.0}
    runs = {}
    for name in objectives:
        seeds_out = {}
        for seed in range(seeds):
            spec = runner.RunSpec(name, seed, p, "/nowhere")
            evals = {}
            for m, step, settings in runner.measurements(spec):
                frac = step / p.steps
                e = {"step": step, **settings, "seconds": 1.0, "network_evaluations": 1000}
                if settings["kind"] == "bpd":
                    noise = rng.gauss(0, 0.5 if name == "eps-hybrid" else 0.02)
                    e.update(bpd=base_bpd[name] + noise + (1 - frac), stderr=0.05)
                elif (
                    settings["kind"] == "ode"
                ):  # the exact likelihood: 0.3 below eps-simple's bound, 0.05 below L_vlb's
                    gap = 0.05 if "kl" in name else 0.3
                    e.update(bpd=base_bpd[name] - gap + rng.gauss(0, 0.01), stderr=0.05)
                elif settings["kind"] == "fid":
                    k = settings["num_steps"]
                    penalty = (50 if name == "eps-simple" else 5) / k
                    e.update(fid=base_fid[name] * (2 - frac) + penalty + rng.gauss(0, 0.1), fid_bootstrap={"std": 0.5},
                             classifier_confidence=0.9)  # fmt: skip
                elif settings["kind"] == "isnoise":
                    ratio = 0.5 + rng.gauss(0, 0.02)
                    e.update(
                        uniform={"std": 1.0, "mean": 3.0}, importance={"std": ratio, "mean": 3.0}, std_ratio=ratio
                    )
                else:
                    mem = {"nn_train_median": 1.0, "heldout_nn_train_median": 1.1,
                           "closer_to_train": 0.5 + rng.gauss(0, 0.02),
                           "closer_to_train_fresh": 0.5, "nn_train_quantiles": [0.5, 0.8, 1.0, 1.2, 1.5],
                           "heldout_nn_train_quantiles": [0.6, 0.9, 1.1, 1.3, 1.6]}  # fmt: skip
                    pairs = [{"distance": 0.1, "sample": [0.5] * 64, "train": [0.4] * 64, "train_index": 0}]
                    e.update(pixel=mem, feature=mem, closest_pairs=pairs)
                evals[m] = e
            scale = 1.0 if name == "eps-kl-uniform" else 0.5
            loss = [1.0 + scale * rng.gauss(0, 1) ** 2 for _ in range(40)]
            seeds_out[str(seed)] = {"evals": evals, "loss": loss, "train": {"seconds_per_step": 0.2}}
        runs[name] = {"flags": profiles.OBJECTIVES[name], "seeds": seeds_out}
    return {"profile": p.as_dict(), "runs": runs}


def test_claims_from_fake_results():
    results = _fake_results()
    by_id = {c["id"]: c for c in claims.claims(results)}
    assert by_id["ho-nll"]["verdict"] == stats.HOLDS  # Ho et al.: L_vlb with uniform t
    assert by_id["ho-nll"]["estimate"]["mean"] == pytest.approx(-0.7, abs=0.1)
    assert by_id["nd-is-noise"]["verdict"] == stats.HOLDS
    assert by_id["nd-is-noise"]["estimate"]["mean"] == pytest.approx(math.log(0.5), abs=0.1)
    assert by_id["ho-fid"]["verdict"] == stats.HOLDS
    assert by_id["ho-fid"]["fid_noise"] == pytest.approx(math.hypot(0.5, 0.5))  # both FIDs have σ = 0.5
    assert by_id["nd-hybrid-nll"]["verdict"] in (stats.UNRESOLVED, stats.FAILS, stats.HOLDS)
    assert by_id["nd-few-steps-5"]["verdict"] == stats.HOLDS  # 50/k vs 5/k penalty dominates at k = 5
    assert by_id["nd-is-bpd"]["verdict"] == stats.HOLDS
    assert by_id["hang-reach"]["verdict"] == stats.HOLDS  # min-SNR's FID is below eps-simple's final at all points
    assert claims.memorization_checks(results)[0]["verdict"] == stats.UNRESOLVED


def test_exact_likelihood_claims_gaps_and_plateau():
    results = _fake_results()
    by_id = {c["id"]: c for c in claims.claims(results)}
    assert by_id["ho-nll-exact"]["verdict"] == stats.HOLDS  # 4.25 vs 4.7
    assert by_id["ho-nll-exact"]["estimate"]["mean"] == pytest.approx(4.25 - 4.7, abs=0.05)
    gaps = {g["objective"]: g for g in claims.bound_gaps(results)}
    assert gaps["eps-simple"]["gap"]["mean"] == pytest.approx(0.3, abs=0.05)
    assert gaps["eps-kl"]["gap"]["mean"] == pytest.approx(0.05, abs=0.05)
    # fake curves fall by 1 bit/dim × (1 − step/steps): the last quarter moves 0.25 > 0.05, so no plateau
    flat = {f["objective"]: f for f in claims.plateau(results)}
    assert set(flat) == {"eps-simple", "eps-min_snr5", "eps-hybrid"}
    assert flat["eps-simple"]["bpd_change"]["mean"] == pytest.approx(-0.25, abs=0.05)
    assert not flat["eps-simple"]["flat"]


def test_gap_summary_reads_the_signs_and_extremes_from_the_numbers():
    def gap(name, exact, values):
        return {"objective": name, "exact": stats.t_interval([exact] * 3), "gap": stats.t_interval(values)}

    below = [gap("a", 4.7, [-0.04, -0.05, -0.045]), gap("b", 4.2, [-0.5, -0.4, -0.45])]
    text = page._gap_summary(below)
    assert text.startswith("Best exact likelihood: b (4.200")
    assert "the bound lies below the exact likelihood" in text
    assert "nearest to the exact likelihood for a (gap -0.045" in text and "farthest from it for b" in text
    mixed = [gap("a", 4.7, [0.1, 0.2, 0.15]), gap("b", 4.2, [-0.5, -0.4, -0.45])]
    assert "signs differ" in page._gap_summary(mixed)
    above = [gap("a", 4.7, [0.1, 0.2, 0.15])]
    assert "lies above" in page._gap_summary(above)


def test_seeds_to_resolve_is_the_smallest_n_whose_interval_clears_zero():
    # mean 1, s = 1: t_{.975, n−1} / √n < 1 first at n = 7 (2.447 / 2.646 = 0.92; n = 6: 2.571 / 2.449 = 1.05)
    assert stats.seeds_to_resolve({"mean": 1.0, "std": 1.0}) == 7
    assert stats.seeds_to_resolve({"mean": -1.0, "std": 1.0}) == 7
    assert stats.seeds_to_resolve({"mean": 0.0, "std": 1.0}) is None
    assert stats.seeds_to_resolve({"mean": 1e-6, "std": 1.0}) is None  # beyond 1,000 seeds
    unresolved = [c for c in claims.claims(_fake_results()) if c["verdict"] == stats.UNRESOLVED]
    assert unresolved and all("seeds_to_resolve" in c for c in unresolved)


def test_page_from_fake_results(tmp_path: Path):
    results = _fake_results()
    out = page.write_page(results, tmp_path / "figs", tmp_path / "study.md")
    text = out.read_text()
    for figure in (
        "final_fid",
        "final_bpd",
        "curves",
        "sampling_steps",
        "importance",
        "memorization",
        "closest_pairs",
        "exact_likelihood",
    ):
        assert (tmp_path / "figs" / f"{figure}.png").is_file()
        assert f"(figs/{figure}.png)" in text
    assert "| [Ho et al. 2020](https://arxiv.org/abs/2006.11239) | Training on the true bound" in text
    assert "**holds**" in text and "## Discussion" in text and "Incomplete" not in text
    assert "## The exact likelihood beside the bound" in text and "**Plateau.**" in text
    # partial results: one objective only, one seed: the page is still written, the rest "not run"
    partial = _fake_results(objectives=("eps-simple",), seeds=1)
    partial["profile"]["objectives"] = list(profiles.QUICK.objectives)
    text = page.write_page(partial, tmp_path / "p", tmp_path / "partial.md").read_text()
    assert "Incomplete" in text and "not run in this profile" in text


def test_cli_dry_run_and_bad_objective(capsys):
    from benchmarks import study_objectives

    assert study_objectives.main(["--quick", "--dry_run"]) == 0
    assert "profile quick: 4 runs, 400 training steps" in capsys.readouterr().out
    with pytest.raises(SystemExit):
        study_objectives.parse_args(["--objectives", "nope"])


def test_the_study_reads_the_digits_as_evaluate_py_does():
    """The study's reference images (its FID reference and bits/dim data) are evaluate.py's, value for value."""
    from benchmarks.study.measure import load_digits
    from ddpm_objectives_hf.evaluation.arguments import EvalArguments, load_images

    for split in ("train", "test"):
        expected, _ = load_images(EvalArguments(model_dir="digits", split=split, fid_features="digits"), 1, 8)
        assert torch.equal(load_digits(split), expected)


def test_log_ticks_label_only_where_labels_do_not_collide():
    plt = page._plt()
    fig, ax = plt.subplots()
    page._log_ticks(ax, (250, 500, 1000, 1500, 2000, 3000, 3500, 4000))
    labels = [t.get_text() for t in ax.get_xticklabels()]
    plt.close(fig)
    assert labels == ["250", "500", "1000", "", "2000", "", "", "4000"]
