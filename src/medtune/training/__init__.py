"""Training: the Lightning module, the data module, checkpoints and `train_run`."""
