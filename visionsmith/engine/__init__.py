"""The training loop, evaluation, checkpoints and resume, distributed glue, run folder."""
