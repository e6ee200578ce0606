"""Cityscapes labels→photos: segment the translations with DRN and score them against the labels.

The CUT/QS-Attn protocol: a DRN trained on Cityscapes (fyu/drn) segments each generated photo; the
better the photo, the closer its segmentation to the input label map. The QS-Attn authors used
DRN-D-22 (`drn_d_22_cityscapes.pth`) on generated images resized to 256×128; others report that only
DRN-D-105 reproduces CUT's published numbers, so both are supported and every result records the
architecture and the sha256 of the weight file that scored it.

The network below is a re-implementation of fyu/drn's DRN-D (drn.py) and `DRNSeg` head (segment.py),
laid out so that the released state dicts load with strict=True: `base.0`..`base.8` are DRN's layer0..
layer8, `seg` the 1×1 classifier, `up` the fixed bilinear ×8 transposed convolution.
"""
from __future__ import annotations

import math
import os
import re
from pathlib import Path

import numpy as np
import torch
from torch import nn

from eval.folders import EvalError, list_images, sha256_file
from eval.weights import DRN_FILES, DRN_URL

NUM_CLASSES = 19
IGNORE = 255
# fyu/drn datasets/cityscapes/info.json: statistics of Cityscapes train images, in [0,1] RGB.
CITYSCAPES_MEAN = (0.29010095242892997, 0.32808144844279574, 0.28696394422942517)
CITYSCAPES_STD = (0.1829540508368939, 0.18656561047509476, 0.18447508988480435)
# Cityscapes labelIds -> trainIds (cityscapesScripts labels.py); every id not listed is ignored (255).
_TRAIN_IDS = {7: 0, 8: 1, 11: 2, 12: 3, 13: 4, 17: 5, 19: 6, 20: 7, 21: 8, 22: 9, 23: 10, 24: 11, 25: 12,
              26: 13, 27: 14, 28: 15, 31: 16, 32: 17, 33: 18}
LABEL_TO_TRAIN = np.full(256, IGNORE, dtype=np.uint8)
for _label_id, _train_id in _TRAIN_IDS.items():
    LABEL_TO_TRAIN[_label_id] = _train_id


def labelids_to_trainids(label: np.ndarray) -> np.ndarray:
    """Map a Cityscapes `*_gtFine_labelIds.png` array (0..33) to the 19 train classes, 255 = ignore."""
    return LABEL_TO_TRAIN[np.asarray(label, dtype=np.uint8)]


# ---------------------------------------------------------------- metric
def confusion_matrix(pred: np.ndarray, label: np.ndarray, num_classes: int = NUM_CLASSES) -> np.ndarray:
    """conf[true, predicted] pixel counts; labels outside [0, num_classes) (255) are ignored."""
    pred, label = np.asarray(pred).ravel().astype(np.int64), np.asarray(label).ravel().astype(np.int64)
    keep = (label >= 0) & (label < num_classes)
    return np.bincount(num_classes * label[keep] + pred[keep],
                       minlength=num_classes ** 2).reshape(num_classes, num_classes)


def segmentation_scores(conf: np.ndarray) -> dict[str, float]:
    """The three numbers of CUT's Table (in %): mean IoU (called mAP by DRN and CUT), pixel accuracy,
    and mean per-class accuracy. Classes absent from both labels and predictions (0/0) are left out of
    the means, as DRN's `np.nanmean` does."""
    conf = np.asarray(conf, dtype=np.float64)
    tp = np.diag(conf)
    with np.errstate(divide="ignore", invalid="ignore"):
        iou = tp / (conf.sum(0) + conf.sum(1) - tp)
        class_acc = tp / conf.sum(1)
    return {"mAP": float(np.nanmean(iou) * 100), "pixAcc": float(tp.sum() / conf.sum() * 100),
            "classAcc": float(np.nanmean(class_acc) * 100)}


# ---------------------------------------------------------------- network (fyu/drn, DRN-D)
def _conv3x3(cin: int, cout: int, stride: int = 1, dilation: int = 1) -> nn.Conv2d:
    return nn.Conv2d(cin, cout, 3, stride, padding=dilation, dilation=dilation, bias=False)


class BasicBlock(nn.Module):
    expansion = 1

    def __init__(self, cin: int, planes: int, stride: int = 1, dilation: int = 1, downsample: nn.Module | None = None):
        super().__init__()
        self.conv1, self.bn1 = _conv3x3(cin, planes, stride, dilation), nn.BatchNorm2d(planes)
        self.conv2, self.bn2 = _conv3x3(planes, planes, 1, dilation), nn.BatchNorm2d(planes)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = downsample

    def forward(self, x):
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(out + (x if self.downsample is None else self.downsample(x)))


