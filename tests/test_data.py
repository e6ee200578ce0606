"""Pins the official preprocessing (sizes, flip, modes), bad-file handling, the scan cache and RNG resume."""
from __future__ import annotations

import json
import logging
import os
import pickle

import numpy as np
import pytest
import torch
from PIL import Image

from qsattn.data import unaligned as data
from qsattn.data.unaligned import DataError, UnalignedDataset


def _rgb(w: int, h: int, seed: int = 0) -> Image.Image:
    return Image.fromarray(np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8))


def _write(folder, n: int, w: int = 40, h: int = 30, ext: str = "png", start: int = 0) -> list[str]:
    os.makedirs(folder, exist_ok=True)
    paths = []
    for i in range(start, start + n):
        path = os.path.join(folder, f"{i:03d}.{ext}")
        _rgb(w, h, seed=i).save(path)
        paths.append(path)
    return paths


@pytest.fixture
def root(tmp_path):
    _write(tmp_path / "trainA", 3)
    _write(tmp_path / "trainB", 5, start=100)
    return tmp_path


def _size(img: Image.Image, **kw) -> tuple[int, int]:
    """(W, H) of the transformed tensor."""
    t = data.transform_image(img, flip=False, generator=torch.Generator().manual_seed(0), **kw)
    assert t.shape[0] == 3
    return t.shape[2], t.shape[1]


@pytest.mark.parametrize("preprocess, crop_size, expected", [
    ("resize_and_crop", 256, (256, 256)),       # 286x286, crop 256
    ("scale_width_and_crop", 256, (256, 256)),  # 286 x max(286*200/300, 256) = 286x256, crop 256
    ("scale_width", 256, (288, 256)),           # 286x256, then round(286/4)*4 = 288
    ("scale_width", 128, (288, 192)),           # 286 x int(190.67) = 286x190, then 288x192 (47.5 -> 48)
    ("scale_width_and_crop", 128, (128, 128)),
    ("crop", 128, (128, 128)),
    ("none", 256, (300, 200)),                  # already multiples of 4
])
def test_preprocess_sizes_match_official_get_transform(preprocess, crop_size, expected):
    assert _size(_rgb(300, 200), preprocess=preprocess, load_size=286, crop_size=crop_size) == expected


def test_scale_width_keeps_aspect_ratio_above_crop_size():
    # 400x800: height 286*800/400 = 572, not raised to crop size
    assert _size(_rgb(400, 800), preprocess="scale_width", load_size=286, crop_size=256) == (288, 572)


def test_none_rounds_each_side_to_a_multiple_of_4_with_pythons_round():
    # 30/4 = 7.5 -> 8 -> 32; 18/4 = 4.5 -> 4 (banker's rounding) -> 16; 21/4 = 5.25 -> 20
    assert _size(_rgb(30, 18), preprocess="none", load_size=286, crop_size=256) == (32, 16)
    assert _size(_rgb(21, 64), preprocess="none", load_size=286, crop_size=256) == (20, 64)


def test_crop_of_an_image_smaller_than_crop_size_says_what_to_do():
    with pytest.raises(DataError, match="smaller than crop_size"):
        _size(_rgb(100, 100), preprocess="crop", load_size=286, crop_size=256)


def test_output_is_normalised_to_minus_one_one():
    img = Image.fromarray(np.array([[[0, 255, 127]]] * 4 * 4, np.uint8).reshape(4, 4, 3))
    t = data.transform_image(img, preprocess="none", load_size=4, crop_size=4, flip=False,
                             generator=torch.Generator())
    assert t[:, 0, 0].tolist() == pytest.approx([-1.0, 1.0, 127 / 255 * 2 - 1])


def test_flip_is_a_horizontal_flip_drawn_from_the_generator():
    img = _rgb(16, 8)
    plain = data.transform_image(img, preprocess="none", load_size=16, crop_size=16, flip=False,
                                 generator=torch.Generator())
    results = []
    for seed in range(8):
        g = torch.Generator().manual_seed(seed)
        flipped = bool(torch.rand(1, generator=torch.Generator().manual_seed(seed)) < 0.5)
        out = data.transform_image(img, preprocess="none", load_size=16, crop_size=16, flip=True, generator=g)
        assert torch.equal(out, torch.flip(plain, dims=[2]) if flipped else plain)
        results.append(flipped)
    assert any(results) and not all(results)


