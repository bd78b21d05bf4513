"""Running the study: train each (objective, seed) once with ``scripts/train.py`` in a child process (resuming an
interrupted run from its last checkpoint), keep its EMA weights at the curve points, run every measurement the profile
asks for, each cached in the run's folder; then collect whatever exists into one results dictionary.

Runs are independent: ``jobs`` worker processes (one torch thread each by default) take them in turn.
"""

from __future__ import annotations

import logging
import os
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from .cache import measurement_name, read_or_none, run_folder
from .profiles import VLB_OBJECTIVES, Profile

TRAIN_SCRIPT = Path(__file__).resolve().parents[2] / "scripts" / "train.py"

logger = logging.getLogger("benchmarks.study")
RUN_RECORD = "run.json"


@dataclass(frozen=True)
class RunSpec:
    name: str
    seed: int
    profile: Profile
    cache_dir: str
    device: str = "cpu"
    keep_checkpoints: bool = False

    @property
    def flags(self) -> list[str]:
        return self.profile.train_flags(self.name, self.seed)

    @property
    def folder(self) -> Path:
        return run_folder(self.cache_dir, self.name, self.seed, self.flags)

    @property
    def sample_seed(self) -> int:
        """The noise of every sample set of this seed: the same for all objectives and steps (paired comparisons)."""
        return 10_000 + self.seed


# ---------------------------------------------------------------------------------------------------- training
def _final_steps(model_dir: Path) -> int | None:
    record = read_or_none(model_dir / "objective.json")
    return record.get("train_steps") if record else None


def ensure_trained(spec: RunSpec) -> dict:
    """Train the run unless ``run.json`` says it is complete; resume from the newest complete checkpoint if a
    previous attempt was interrupted (train.py reproduces the uninterrupted run: tests/test_train.py). Then keep the
    EMA weights of the curve points and drop the checkpoints."""
    from ddpm_objectives_hf.training.run_folder import list_checkpoints, remove_path, write_json

    folder = spec.folder
    record = read_or_none(folder / RUN_RECORD)
    if record is not None:
        return record
    model_dir = folder / "model"
    profile = spec.profile
    trained_steps, seconds, resumed_from = 0, 0.0, None
    if _final_steps(model_dir) != profile.steps:
        from ddpm_objectives_hf.cli import EXIT_INTERRUPTED

        argv = ["--output_dir", str(model_dir), *spec.flags]
        checkpoints = list_checkpoints(model_dir)
        if checkpoints:
            resumed_from = int(checkpoints[-1].name.split("-")[-1])
            argv += ["--resume_from_checkpoint", "latest"]
        elif model_dir.exists():
            remove_path(model_dir)  # an attempt that stopped before its first checkpoint: start over
        folder.mkdir(parents=True, exist_ok=True)
        logger.info("training %s seed %d -> %s%s", spec.name, spec.seed, model_dir,
                    f" (resuming at step {resumed_from})" if resumed_from else "")  # fmt: skip
        start = time.perf_counter()
        code = train_script(argv)
        if code == EXIT_INTERRUPTED:  # Ctrl-C inside train.py: stop the study (a rerun resumes), not just this run
            raise KeyboardInterrupt
        if code != 0:
            raise RuntimeError(f"training {spec.name} seed {spec.seed} failed (flags: {' '.join(argv)})")
        seconds = time.perf_counter() - start
        trained_steps = profile.steps - (resumed_from or 0)
    ema_steps = []
    if spec.name in profile.curve_objectives:
        from .measure import extract_ema, load_model

        unet = None
        for step in profile.curve_points[:-1]:
            target = folder / "ema" / f"step-{step}.safetensors"
            if not target.is_file():
                unet = unet or load_model(model_dir)[0]
                extract_ema(model_dir / f"checkpoint-{step}", unet, target)
            ema_steps.append(step)
    if not spec.keep_checkpoints:
        for checkpoint in list_checkpoints(model_dir):
            remove_path(checkpoint)
    saved = read_or_none(model_dir / "objective.json") or {}
    record = {
        "name": spec.name,
        "seed": spec.seed,
        "flags": spec.flags,
        "steps": profile.steps,
        "train_seconds": seconds,  # this session's training only (0 when found complete)
        "trained_steps": trained_steps,
        "seconds_per_step": _median_step_seconds(model_dir / "loss_history.json", profile.batch_size),
        "resumed_from": resumed_from,
        "ema_steps": ema_steps,
        "train_steps_saved": saved.get("train_steps"),
        "threads": _threads(),
    }
    write_json(folder / RUN_RECORD, record)
    return record


