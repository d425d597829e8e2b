"""simplediff core: schedules, losses, samplers, models, data, training, evaluation."""
