"""simplediff core: schedules, losses, samplers, models, data, training, evaluation."""
from core.devices import configure_compilation_cache as _configure_compilation_cache
from core.devices import configure_cpu_devices as _configure_cpu_devices

# One CPU device per core, before anything starts JAX's backends (core/devices.py says why;
# SIMPLEDIFF_CPU_DEVICES=0 turns it off). Accelerators are unaffected.
_configure_cpu_devices()
# Compiled programs persist across processes in the cache folder (SIMPLEDIFF_COMPILE_CACHE=0:
# off).
_configure_compilation_cache()
