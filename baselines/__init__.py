"""The CUT family (Park et al., ECCV 2020; official code taesungp/contrastive-unpaired-translation):
networks, PatchNCE and GAN losses, the random-patch sampler F, the training step and state, and the CUT
and FastCUT presets. QS-Attn (qsattn/) builds on these and changes only the sampler."""