@pytest.mark.parametrize("mode", ["L", "RGBA", "P", "I;16", "CMYK"])
def test_any_image_mode_becomes_three_channels(tmp_path, mode):
    base = _rgb(12, 8)
    img = {"L": base.convert("L"), "RGBA": base.convert("RGBA"), "P": base.convert("P"), "CMYK": base.convert("CMYK"),
           "I;16": Image.fromarray((np.asarray(base.convert("L"), np.uint16) * 200))}[mode]
    path = tmp_path / ("x.tif" if mode == "CMYK" else "x.png")
    img.save(path)
    t = data.load_image_for_test(path, crop_size=8, preprocess="none")
    assert t.shape == (3, 8, 12)


def test_items_have_the_official_keys_and_shapes(root):
    ds = UnalignedDataset(root, crop_size=16, load_size=20)
    assert len(ds) == 5
    item = ds[4]
    assert set(item) == {"A", "B", "A_paths", "B_paths"}
    assert item["A"].shape == item["B"].shape == (3, 16, 16)
    assert item["A_paths"] == str(root / "trainA" / "001.png")  # index 4 % 3
    assert item["A"].min() >= -1 and item["A"].max() <= 1


def test_a_and_b_get_independent_crops_and_flips(tmp_path):
    # the same image in both domains: the official transform draws crop and flip separately for each
    _write(tmp_path / "trainA", 1, w=64, h=64)
    _write(tmp_path / "trainB", 1, w=64, h=64)
    ds = UnalignedDataset(tmp_path, preprocess="crop", crop_size=16, seed=1)
    assert any(not torch.equal(ds[0]["A"], ds[0]["B"]) for _ in range(5))


def test_serial_batches_takes_b_in_order_and_random_b_covers_all(root):
    serial = UnalignedDataset(root, crop_size=16, load_size=20, serial_batches=True)
    assert [os.path.basename(serial[i]["B_paths"]) for i in range(5)] == [f"{100 + i:03d}.png" for i in range(5)]
    ds = UnalignedDataset(root, crop_size=16, load_size=20)
    assert len({ds[0]["B_paths"] for _ in range(40)}) == 5


def test_btoa_swaps_the_domains(root):
    ds = UnalignedDataset(root, direction="BtoA", crop_size=16, load_size=20)
    assert ds.A_paths[0].endswith(os.path.join("trainB", "100.png"))
    assert ds.B_paths[0].endswith(os.path.join("trainA", "000.png"))


def test_files_are_sorted_recursive_case_insensitive_and_capped(tmp_path):
    _write(tmp_path / "trainA", 2, start=5)
    _rgb(8, 8).save(tmp_path / "trainA" / "001.JPEG", format="JPEG")
    _write(tmp_path / "trainA" / "sub", 1)
    (tmp_path / "trainA" / "notes.txt").write_text("not an image")
    _write(tmp_path / "trainB", 1)
    ds = UnalignedDataset(tmp_path)
    assert [os.path.relpath(p, tmp_path / "trainA") for p in ds.A_paths] == ["001.JPEG", "005.png", "006.png",
                                                                             os.path.join("sub", "000.png")]
    capped = UnalignedDataset(tmp_path, max_dataset_size=2)
    assert [os.path.basename(p) for p in capped.A_paths] == ["001.JPEG", "005.png"]


def test_missing_or_empty_folder_says_how_to_get_data(tmp_path):
    _write(tmp_path / "trainA", 1)
    with pytest.raises(DataError, match="trainB") as e:
        UnalignedDataset(tmp_path)
    assert "python -m qsattn data" in str(e.value) and "python -m qsattn synthetic --out" in str(e.value)
    (tmp_path / "trainB").mkdir()
    with pytest.raises(DataError, match="no readable images.*python -m qsattn synthetic"):
        UnalignedDataset(tmp_path)


def test_test_phase_falls_back_to_val_folders(tmp_path):
    _write(tmp_path / "valA", 1)
    _write(tmp_path / "valB", 1)
    assert "valA" in data.make_test_dataset(tmp_path, crop_size=16).A_paths[0]


