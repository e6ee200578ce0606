"""FastCUT (Park et al., ECCV 2020): CUT without the identity NCE loss, a stronger NCE weight, and
flip-equivariance; trained for fewer epochs.

Official defaults of `--CUT_mode FastCUT` in taesungp/contrastive-unpaired-translation (models/cut_model.py).
"""
PRESET = dict(
    qs_mode="none",
    nce_idt=False,
    lambda_NCE=10.0,
    flip_equivariance=True,
    n_epochs=150,
    n_epochs_decay=50,
)
