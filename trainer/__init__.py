"""The training loop on a DeepSpeed engine: schedules, evaluation, checkpoints, tracking."""