def _truncate(path) -> None:
    raw = open(path, "rb").read()
    open(path, "wb").write(raw[: len(raw) // 2])


def test_truncated_image_raises_naming_it_or_is_skipped_and_counted(root, caplog):
    bad = os.path.join(root, "trainB", "102.png")
    _truncate(bad)
    with pytest.raises(DataError) as e:
        UnalignedDataset(root)
    assert bad in str(e.value) and "skip_bad_images=true" in str(e.value)
    with caplog.at_level(logging.WARNING, logger="qsattn.data.unaligned"):
        ds = UnalignedDataset(root, skip_bad_images=True, crop_size=16, load_size=20)
    assert ds.skipped == [bad] and bad not in ds.B_paths and len(ds.B_paths) == 4
    assert bad in caplog.text


def test_truncated_jpeg_is_caught_although_verify_would_pass(tmp_path):
    _write(tmp_path / "trainA", 1)
    os.makedirs(tmp_path / "trainB")
    bad = str(tmp_path / "trainB" / "x.jpg")
    _rgb(64, 64).save(bad, format="JPEG")
    _truncate(bad)
    Image.open(bad).verify()  # PIL's verify does not notice
    with pytest.raises(DataError, match="x.jpg"):
        UnalignedDataset(tmp_path)


def test_scan_cache_is_written_and_reused_until_a_file_changes(root, monkeypatch):
    calls = []
    real_check = data.check_image
    monkeypatch.setattr(data, "check_image", lambda p: calls.append(p) or real_check(p))
    UnalignedDataset(root)
    assert len(calls) == 8
    cache = json.loads((root / ".scan_cache.json").read_text())
    assert len(cache["files"]) == 8 and cache["files"]["trainA/000.png"][2] is None
    UnalignedDataset(root)
    assert len(calls) == 8  # nothing re-checked
    changed = root / "trainA" / "001.png"
    _rgb(41, 30).save(changed)
    os.utime(changed, ns=(1, 1))
    UnalignedDataset(root)
    assert calls[8:] == [str(changed)]


def test_a_cached_bad_file_is_still_an_error(root, monkeypatch):
    _truncate(root / "trainA" / "000.png")
    with pytest.raises(DataError):
        UnalignedDataset(root)
    monkeypatch.setattr(data, "check_image", lambda p: pytest.fail("should come from the cache"))
    with pytest.raises(DataError, match="000.png"):
        UnalignedDataset(root)


def test_a_cache_that_cannot_be_written_does_not_fail(root, monkeypatch, caplog):
    def refuse(*a, **k):
        raise PermissionError("read-only")
    monkeypatch.setattr(data.tempfile, "mkstemp", refuse)
    with caplog.at_level(logging.WARNING, logger="qsattn.data.unaligned"):
        ds = UnalignedDataset(root)
    assert len(ds) == 5 and not (root / ".scan_cache.json").exists() and "scan cache" in caplog.text


def test_a_corrupt_cache_is_ignored(root):
    (root / ".scan_cache.json").write_text("{not json")
    assert len(UnalignedDataset(root)) == 5


def test_rng_state_restore_reproduces_the_next_samples(root, tmp_path):
    ds = UnalignedDataset(root, load_size=24, crop_size=16, seed=3)
    for i in range(3):
        ds[i]
    path = tmp_path / "rng.pt"
    torch.save({"data_rng": ds.get_rng_state()}, path)
    expected = [ds[i] for i in range(6)]

    resumed = UnalignedDataset(root, load_size=24, crop_size=16, seed=99)
    resumed.set_rng_state(torch.load(path, weights_only=True)["data_rng"])
    for want, got in zip(expected, [resumed[i] for i in range(6)]):
        assert got["B_paths"] == want["B_paths"]
        assert torch.equal(got["A"], want["A"]) and torch.equal(got["B"], want["B"])


def test_same_seed_same_data_different_seed_different_data(root):
    def draws(seed):
        ds = UnalignedDataset(root, load_size=24, crop_size=16, seed=seed)
        return torch.stack([torch.cat([ds[i]["A"], ds[i]["B"]]) for i in range(5)])
    assert torch.equal(draws(0), draws(0))
    assert not torch.equal(draws(0), draws(1))


def test_dataset_pickles_with_its_rng_state(root):
    ds = UnalignedDataset(root, load_size=24, crop_size=16)
    copy = pickle.loads(pickle.dumps(ds))
    assert torch.equal(copy[0]["A"], ds[0]["A"])


def test_finetuning_epochs_load_at_crop_size(tmp_path):
    _write(tmp_path / "trainA", 1, w=32, h=32)
    _write(tmp_path / "trainB", 1, w=32, h=32)
    ds = UnalignedDataset(tmp_path, load_size=24, crop_size=16, no_flip=True)
    ds.set_epoch(201, n_epochs=200)
    first, second = ds[0]["A"], ds[0]["A"]
    assert first.shape == (3, 16, 16) and torch.equal(first, second)  # resized to 16, nothing to crop
    ds.set_epoch(200, n_epochs=200)
    assert len({ds[0]["A"].sum().item() for _ in range(10)}) > 1  # 24 -> random 16 crops again


def test_test_dataset_matches_official_test_options(root):
    (root / "testA").mkdir()
    (root / "testB").mkdir()
    for name in ("trainA", "trainB"):
        for p in sorted((root / name).iterdir()):
            os.link(p, root / name.replace("train", "test") / p.name)
    ds = data.make_test_dataset(root, crop_size=16)
    assert (ds.load_size, ds.no_flip, ds.serial_batches) == (16, True, True)
    item = ds[0]
    assert torch.equal(item["A"], data.load_image_for_test(item["A_paths"], crop_size=16))
    assert item["A"].shape == (3, 16, 16)


def test_tensor_to_uint8_truncates_like_official_tensor2im():
    t = torch.tensor([[[-2.0, -1.0, 0.0, 0.999, 1.0]]]).repeat(1, 3, 1, 1)
    assert data.tensor_to_uint8_image(t)[0, :, 0].tolist() == [0, 0, 127, 254, 255]
    gray = data.tensor_to_uint8_image(torch.zeros(1, 2, 2))
    assert gray.shape == (2, 2, 3) and gray.dtype == np.uint8
    with pytest.raises(ValueError, match="batch"):
        data.tensor_to_uint8_image(torch.zeros(2, 3, 2, 2))


def test_save_image_writes_a_png_at_the_tensor_size(tmp_path):
    t = torch.rand(3, 12, 20) * 2 - 1
    data.save_image(t, tmp_path / "x.png")
    back = np.asarray(Image.open(tmp_path / "x.png"))
    assert back.shape == (12, 20, 3)
    assert np.array_equal(back, data.tensor_to_uint8_image(t))


@pytest.mark.skipif("fork" not in __import__("multiprocessing").get_all_start_methods(), reason="needs fork")
def test_dataloader_workers_draw_different_b_images(root):
    # each worker gets a copy of the dataset; without reseeding, both would draw the same B sequence
    _write(root / "trainA", 20, start=10)
    ds = UnalignedDataset(root, load_size=20, crop_size=16)
    loader = torch.utils.data.DataLoader(ds, batch_size=1, num_workers=2, multiprocessing_context="fork")
    b = [batch["B_paths"][0] for batch in loader]
    assert len(b) == 23 and b[0::2][:11] != b[1::2][:11]


# --- every image checked against the preprocessing when the dataset is opened -------------------------

def _png16(path, arr: np.ndarray) -> None:
    """A 16-bit PNG written by hand (zlib + CRC, PNG spec), independently of Pillow's encoder:
    arr is (H, W) grayscale or (H, W, 3) RGB, uint16."""
    import struct
    import zlib

    h, w = arr.shape[:2]
    colour = 0 if arr.ndim == 2 else 2
    raw = b"".join(b"\0" + arr[y].astype(">u2").tobytes() for y in range(h))

    def chunk(kind: bytes, payload: bytes) -> bytes:
        return struct.pack(">I", len(payload)) + kind + payload + struct.pack(">I", zlib.crc32(kind + payload))

    header = struct.pack(">IIBBBBB", w, h, 16, colour, 0, 0, 0)
    with open(path, "wb") as f:
        f.write(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(raw)) + chunk(b"IEND", b""))


def test_16_bit_images_keep_their_tones_as_8_bit(tmp_path):
    """Expected: the high byte (v >> 8), computed here from the values written, for grayscale as for colour."""
    values = np.random.default_rng(0).integers(0, 65536, (8, 12), dtype=np.uint16)
    values[0, :4] = [0, 255, 256, 65535]
    _png16(tmp_path / "gray.png", values)
    _png16(tmp_path / "rgb.png", np.stack([values, values[::-1], 65535 - values], -1))
    gray = np.asarray(data.load_rgb(tmp_path / "gray.png"))
    assert np.array_equal(gray, np.repeat((values >> 8).astype(np.uint8)[..., None], 3, -1))
    assert gray.mean() < 200  # not the official clip to white
    rgb = np.asarray(data.load_rgb(tmp_path / "rgb.png"))
    assert np.array_equal(rgb, (np.stack([values, values[::-1], 65535 - values], -1) >> 8).astype(np.uint8))


def test_32_bit_and_float_images_are_refused_naming_the_file(tmp_path):
    _write(tmp_path / "trainA", 2)
    _write(tmp_path / "trainB", 2)
    Image.fromarray(np.full((30, 40), 70000, np.int32)).save(tmp_path / "trainB" / "depth.tif")
    with pytest.raises(DataError, match=r"depth\.tif: ValueError: 32-bit integer pixels \(mode I\) have no fixed range"):
        UnalignedDataset(tmp_path)


def test_planned_size_is_the_size_the_transform_makes():
    for w, h in [(300, 200), (200, 300), (286, 300), (30, 18), (257, 255)]:
        for preprocess in data.PREPROCESS_MODES:
            for load, crop in [(286, 256), (256, 256), (64, 32)]:
                if preprocess.endswith("crop") and preprocess != "resize_and_crop" and min(w, h) < crop:
                    continue
                kw = dict(preprocess=preprocess, load_size=load, crop_size=crop)
                assert data.planned_size(w, h, **kw) == _size(_rgb(w, h), **kw), (w, h, kw)


def test_mixed_sizes_without_resizing_are_one_error_at_open_naming_the_odd_files(tmp_path):
    _write(tmp_path / "trainA", 3, 40, 32)
    _write(tmp_path / "trainB", 3, 40, 32, start=100)
    _rgb(64, 48).save(tmp_path / "trainB" / "big.png")
    with pytest.raises(DataError, match=r"preprocess=none keeps each image's proportions.*6 images come out 40x32, "
                                        r"others 64x48: 1 \(trainB/big\.png\)"):
        UnalignedDataset(tmp_path, preprocess="none", same_size=True)
    assert len(UnalignedDataset(tmp_path, preprocess="none")) == 4  # one image at a time (translate): fine
    assert len(UnalignedDataset(tmp_path, preprocess="resize_and_crop", same_size=True, crop_size=16, load_size=20)) == 4


def test_training_opens_its_dataset_with_the_one_size_rule(tmp_path):
    from qsattn.engine.config import resolve
    from qsattn.engine.train import make_dataset

    _write(tmp_path / "d" / "trainA", 2, 40, 32)
    _write(tmp_path / "d" / "trainB", 2, 36, 32, start=100)
    cfg = dict(data_root=str(tmp_path), dataset="d", preprocess="none")
    with pytest.raises(DataError, match="training needs one size"):
        make_dataset(resolve(cfg))  # nce_idt (the default): G(cat[A, B])
    assert len(make_dataset(resolve(dict(cfg, method="fastcut")))) == 2  # batch 1, no nce_idt: sizes may differ


def test_an_image_smaller_than_crop_size_is_caught_at_open_naming_it(tmp_path):
    _write(tmp_path / "trainA", 3, 64, 64)
    _write(tmp_path / "trainB", 3, 64, 64, start=100)
    small = str(tmp_path / "trainA" / "small.png")
    _rgb(60, 20).save(small)
    with pytest.raises(DataError, match=r"small\.png: 60x20 px is smaller than crop_size=32 \(preprocess=crop"):
        UnalignedDataset(tmp_path, preprocess="crop", crop_size=32)
    ds = UnalignedDataset(tmp_path, preprocess="crop", crop_size=32, skip_bad_images=True)
    assert ds.skipped == [small] and len(ds) == 3
