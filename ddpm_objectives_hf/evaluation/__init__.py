"""Evaluation helpers of the command-line application: feature networks and FID."""