def train_script(argv: list[str]) -> int:
    """``python scripts/train.py ARGV`` in a child process with this worker's torch threads; its exit status."""
    env = {**os.environ, "OMP_NUM_THREADS": str(_threads())}
    return subprocess.run([sys.executable, str(TRAIN_SCRIPT), *argv], env=env).returncode


def _median_step_seconds(history_file: Path, batch_size: int) -> float | None:
    """The median time of one optimizer step, from train.py's per-step throughput log (``--logging_steps 1``): the
    loop alone, without start-up and saving."""
    import json

    try:
        rates = sorted(h["images_per_s"] for h in json.loads(history_file.read_text()) if h.get("images_per_s"))
    except (OSError, ValueError, KeyError, TypeError):
        return None
    return batch_size / rates[len(rates) // 2] if rates else None


def _threads() -> int:
    import torch

    return torch.get_num_threads()


# ---------------------------------------------------------------------------------------------------- measurements
def measurements(spec: RunSpec) -> list[tuple[str, int, dict]]:
    """``(measurement name, step, settings)`` of everything the profile measures on this run, cheapest first."""
    p = spec.profile
    out = [
        (measurement_name("bpd", step=p.steps, img=p.bpd_images, K=p.num_bpd_timesteps), p.steps, {"kind": "bpd"}),
        (
            measurement_name("fid", step=p.steps, ddpm=p.sampling_steps, n=p.fid_samples),
            p.steps,
            {"kind": "fid", "sampler": "ddpm", "num_steps": p.sampling_steps, "num_samples": p.fid_samples},
        ),
        (measurement_name("mem", step=p.steps, ddpm=p.sampling_steps, n=p.fid_samples), p.steps, {"kind": "mem"}),
    ]
    if spec.name in p.curve_objectives:
        for step in p.curve_points[:-1]:
            out.append(
                (measurement_name("bpd", step=step, img=p.bpd_images, K=p.num_bpd_timesteps), step, {"kind": "bpd"})
            )
            out.append(
                (
                    measurement_name("fid", step=step, ddpm=p.sampling_steps, n=p.fid_samples),
                    step,
                    {"kind": "fid", "sampler": "ddpm", "num_steps": p.sampling_steps, "num_samples": p.fid_samples},
                )
            )
    if spec.name in p.sweep_objectives:
        for sampler in ("ddpm", "ddim"):
            for k in p.sweep_steps:
                settings = {"kind": "fid", "sampler": sampler, "num_steps": k, "num_samples": p.sweep_samples}
                out.append(
                    (measurement_name("fid", step=p.steps, **{sampler: k}, n=p.sweep_samples), p.steps, settings)
                )
    if spec.name in VLB_OBJECTIVES:
        name = measurement_name("isnoise", step=p.steps, b=p.batch_size, m=p.noise_batches)
        out.append((name, p.steps, {"kind": "isnoise"}))
    if p.ode_images:
        name = measurement_name("ode", step=p.steps, img=p.ode_images, draws=p.ode_draws)
        out.append((name, p.steps, {"kind": "ode"}))
    if p.full_bpd:
        out.append((measurement_name("fullbpd", step=p.steps, img=len_heldout()), p.steps, {"kind": "fullbpd"}))
    unique: dict[str, tuple[str, int, dict]] = {}
    for entry in out:  # the sweep's DDPM at the profile's own setting is the final FID itself
        unique.setdefault(entry[0], entry)
    return list(unique.values())


def len_heldout() -> int:
    return 360  # the digits' fixed held-out split (data/sources.py: load_digits_split)


_REFERENCE = None


def reference(device: str):
    global _REFERENCE
    if _REFERENCE is None:
        from .measure import load_reference

        _REFERENCE = load_reference(device)
    return _REFERENCE


def measure(spec: RunSpec) -> None:
    """Every measurement of one run that is not cached yet."""
    from ddpm_objectives_hf.training.run_folder import write_json

    from .measure import (
        exact_bpd,
        fast_bpd,
        full_bound,
        load_model,
        load_samples,
        loss_estimate_noise,
        memorization,
        sample_and_score,
    )

    folder, p = spec.folder, spec.profile
    models: dict[int, tuple] = {}

    def model(step: int):
        if step not in models:
            models.clear()  # one model in memory at a time
            ema = None if step == p.steps else folder / "ema" / f"step-{step}.safetensors"
            models[step] = load_model(folder / "model", ema, spec.device)
        return models[step]

    for name, step, settings in measurements(spec):
        path = folder / "evals" / f"{name}.json"
        if read_or_none(path) is not None:
            continue
        if step != p.steps and not (folder / "ema" / f"step-{step}.safetensors").is_file():
            # a curve point added after this run was trained: its weights were not kept (rerun the run to measure)
            logger.warning("%s seed %d: no weights kept at step %d; %s not measured", spec.name, spec.seed, step, name)
            continue
        ref = reference(spec.device)
        kind = settings["kind"]
        if kind == "bpd":
            unet, scheduler, _ = model(step)
            result = fast_bpd(unet, scheduler, ref.heldout[: p.bpd_images], num_timesteps=p.num_bpd_timesteps,
                              seed=spec.seed)  # fmt: skip
        elif kind == "ode":
            unet, scheduler, _ = model(step)
            result = exact_bpd(unet, scheduler, ref.heldout[: p.ode_images], draws=p.ode_draws, seed=spec.seed)
        elif kind == "fullbpd":
            unet, scheduler, _ = model(step)
            result = full_bound(unet, scheduler, ref.heldout, seed=spec.seed)
        elif kind == "fid":
            unet, _, sampling_config = model(step)
            result = sample_and_score(
                unet, sampling_config, ref, sampler=settings["sampler"], num_steps=settings["num_steps"],
                num_samples=settings["num_samples"], seed=spec.sample_seed, bootstrap=p.bootstrap,
                samples_file=folder / "samples" / f"{name}.npz",
            )  # fmt: skip
        elif kind == "isnoise":
            unet, scheduler, _ = model(step)
            result = loss_estimate_noise(unet, scheduler, ref.train01 * 2 - 1, batch_size=p.batch_size,
                                         batches=p.noise_batches, seed=spec.seed)  # fmt: skip
        else:  # memorization, on the samples of the final FID
            source = name.replace("mem-", "fid-", 1)
            result = memorization(load_samples(folder / "samples" / f"{source}.npz"), ref)
        write_json(path, result)
        logger.info("%s seed %d: %s done", spec.name, spec.seed, name)


def process(spec: RunSpec) -> str:
    ensure_trained(spec)
    measure(spec)
    return f"{spec.name} seed {spec.seed}"


def _init_worker(threads: int) -> None:
    import torch

    torch.set_num_threads(threads)
    logging.basicConfig(format="%(asctime)s %(levelname)s %(message)s", level=logging.INFO)


def run_all(specs: list[RunSpec], jobs: int = 1, threads: int = 1) -> list[str]:
    """Process every run: in this process (``jobs`` 1) or in ``jobs`` worker processes. A failed run is reported and
    the others go on; the failures are returned."""
    failures = []
    if jobs <= 1:
        _init_worker(threads)
        for spec in specs:
            try:
                logger.info("done: %s", process(spec))
            except Exception as err:  # noqa: BLE001  (one run's failure must not stop the study)
                logger.exception("run %s seed %d failed", spec.name, spec.seed)
                failures.append(f"{spec.name} seed {spec.seed}: {err}")
        return failures
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor, as_completed

    os.environ.setdefault("OMP_NUM_THREADS", str(threads))
    context = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(jobs, mp_context=context, initializer=_init_worker, initargs=(threads,)) as pool:
        futures = {pool.submit(process, spec): spec for spec in specs}
        for future in as_completed(futures):
            spec = futures[future]
            try:
                logger.info("done: %s", future.result())
            except Exception as err:  # noqa: BLE001
                logger.error("run %s seed %d failed: %s", spec.name, spec.seed, err)
                failures.append(f"{spec.name} seed {spec.seed}: {err}")
    return failures


# ---------------------------------------------------------------------------------------------------- planning
def network_evaluations(profile: Profile, settings: dict) -> int:
    """Image-evaluations of the UNet one measurement costs (the bits/dim estimate: K calls per image plus about 6
    for the averaged exact small-t draws, and the 8-image pilot on a 64-point grid)."""
    kind = settings["kind"]
    if kind == "bpd":
        return profile.bpd_images * (profile.num_bpd_timesteps + 6) + 8 * 64
    if kind == "fid":
        return settings["num_samples"] * settings["num_steps"]
    if kind == "fullbpd":
        return len_heldout() * 1000
    if kind == "ode":
        return profile.ode_images * profile.ode_draws * 500  # RK45 at 1e-5 on the digits models: ~500 calls per solve
    if kind == "isnoise":
        return 10 * 1000 + 2 * profile.noise_batches * profile.batch_size
    return 0


def plan(profile: Profile, seconds_per_step: float, seconds_per_1k: float, cache_dir: str | None = None) -> dict:
    """What ``profile`` costs: training steps and network evaluations, in all and still to do given the cache, and
    the seconds they take for one process at the given costs."""
    total = {"runs": 0, "training_steps": 0, "network_evaluations": 0}
    todo = dict(total)
    for name, seed in profile.runs():
        spec = RunSpec(name, seed, profile, cache_dir or "/nonexistent")
        trained = cache_dir is not None and (spec.folder / RUN_RECORD).is_file()
        for bucket, skip in ((total, False), (todo, trained)):
            bucket["runs"] += 1
            bucket["training_steps"] += 0 if skip else profile.steps
        for measurement, _, settings in measurements(spec):
            cost = network_evaluations(profile, settings)
            total["network_evaluations"] += cost
            done = cache_dir is not None and (spec.folder / "evals" / f"{measurement}.json").is_file()
            todo["network_evaluations"] += 0 if done else cost
    for bucket in (total, todo):
        bucket["seconds"] = (
            bucket["training_steps"] * seconds_per_step + bucket["network_evaluations"] / 1000 * seconds_per_1k
        )
    return {"total": total, "todo": todo}


def measured_costs(cache_dir: str) -> tuple[float | None, float | None]:
    """Median seconds per training step and per 1,000 network evaluations over every run and measurement in the
    cache (``None`` where there is none)."""
    steps, per_1k = [], []
    for record_file in Path(cache_dir).glob(f"*/{RUN_RECORD}"):
        record = read_or_none(record_file) or {}
        if record.get("seconds_per_step"):
            steps.append(record["seconds_per_step"])
        for eval_file in record_file.parent.glob("evals/*.json"):
            e = read_or_none(eval_file) or {}
            if e.get("network_evaluations") and e.get("seconds"):
                per_1k.append(1000 * e["seconds"] / e["network_evaluations"])

    def median(xs):
        return sorted(xs)[len(xs) // 2] if xs else None

    return median(steps), median(per_1k)


# ---------------------------------------------------------------------------------------------------- collecting
def collect(profile: Profile, cache_dir: str, device: str = "cpu") -> dict:
    """Everything measured so far for ``profile``'s runs, per objective and seed (missing entries are absent)."""
    import json

    runs: dict = {}
    for name, seed in profile.runs():
        spec = RunSpec(name, seed, profile, cache_dir, device)
        folder = spec.folder
        record = read_or_none(folder / RUN_RECORD)
        entry: dict = {"folder": folder.name}
        if record is not None:
            entry["train"] = {
                k: record.get(k) for k in ("seconds_per_step", "trained_steps", "train_seconds", "threads")
            }
        history_path = folder / "model" / "loss_history.json"
        if history_path.is_file():
            try:
                entry["loss"] = [h["loss"] for h in json.loads(history_path.read_text())]
            except (ValueError, KeyError, TypeError):
                pass
        evals = {}
        for measurement, step, settings in measurements(spec):
            value = read_or_none(folder / "evals" / f"{measurement}.json")
            if value is not None:
                evals[measurement] = {"step": step, **settings, **value}
        entry["evals"] = evals
        if record is not None or evals:
            runs.setdefault(name, {"flags": profile.train_flags(name, seed)[: _objective_flag_count(name)]})
            runs[name].setdefault("seeds", {})[str(seed)] = entry
    return {"profile": profile.as_dict(), "runs": runs}


def _objective_flag_count(name: str) -> int:
    from .profiles import OBJECTIVES

    return len(OBJECTIVES[name])
