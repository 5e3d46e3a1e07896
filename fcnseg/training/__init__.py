"""Training: ``train(cfg) -> run directory`` (train.py) and the pieces its loop calls: the one
training step, losses, schedules, a run's data, data-parallel set-up and the run log."""
