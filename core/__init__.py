"""simplediff core: schedules, losses, samplers, models, data, training, evaluation.

Importing it sets nothing up: entry points call core.devices.setup() (devices and the
compilation cache) before JAX starts.
"""
