"""The baselines CUT and FastCUT: presets of the shared CUT-family model in `qsattn`."""
