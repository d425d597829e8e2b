"""The diffusion maths: noise schedules, the forward process and losses, samplers, the
variational bound, and conditioning (class, the cascade's super-resolution input)."""
