"""Study v2 of the DDPM objectives on digits: profiles, the run cache, the statistics over seeds, the measurements,
the claims and the page. The command line is ``python -m benchmarks.study_objectives``."""
