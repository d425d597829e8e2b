"""The engine around a model: its training state and optimiser, checkpoints, EMA and post-hoc
EMA, the metrics log, and sampling over the device mesh."""
