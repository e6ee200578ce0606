"""CUT (Park et al., ECCV 2020): the shared model with random patch sampling.

Official defaults of `--CUT_mode CUT` in taesungp/contrastive-unpaired-translation (models/cut_model.py).
"""
PRESET = dict(
    qs_mode="none",
    nce_idt=True,
    lambda_NCE=1.0,
    flip_equivariance=False,
    n_epochs=200,
    n_epochs_decay=200,
)
