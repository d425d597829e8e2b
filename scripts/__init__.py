"""Benchmarks and one-off tools. Run each from the repository root as a module,
`python -m scripts.NAME`, so that the project's packages and the other scripts import."""
