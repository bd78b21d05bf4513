#!/usr/bin/env python
"""Study v2: every objective on digits over several seeds, with intervals, curves, a sampling-step sweep, the
importance-sampling check and memorization; the page is regenerated from whatever results exist.

    python -m benchmarks.study_objectives --jobs 2              # the CPU profile (see below), docs/study_cpu.md
    python -m benchmarks.study_objectives --converged           # the claims' objectives at their plateau, docs/study.md
    python -m benchmarks.study_objectives --quick               # smoke profile: 2 objectives × 2 seeds, minutes
    python -m benchmarks.study_objectives --long --device cuda  # the GPU profile
    python -m benchmarks.study_objectives --dry_run             # the plan and its estimated time, nothing run
    python -m benchmarks.study_objectives --page_only           # the page from the results that exist

Each (objective, seed) is trained once into ``--cache_dir`` (default ``runs/study``) under a folder named by a hash
of its training flags; every measurement is a JSON file in it. Interrupting and rerunning resumes: finished runs
and measurements are read back, an unfinished training run resumes from its last checkpoint, and a changed profile
reruns only the runs and measurements whose settings changed.

Profiles (``benchmarks/study/profiles.py``):

* ``--quick``: eps-simple and eps-hybrid × seeds 0 1, 100 steps, curves at 25/50/75/100, 64 samples per FID with
  20 DDPM steps, a 5/10/20-step sweep. A smoke test of every part, not a result: 5.7 min from an empty cache on
  the shared 2-core machine (one job, other work running), where one training step (batch 64, train.py's default
  UNet) took 0.42 s and 1,000 network image-evaluations (sampling, bits/dim) 2.5 s, one torch thread.
* default (CPU): all 9 objectives × seeds 0 1 2, 300 steps of batch 64, curves at 25/50/100/200/300 for
  eps-simple, v-simple, eps-min_snr5 and eps-hybrid, 200 samples per FID with 50 respaced DDPM steps, bits/dim on
  128 held-out digits, the sweep at 10/25/50/100 steps (DDPM and DDIM, 200 samples), the L_vlb loss noise on 32
  batches: 8,100 training steps and 1.55 M network evaluations, ≈ 61 min with ``--jobs 2`` at the smoke run's
  costs (less on two free cores). ``--dry_run`` prints this estimate from the costs measured in the cache.
* ``--converged``: the five objectives the claims compare (eps-simple, eps-kl, eps-kl-uniform, eps-hybrid,
  eps-min_snr5) × seeds 0 1 2, and seeds 3-8 for eps-simple and eps-hybrid (a second stage for the fixed- vs
  learned-variance claims, sized from the first stage's spread), 4,000 steps (at 2,400 eps-simple's bits/dim still
  moved 0.09 over the last 600), curves at 250/500/1000/1500/2000/3000/3500/4000 for all, the same FID, bits/dim and
  sweep settings as the CPU profile, and the exact likelihood (probability-flow ODE, 128 held-out digits, one draw)
  of every final model: 27 runs, 108,000 training steps and ≈ 6.1 M network evaluations, ≈ 5.2 h of one core
  (0.14 s per step, 0.57 s per 1,000 evaluations measured beside other work), run as two jobs over two sittings.
  The page's plateau table says whether each curve has flattened.
* ``--long`` (GPU): all 9 objectives × 5 seeds, 4,000 steps, curves at 250/500/1000/2000/3000/4000 (also for the
  two L_vlb runs), 2,000 samples per FID with 1,000 DDPM steps, the sweep at 10/25/50/100/250/1000 steps with 2,000
  samples, and the full bound: 180,000 training steps and ≈ 446 M network evaluations (not timed here: no GPU).
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
# profile -> (figures and results.json, page), under docs/: the converged profile is the study's page
DEFAULT_OUTPUTS = {
    "quick": ("study_v2_smoke", "study_v2_smoke/study.md"),
    "cpu": ("study_cpu", "study_cpu.md"),
    "converged": ("study", "study.md"),
    "long": ("study", "study.md"),
}
SECONDS_PER_STEP = 0.42  # one training step, batch 64, default UNet
SECONDS_PER_1K_EVALUATIONS = 2.5  # 1,000 image-evaluations of the UNet when sampling or estimating bits/dim


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    size = parser.add_mutually_exclusive_group()
    size.add_argument("--quick", action="store_true", help="the smoke profile (minutes)")
    size.add_argument("--long", action="store_true", help="the GPU profile")
    size.add_argument("--converged", action="store_true", help="the claims' objectives trained to their plateau")
    parser.add_argument("--out", default=None, help="figures and results.json (default docs/study for --converged "
                        "and --long, docs/study_cpu for the CPU profile, docs/study_v2_smoke for --quick)")  # fmt: skip
    parser.add_argument("--page", default=None, help="the page (default: docs/study.md, docs/study_cpu.md, "
                        "docs/study_v2_smoke/study.md; with --out: OUT/study.md)")  # fmt: skip
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
    profile = P.QUICK if args.quick else P.LONG if args.long else P.CONVERGED if args.converged else P.CPU
    profile = P.select(profile, args.objectives, args.seeds)
    default_out, default_page = DEFAULT_OUTPUTS[profile.name]
    out = Path(args.out) if args.out else ROOT / "docs" / default_out
    page = Path(args.page) if args.page else out / "study.md" if args.out else ROOT / "docs" / default_page

    from benchmarks.study import page as page_module
    from benchmarks.study import runner

    step_cost, eval_cost = runner.measured_costs(args.cache_dir)
    costs = (step_cost or SECONDS_PER_STEP, eval_cost or SECONDS_PER_1K_EVALUATIONS)
    plan = runner.plan(profile, *costs, cache_dir=args.cache_dir)
    total, todo = plan["total"], plan["todo"]
    print(f"profile {profile.name}: {total['runs']} runs, {total['training_steps']} training steps, "
          f"{total['network_evaluations']:,} network image-evaluations: ≈ {total['seconds'] / 60 / args.jobs:.0f} min "
          f"with {args.jobs} job(s); still to do: {todo['training_steps']} steps, {todo['network_evaluations']:,} "
          f"evaluations, ≈ {todo['seconds'] / 60 / args.jobs:.0f} min (at {costs[0]:.3f} s/step and {costs[1]:.2f} s "
          f"per 1,000 evaluations{', measured in the cache' if step_cost else ', assumed'})")  # fmt: skip
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
    print(f"wrote {page} and {out / 'results.json'}")
    for failure in failures:
        print(f"FAILED: {failure}", file=sys.stderr)
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
