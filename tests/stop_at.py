"""Test machinery of the kill tests: run a script that stops itself (SIGSTOP) at named moments of a save, so the test
can copy the folder there (exactly what a kill at that moment leaves on disk), let it go on, or kill it.

    python tests/stop_at.py checkpoint-4:saved,final:staged scripts/train.py ARGS...

Points (each stops once):

* ``checkpoint-N:saved``: accelerate has written ``.checkpoint-N.tmp``, which has no completion record yet;
* ``checkpoint-N:pruning``: ``checkpoint-N`` is complete and an older checkpoint is about to be removed;
* ``final:staged``: the final outputs are built in ``.staging-final`` and not yet committed;
* ``final:swapping``: half of them have been moved into the output folder.

The hooks wrap library functions in this process only; the product carries none.
"""

from __future__ import annotations

import os
import re
import runpy
import signal
import sys
from pathlib import Path


def _stop(point: str, points: set[str]) -> None:
    if point in points:
        points.discard(point)
        print(f"stop_at: stopped at {point}", file=sys.stderr, flush=True)
        os.kill(os.getpid(), signal.SIGSTOP)


def install(points: set[str]) -> None:
    import accelerate

    from ddpm_objectives_hf.training import checkpointing, run_folder

    save_state = accelerate.Accelerator.save_state

    def saved(self, output_dir=None, **kwargs):
        result = save_state(self, output_dir, **kwargs)
        match = re.fullmatch(r"\.checkpoint-(\d+)\.tmp", Path(str(output_dir)).name)
        if match and self.is_main_process:
            _stop(f"checkpoint-{match.group(1)}:saved", points)
        return result

    accelerate.Accelerator.save_state = saved

    remove_path = checkpointing.remove_path

    def pruning(path):
        path = Path(path)
        newest = checkpointing.list_checkpoints(path.parent)
        if path.is_dir() and newest and path in newest and path != newest[-1]:
            _stop(f"{newest[-1].name}:pruning", points)
        remove_path(path)

    checkpointing.remove_path = pruning

    write_json = run_folder.write_json

    def staged(path, data):
        path = Path(path)
        if path.name == run_folder.STAGED_RECORD and path.parent.name == run_folder.STAGING_FINAL:
            _stop("final:staged", points)
        write_json(path, data)

    run_folder.write_json = staged

    replace, moved = os.replace, []

    def swapping(src, dst, *args, **kwargs):
        replace(src, dst, *args, **kwargs)
        staging = Path(src).parent
        into_root = Path(dst).parent == staging.parent  # an entry moved in, not a file written inside the staging
        if staging.name == run_folder.STAGING_FINAL and into_root and Path(src).name != "model_index.json":
            moved.append(src)
            entries = run_folder.read_json(staging / run_folder.STAGED_RECORD)["entries"]
            first = [e for e in entries if e != "model_index.json"]
            if len(moved) == len(first) // 2 + 1:
                _stop("final:swapping", points)

    os.replace = swapping


if __name__ == "__main__":
    points, script = set(filter(None, sys.argv[1].split(","))), sys.argv[2]
    install(points)
    sys.argv = [script, *sys.argv[3:]]
    runpy.run_path(script, run_name="__main__")
