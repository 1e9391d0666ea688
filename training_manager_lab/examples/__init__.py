"""Small ready-made models and data modules, used by the notebooks, tests and benchmarks."""
