"""What runs around a model, for training and evaluation alike: its state and optimiser,
checkpoints, EMA and post-hoc EMA, sampling over the device mesh, and the metrics log. The
training loop itself is core.train, which evaluation does not import."""