class Bottleneck(nn.Module):
    expansion = 4

    def __init__(self, cin: int, planes: int, stride: int = 1, dilation: int = 1, downsample: nn.Module | None = None):
        super().__init__()
        self.conv1, self.bn1 = nn.Conv2d(cin, planes, 1, bias=False), nn.BatchNorm2d(planes)
        self.conv2, self.bn2 = _conv3x3(planes, planes, stride, dilation), nn.BatchNorm2d(planes)
        self.conv3, self.bn3 = nn.Conv2d(planes, planes * 4, 1, bias=False), nn.BatchNorm2d(planes * 4)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = downsample

    def forward(self, x):
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        return self.relu(out + (x if self.downsample is None else self.downsample(x)))


# name -> (residual block, blocks per level 1..8), as drn_d_22 / drn_d_105 in fyu/drn.
ARCHS = {"drn_d_22": (BasicBlock, (1, 1, 2, 2, 2, 2, 1, 1)),
         "drn_d_105": (Bottleneck, (1, 1, 3, 4, 23, 3, 1, 1))}
CHANNELS = (16, 32, 64, 128, 256, 512, 512, 512)


def _plain_convs(cin: int, cout: int, n: int, stride: int = 1, dilation: int = 1) -> nn.Sequential:
    """DRN-D's levels 1, 2, 7, 8: conv-BN-ReLU without residuals (they remove gridding artifacts)."""
    layers = []
    for i in range(n):
        layers += [_conv3x3(cin if i == 0 else cout, cout, stride if i == 0 else 1, dilation),
                   nn.BatchNorm2d(cout), nn.ReLU(inplace=True)]
    return nn.Sequential(*layers)


def _residual_level(block, cin: int, planes: int, n: int, stride: int = 1, dilation: int = 1) -> nn.Sequential:
    downsample = None
    if stride != 1 or cin != planes * block.expansion:
        downsample = nn.Sequential(nn.Conv2d(cin, planes * block.expansion, 1, stride, bias=False),
                                   nn.BatchNorm2d(planes * block.expansion))
    blocks = [block(cin, planes, stride, dilation, downsample)]
    blocks += [block(planes * block.expansion, planes, 1, dilation) for _ in range(n - 1)]
    return nn.Sequential(*blocks)


def _bilinear_up_kernel(size: int) -> torch.Tensor:
    """The fixed bilinear interpolation kernel DRN's `up` layer is filled with (fill_up_weights)."""
    f = math.ceil(size / 2)
    center = (2 * f - 1 - f % 2) / (2.0 * f)
    ramp = 1 - torch.abs(torch.arange(size, dtype=torch.float64) / f - center)
    return torch.outer(ramp, ramp).float()


class DRNSeg(nn.Module):
    """DRN-D backbone at output stride 8, 1×1 classifier, fixed bilinear ×8 upsampling.

    forward returns per-pixel class scores at input resolution (input H, W divisible by 8). DRN's
    LogSoftmax is left out: it does not change the argmax.
    """

    def __init__(self, arch: str = "drn_d_22", num_classes: int = NUM_CLASSES):
        super().__init__()
        if arch not in ARCHS:
            raise EvalError(f"unknown DRN architecture '{arch}'; choose one of {', '.join(ARCHS)}.")
        block, n = ARCHS[arch]
        c = CHANNELS
        stem = nn.Sequential(nn.Conv2d(3, c[0], 7, 1, padding=3, bias=False), nn.BatchNorm2d(c[0]), nn.ReLU(inplace=True))
        self.base = nn.Sequential(
            stem,                                                        # layer0
            _plain_convs(c[0], c[0], n[0]),                              # layer1
            _plain_convs(c[0], c[1], n[1], stride=2),                    # layer2  /2
            _residual_level(block, c[1], c[2], n[2], stride=2),          # layer3  /4
            _residual_level(block, c[2] * block.expansion, c[3], n[3], stride=2),   # layer4 /8
            _residual_level(block, c[3] * block.expansion, c[4], n[4], dilation=2),  # layer5
            _residual_level(block, c[4] * block.expansion, c[5], n[5], dilation=4),  # layer6
            _plain_convs(c[5] * block.expansion, c[6], n[6], dilation=2),           # layer7
            _plain_convs(c[6], c[7], n[7]),                                          # layer8
        )
        self.seg = nn.Conv2d(c[7], num_classes, 1, bias=True)
        self.up = nn.ConvTranspose2d(num_classes, num_classes, 16, stride=8, padding=4, groups=num_classes, bias=False)
        with torch.no_grad():
            self.up.weight.copy_(_bilinear_up_kernel(16).expand_as(self.up.weight))
        self.up.weight.requires_grad_(False)
        self.arch = arch

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.up(self.seg(self.base(x)))




