"""Software-defined assets, one module per stage; thin wrappers over `pipeline/` that add metadata and checks."""
