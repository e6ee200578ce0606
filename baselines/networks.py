"""The CUT-family networks: ResNet generator, PatchGAN discriminator, and their initialisation.

Module structure and names follow the official code (taesungp/contrastive-unpaired-translation,
models/networks.py; unchanged in the QS-Attn fork), so the released `latest_net_G.pth` and
`latest_net_D.pth` load with strict=True: one `nn.Sequential` named `model`, ResNet blocks with a
`conv_block`, and the anti-aliasing filters stored as buffers named `filt`.
"""
from __future__ import annotations

import functools

import torch
import torch.nn as nn
import torch.nn.functional as F

# Binomial filters of the anti-aliased (blur-pool) down- and upsampling layers.
_BINOMIAL = {1: [1.0], 2: [1.0, 1.0], 3: [1.0, 2.0, 1.0], 4: [1.0, 3.0, 3.0, 1.0], 5: [1.0, 4.0, 6.0, 4.0, 1.0]}


def binomial_filter(size: int) -> torch.Tensor:
    a = torch.tensor(_BINOMIAL[size], dtype=torch.float64)
    filt = a[:, None] * a[None, :]
    return (filt / filt.sum()).float()


class Downsample(nn.Module):
    """Blur with a [1,2,1]² filter, then subsample by 2 (Zhang, "Making CNNs shift-invariant again")."""

    def __init__(self, channels: int, filt_size: int = 3, stride: int = 2):
        super().__init__()
        self.stride = stride
        pad_lo, pad_hi = (filt_size - 1) // 2, -(-(filt_size - 1) // 2)
        self.pad = nn.ReflectionPad2d([pad_lo, pad_hi, pad_lo, pad_hi])
        self.register_buffer("filt", binomial_filter(filt_size)[None, None].repeat(channels, 1, 1, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.conv2d(self.pad(x), self.filt, stride=self.stride, groups=x.shape[1])


class Upsample(nn.Module):
    """Transposed convolution with a fixed [1,3,3,1]² filter: the anti-aliased 2× upsampling."""

    def __init__(self, channels: int, filt_size: int = 4, stride: int = 2):
        super().__init__()
        self.stride = stride
        self.filt_odd = filt_size % 2 == 1
        self.pad_size = (filt_size - 1) // 2
        self.pad = nn.ReplicationPad2d([1, 1, 1, 1])
        filt = binomial_filter(filt_size) * stride**2
        self.register_buffer("filt", filt[None, None].repeat(channels, 1, 1, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.conv_transpose2d(self.pad(x), self.filt, stride=self.stride, padding=1 + self.pad_size,
                                 groups=x.shape[1])[:, :, 1:, 1:]
        return out if self.filt_odd else out[:, :, :-1, :-1]


def norm_layer(kind: str):
    if kind == "instance":
        return functools.partial(nn.InstanceNorm2d, affine=False, track_running_stats=False)
    if kind == "batch":
        return functools.partial(nn.BatchNorm2d, affine=True, track_running_stats=True)
    if kind == "none":
        return lambda channels: nn.Identity()
    raise ValueError(f"unknown norm '{kind}' (instance | batch | none)")


class ResnetBlock(nn.Module):
    def __init__(self, dim: int, norm, use_dropout: bool, use_bias: bool):
        super().__init__()
        layers = [nn.ReflectionPad2d(1), nn.Conv2d(dim, dim, 3, bias=use_bias), norm(dim), nn.ReLU(True)]
        if use_dropout:
            layers.append(nn.Dropout(0.5))
        layers += [nn.ReflectionPad2d(1), nn.Conv2d(dim, dim, 3, bias=use_bias), norm(dim)]
        self.conv_block = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.conv_block(x)


class ResnetGenerator(nn.Module):
    """c7s1-ngf, two (anti-aliased) downsamplings, n_blocks ResNet blocks, two upsamplings, c7s1-3, tanh.

    `encode(x, layers)` returns the outputs of `model[i]` for i in layers, stopping after the last one:
    these are the features the contrastive loss compares.
    """

    def __init__(self, input_nc=3, output_nc=3, ngf=64, norm="instance", use_dropout=False, n_blocks=9,
                 no_antialias=False, no_antialias_up=False):
        super().__init__()
        norm_ = norm_layer(norm)
        use_bias = norm == "instance"
        model = [nn.ReflectionPad2d(3), nn.Conv2d(input_nc, ngf, 7, bias=use_bias), norm_(ngf), nn.ReLU(True)]
        for i in range(2):
            c = ngf * 2**i
            if no_antialias:
                model += [nn.Conv2d(c, 2 * c, 3, stride=2, padding=1, bias=use_bias), norm_(2 * c), nn.ReLU(True)]
            else:
                model += [nn.Conv2d(c, 2 * c, 3, padding=1, bias=use_bias), norm_(2 * c), nn.ReLU(True),
                          Downsample(2 * c)]
        model += [ResnetBlock(ngf * 4, norm_, use_dropout, use_bias) for _ in range(n_blocks)]
        for i in range(2):
            c = ngf * 2 ** (2 - i)
            if no_antialias_up:
                model += [nn.ConvTranspose2d(c, c // 2, 3, stride=2, padding=1, output_padding=1, bias=use_bias),
                          norm_(c // 2), nn.ReLU(True)]
            else:
                model += [Upsample(c), nn.Conv2d(c, c // 2, 3, padding=1, bias=use_bias), norm_(c // 2), nn.ReLU(True)]
        model += [nn.ReflectionPad2d(3), nn.Conv2d(ngf, output_nc, 7), nn.Tanh()]
        self.model = nn.Sequential(*model)

    def forward(self, x: torch.Tensor, layers=None):
        """The output; with `layers`, (output, features of those layers) from the same pass, as the
        official `netG(x, layers)`. A feature that the next layer would overwrite in place (a ReLU with
        inplace=True) is copied first, so it holds what `encode` returns."""
        if layers is None:
            return self.model(x)
        wanted, feats = set(layers), []
        for i, layer in enumerate(self.model):
            x = layer(x)
            if i in wanted:
                following = self.model[i + 1] if i + 1 < len(self.model) else None
                feats.append(x.clone() if getattr(following, "inplace", False) else x)
        return x, feats

    def encode(self, x: torch.Tensor, layers) -> list[torch.Tensor]:
        wanted, last, feats = set(layers), max(layers), []
        for i, layer in enumerate(self.model):
            x = layer(x)
            if i in wanted:
                feats.append(x)
            if i == last:
                break
        return feats


class NLayerDiscriminator(nn.Module):
    """PatchGAN: classifies overlapping 70×70 patches (n_layers=3) as real or fake."""

    def __init__(self, input_nc=3, ndf=64, n_layers=3, norm="instance", no_antialias=False):
        super().__init__()
        norm_ = norm_layer(norm)
        use_bias = norm == "instance"
        if no_antialias:
            seq = [nn.Conv2d(input_nc, ndf, 4, stride=2, padding=1), nn.LeakyReLU(0.2, True)]
        else:
            seq = [nn.Conv2d(input_nc, ndf, 4, stride=1, padding=1), nn.LeakyReLU(0.2, True), Downsample(ndf)]
        mult = 1
        for n in range(1, n_layers):
            prev, mult = mult, min(2**n, 8)
            if no_antialias:
                seq += [nn.Conv2d(ndf * prev, ndf * mult, 4, stride=2, padding=1, bias=use_bias), norm_(ndf * mult),
                        nn.LeakyReLU(0.2, True)]
            else:
                seq += [nn.Conv2d(ndf * prev, ndf * mult, 4, stride=1, padding=1, bias=use_bias), norm_(ndf * mult),
                        nn.LeakyReLU(0.2, True), Downsample(ndf * mult)]
        prev, mult = mult, min(2**n_layers, 8)
        seq += [nn.Conv2d(ndf * prev, ndf * mult, 4, stride=1, padding=1, bias=use_bias), norm_(ndf * mult),
                nn.LeakyReLU(0.2, True), nn.Conv2d(ndf * mult, 1, 4, stride=1, padding=1)]
        self.model = nn.Sequential(*seq)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x)


def init_weights(net: nn.Module, init_type: str = "xavier", gain: float = 0.02) -> nn.Module:
    """The official init: conv and linear weights from `init_type`, biases zero, BatchNorm N(1, gain)."""
    def init(m: nn.Module) -> None:
        name = type(m).__name__
        if hasattr(m, "weight") and ("Conv" in name or "Linear" in name):
            if init_type == "normal":
                nn.init.normal_(m.weight, 0.0, gain)
            elif init_type == "xavier":
                nn.init.xavier_normal_(m.weight, gain=gain)
            elif init_type == "kaiming":
                nn.init.kaiming_normal_(m.weight, a=0, mode="fan_in")
            elif init_type == "orthogonal":
                nn.init.orthogonal_(m.weight, gain=gain)
            else:
                raise ValueError(f"unknown init_type '{init_type}'")
            if getattr(m, "bias", None) is not None:
                nn.init.zeros_(m.bias)
        elif "BatchNorm2d" in name:
            nn.init.normal_(m.weight, 1.0, gain)
            nn.init.zeros_(m.bias)

    with torch.no_grad():
        net.apply(init)
    return net


GENERATOR_BLOCKS = {"resnet_9blocks": 9, "resnet_6blocks": 6, "resnet_4blocks": 4}


def build_generator(cfg) -> ResnetGenerator:
    net = ResnetGenerator(cfg.input_nc, cfg.output_nc, cfg.ngf, cfg.normG, False, GENERATOR_BLOCKS[cfg.netG],
                          cfg.no_antialias, cfg.no_antialias_up)
    return init_weights(net, cfg.init_type, cfg.init_gain)


def build_discriminator(cfg) -> NLayerDiscriminator:
    net = NLayerDiscriminator(cfg.output_nc, cfg.ndf, cfg.n_layers_D, cfg.normD, cfg.no_antialias)
    return init_weights(net, cfg.init_type, cfg.init_gain)


def generator_from_state_dict(state: dict) -> ResnetGenerator:
    """Rebuild a generator whose architecture is inferred from an (official or our) state dict.

    Official weights trained with `--gpu_ids -1` carry DataParallel's `module.` prefix (CUT's
    `parallelize()` wraps the networks on the CPU too); it is dropped."""
    if state and all(k.startswith("module.") for k in state):
        state = {k[len("module."):]: v for k, v in state.items()}
    w0 = state["model.1.weight"]
    ngf, input_nc = w0.shape[0], w0.shape[1]
    n_blocks = len({k.split(".")[1] for k in state if ".conv_block." in k})
    no_antialias = "model.7.filt" not in state
    last = max(int(k.split(".")[1]) for k in state if k.startswith("model.") and k.endswith(".weight"))
    output_nc = state[f"model.{last}.weight"].shape[0]
    up_start = (10 if no_antialias else 12) + n_blocks
    no_antialias_up = f"model.{up_start}.filt" not in state
    norm = "batch" if any(k.endswith("running_mean") for k in state) else "instance"
    net = ResnetGenerator(input_nc, output_nc, ngf, norm, False, n_blocks, no_antialias, no_antialias_up)
    net.load_state_dict(state, strict=True)
    return net