def load_drn_seg(path: str | os.PathLike, arch: str = "drn_d_22", device: str | torch.device = "cpu",
                 expected_sha256: str | None = None) -> DRNSeg:
    """DRNSeg with the released Cityscapes weights (`drn_d_22_cityscapes.pth`, `drn-d-105_ms_cityscapes.pth`
    from fyu/drn), loaded strictly (a missing or extra key means the wrong architecture for the file) and
    without unpickling code (weights_only). With `expected_sha256`, any other file is refused."""
    file_name = DRN_FILES.get(arch, f"{arch}_cityscapes.pth")
    if not Path(path).is_file():
        raise EvalError(f"DRN weights {path} do not exist. Download {file_name} ({arch}) from {DRN_URL} "
                        f"(fyu/drn's README, pretrained Cityscapes models) and pass it with --drn-weights PATH.")
    if expected_sha256:
        sha = sha256_file(path)
        if sha != expected_sha256:
            raise EvalError(f"{path} is not the pinned DRN file: its sha256 is {sha}, expected {expected_sha256} "
                            f"(drn_sha256). Download {file_name} ({arch}) again from {DRN_URL}.")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # a text file, a truncated download, a pickle that needs code
        raise EvalError(f"{path} is not a readable DRN weights file ({type(exc).__name__}); download {file_name} "
                        f"({arch}) from {DRN_URL}.") from exc
    state = state.get("state_dict", state)   # also accept segment.py's training checkpoints
    state = {k.removeprefix("module."): v for k, v in state.items()}
    model = DRNSeg(arch)
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        first = str(exc).splitlines()[0]
        raise EvalError(f"{path} does not fit DRNSeg('{arch}'): is it the weight file of another architecture "
                        f"(pass --drn-arch; {', '.join(f'{a}: {f}' for a, f in DRN_FILES.items())})? {first}") from exc
    return model.to(device).eval()


# ---------------------------------------------------------------- scoring a folder
_CITYSCAPES_SUFFIX = re.compile(r"_(leftImg8bit|gtFine_labelIds|gtFine_trainIds|gtFine_color)$")


def _pair_key(path: Path) -> str:
    """Stem without Cityscapes' suffixes, so `x_leftImg8bit.png` pairs with `x_gtFine_labelIds.png`."""
    return _CITYSCAPES_SUFFIX.sub("", path.stem)


def score_cityscapes(gen_dir: str | os.PathLike, label_dir: str | os.PathLike, weights: str | os.PathLike,
                     arch: str = "drn_d_22", size: tuple[int, int] = (256, 128), *, label_ids: str = "labelIds",
                     device: str | torch.device | None = None, batch_size: int = 8,
                     expected_sha256: str | None = None) -> dict:
    """Segmentation scores of every generated image against its label map.

    Generated images are resized to `size` (W, H; 256×128 as the QS-Attn authors did) with bilinear
    filtering, labels with nearest (class ids must not be blended). `label_ids`: 'labelIds' for
    Cityscapes' `*_gtFine_labelIds.png` (mapped to train ids here) or 'trainIds' for files already in
    0..18/255. Every generated image needs a label and the counts must match (the whole val split).
    """
    from PIL import Image

    if label_ids not in ("labelIds", "trainIds"):
        raise EvalError(f"label_ids must be 'labelIds' or 'trainIds', not '{label_ids}'.")
    device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    gen = {_pair_key(p): p for p in list_images(gen_dir)}
    labels = {_pair_key(p): p for p in list_images(label_dir)}
    missing = sorted(set(gen) - set(labels))
    unscored = sorted(set(labels) - set(gen))
    if missing or unscored:
        raise EvalError(f"generated images and labels do not pair up: no label for {missing[:20]}, "
                        f"no generated image for {unscored[:20]}. Translate the whole split and give its labels.")
    model = load_drn_seg(weights, arch, device, expected_sha256)
    mean = torch.tensor(CITYSCAPES_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(CITYSCAPES_STD).view(1, 3, 1, 1)
    conf = np.zeros((NUM_CLASSES, NUM_CLASSES), dtype=np.int64)
    keys = sorted(gen)
    for start in range(0, len(keys), batch_size):
        chunk = keys[start:start + batch_size]
        images, targets = [], []
        for k in chunk:
            img = Image.open(gen[k]).convert("RGB").resize(size, Image.BILINEAR)
            images.append(torch.from_numpy(np.asarray(img, dtype=np.float32) / 255).permute(2, 0, 1))
            lab = np.asarray(Image.open(labels[k]).resize(size, Image.NEAREST))
            targets.append(labelids_to_trainids(lab) if label_ids == "labelIds" else lab)
        x = (torch.stack(images) - mean) / std
        with torch.no_grad():
            pred = model(x.to(device)).argmax(1).cpu().numpy()
        for p, t in zip(pred, targets):
            conf += confusion_matrix(p, t)
    return {**segmentation_scores(conf), "protocol": {
        "metric_name": "cityscapes_seg", "n_generated": len(keys), "generated_dir": str(gen_dir),
        "label_dir": str(label_dir), "label_ids": label_ids, "size_wh": list(size),
        "image_resize": "PIL bilinear", "label_resize": "PIL nearest", "segmenter": arch,
        "segmenter_weights": str(weights), "segmenter_sha256": sha256_file(weights),
        "segmenter_sha256_pinned": bool(expected_sha256), "segmenter_url": DRN_URL,
        "normalisation": {"mean": CITYSCAPES_MEAN, "std": CITYSCAPES_STD}, "scores_in": "percent"}}
