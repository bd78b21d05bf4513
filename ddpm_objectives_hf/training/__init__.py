"""Training helpers of the command-line application: data, checkpoints, pipeline save/load, model card, plots, Hub.

None of this is part of the objective (the package root): it is what `scripts/train.py` and `scripts/evaluate.py`
are built from.
"""
