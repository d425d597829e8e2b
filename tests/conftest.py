import os

# 8 fake CPU devices so that sharding is tested without accelerators. Must precede jax's import.
os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=8")
os.environ.setdefault("JAX_PLATFORMS", "cpu")
