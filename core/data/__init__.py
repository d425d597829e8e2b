"""Data: the embedded procedural sets (shapes), sources chosen by name, image files, and the
grain pipeline of batches."""
