#!/usr/bin/env python
"""Study v2: every objective on digits over several seeds, with intervals, curves, a sampling-step sweep, the
importance-sampling check and memorization; the page is regenerated from whatever results exist.

    python -m benchmarks.study_objectives --jobs 2              # the CPU profile (see below), docs/study.md
    python -m benchmarks.study_objectives --quick               # smoke profile: 2 objectives × 2 seeds, minutes
    python -m benchmarks.study_objectives --long --device cuda  # the GPU profile
    python -m benchmarks.study_objectives --dry_run             # the plan and its estimated time, nothing run
    python -m benchmarks.study_objectives --page_only           # the page from the results that exist

Each (objective, seed) is trained once into ``--cache_dir`` (default ``runs/study``) under a folder named by a hash
of its training flags; every measurement is a JSON file in it. Interrupting and rerunning resumes: finished runs
and measurements are read back, an unfinished training run resumes from its last checkpoint, and a changed profile
reruns only the runs and measurements whose settings changed.

Profiles (``benchmarks/study/profiles.py``; costs measured with the smoke run, see ``--dry_run``):

* ``--quick``: eps-simple and eps-hybrid, seeds 0 1, 100 steps, curves at 25/50/75/100, 64 samples per FID with
  20 DDPM steps, a 5/10/20-step sweep. A smoke test of every part, not a result.
* default (CPU): all 9 objectives × seeds 0 1 2, 400 steps of batch 64, curves at 50/100/200/300/400 for
  eps-simple, v-simple, eps-min_snr5 and eps-hybrid, 256 samples per FID with 50 respaced DDPM steps, bits/dim
  on all 360 held-out digits, the sweep at 10/25/50/100/250 steps (DDPM and DDIM) with 256 samples.
* ``--long`` (GPU): all 9 objectives × 5 seeds, 4,000 steps, curves at 250/500/1000/2000/3000/4000 (also for the
  two L_vlb runs), 2,000 samples per FID with 1,000 DDPM steps, the sweep at 10 … 1,000 steps with 2,000 samples,
  and the full bound.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from benchmarks.study import profiles as P  # noqa: E402

# Costs measured with the smoke profile (one torch thread, see the module docstring); --dry_run scales them.
SECONDS_PER_STEP = 0.25  # one training step, batch 64, default UNet
SECONDS_PER_1K_EVALUATIONS = 1.0  # 1,000 image-evaluations of the UNet when sampling or estimating bits/dim


def estimate(profile: P.Profile, seconds_per_step: float, seconds_per_1k: float) -> dict:
    """Training steps, network image-evaluations and the seconds they take (one process)."""
    steps = len(profile.runs()) * profile.steps
    # bits/dim: K calls per image plus the exact small-t draws (≈ 6 more), plus the 8 × 64 pilot
    per_bpd = profile.bpd_images * (profile.num_bpd_timesteps + 6) + 8 * 64
    per_fid = profile.fid_samples * profile.sampling_steps
    evaluations = 0
    for name, _ in profile.runs():
        points = len(profile.curve_points) if name in profile.curve_objectives else 1
        evaluations += points * (per_bpd + per_fid)
        if name in profile.sweep_objectives:
            evaluations += 2 * profile.sweep_samples * sum(profile.sweep_steps)
        if profile.full_bpd:
            evaluations += 360 * 1000
    seconds = steps * seconds_per_step + evaluations / 1000 * seconds_per_1k
    return {
        "runs": len(profile.runs()),
        "training_steps": steps,
        "network_evaluations": evaluations,
        "seconds": seconds,
    }


def measured_costs(results: dict) -> tuple[float | None, float | None]:
    """Median seconds per step and per 1,000 network evaluations in a results dictionary."""
    steps, evals = [], []
    for run in results.get("runs", {}).values():
        for entry in run.get("seeds", {}).values():
            if entry.get("train", {}).get("seconds_per_step"):
                steps.append(entry["train"]["seconds_per_step"])
            for e in entry.get("evals", {}).values():
                if e.get("kind") in ("fid", "bpd") and e.get("network_evaluations"):
                    evals.append(1000 * e["seconds"] / e["network_evaluations"])

    def median(xs):
        return sorted(xs)[len(xs) // 2] if xs else None

    return median(steps), median(evals)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    size = parser.add_mutually_exclusive_group()
    size.add_argument("--quick", action="store_true", help="the smoke profile (minutes)")
    size.add_argument("--long", action="store_true", help="the GPU profile")
    parser.add_argument("--out", default=None, help="figures and results.json (default docs/study; --quick: "
                        "docs/study_v2_smoke)")  # fmt: skip
    parser.add_argument("--page", default=None, help="the page (default docs/study.md; elsewhere OUT/study.md)")
    parser.add_argument("--cache_dir", default=str(ROOT / "runs" / "study"), help="the run cache")
    parser.add_argument("--objectives", nargs="*", default=None, help=f"subset of {', '.join(P.OBJECTIVES)}")
    parser.add_argument("--seeds", nargs="*", type=int, default=None, help="other seeds than the profile's")
    parser.add_argument("--jobs", type=int, default=1, help="runs in parallel (worker processes)")
    parser.add_argument("--threads", type=int, default=1, help="torch threads per job")
    parser.add_argument("--device", default="cpu", help="device of the measurements (training: accelerate's)")
    parser.add_argument("--keep_checkpoints", action="store_true", help="keep the training checkpoints")
    parser.add_argument("--page_only", action="store_true", help="only collect the results and write the page")
    parser.add_argument("--dry_run", action="store_true", help="print the plan and the estimated time")
    args = parser.parse_args(argv)
    unknown = [o for o in args.objectives or [] if o not in P.OBJECTIVES]
    if unknown:
        parser.error(f"--objectives: unknown {unknown}; valid: {', '.join(P.OBJECTIVES)}")
    if args.jobs < 1 or args.threads < 1:
        parser.error("--jobs and --threads must be >= 1")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    for key in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE"):
        os.environ.setdefault(key, "1")
    os.environ.setdefault("MPLBACKEND", "Agg")
    logging.basicConfig(format="%(asctime)s %(levelname)s %(message)s", level=logging.INFO)
    profile = P.QUICK if args.quick else P.LONG if args.long else P.CPU
    profile = P.select(profile, args.objectives, args.seeds)
    out = Path(args.out or ROOT / "docs" / ("study_v2_smoke" if args.quick else "study"))
    page = (
        Path(args.page)
        if args.page
        else (out.parent / "study.md" if out.resolve() == (ROOT / "docs" / "study").resolve() else out / "study.md")
    )

    from benchmarks.study import page as page_module
    from benchmarks.study import runner

    plan = estimate(profile, SECONDS_PER_STEP, SECONDS_PER_1K_EVALUATIONS)
    print(f"profile {profile.name}: {plan['runs']} runs, {plan['training_steps']} training steps, "
          f"{plan['network_evaluations']:,} network image-evaluations: ≈ {plan['seconds'] / 60 / args.jobs:.0f} min "
          f"with {args.jobs} job(s) of one free core each (before what the cache already holds)")  # fmt: skip
    if args.dry_run:
        return 0
    start = time.perf_counter()
    failures = []
    if not args.page_only:
        specs = [
            runner.RunSpec(name, seed, profile, args.cache_dir, args.device, args.keep_checkpoints)
            for name, seed in profile.runs()
        ]
        failures = runner.run_all(specs, jobs=args.jobs, threads=args.threads)
    results = runner.collect(profile, args.cache_dir)
    notes = None
    if not args.page_only:
        notes = {"elapsed_s": time.perf_counter() - start, "jobs": args.jobs, "threads": args.threads,
                 "device": args.device}  # fmt: skip
        results["session"] = notes
    out.mkdir(parents=True, exist_ok=True)
    (out / "results.json").write_text(json.dumps(results, indent=1, default=float) + "\n")
    page_module.write_page(results, out, page, notes)
    step_cost, eval_cost = measured_costs(results)
    print(f"wrote {page} and {out / 'results.json'}; measured {step_cost} s/step, {eval_cost} s per 1k evaluations")
    for failure in failures:
        print(f"FAILED: {failure}", file=sys.stderr)
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
