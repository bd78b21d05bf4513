"""Training helpers of the command-line application: models, run state, checkpoints, pipeline save/load, model card,
plots, Hub (the data are in `ddpm_objectives_hf.data`).

None of this is part of the objective (the package root): it is what `scripts/train.py` and `scripts/evaluate.py`
are built from.
"""
