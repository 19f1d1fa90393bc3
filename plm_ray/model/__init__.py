"""Model: the architecture registry (archs.py), building models (build.py) and the modules
the engine trains (heads.py). Import from the submodules: this package imports nothing heavy."""
