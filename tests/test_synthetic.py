"""Pins the synthetic dataset: deterministic bytes, layout on disk, idempotence and the ground-truth score."""
from __future__ import annotations

import hashlib
import json
import shutil

import numpy as np
import pytest
from PIL import Image

from qsattn.data import synthetic
from qsattn.cli import main
from qsattn.data.unaligned import UnalignedDataset


def _digest(folder) -> dict[str, str]:
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file() and not p.name.startswith(".")}  # not the scan cache


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    return synthetic.generate(tmp_path_factory.mktemp("syn") / "data", size=32, n_train=6, n_test=5, seed=0)


def test_layout_counts_and_meta_on_disk(dataset):
    counts = {name: sorted(p.name for p in (dataset / name).iterdir()) for name in synthetic.FOLDERS}
    assert {k: len(v) for k, v in counts.items()} == {"trainA": 6, "trainB": 6, "testA": 5, "testB": 5,
                                                      "testA_gt": 5, "testA_mask": 5}
    assert counts["testA"] == counts["testA_gt"] == counts["testA_mask"] == [f"{i:06d}.png" for i in range(5)]
    meta = json.loads((dataset / "meta.json").read_text())
    assert (meta["seed"], meta["size"], meta["counts"]["trainA"], meta["version"]) == (0, 32, 6, synthetic.VERSION)
    with Image.open(dataset / "trainA" / "000000.png") as im:
        assert (im.size, im.mode) == ((32, 32), "RGB")


def test_the_dataset_loads_with_the_unaligned_dataset(dataset):
    item = UnalignedDataset(dataset, load_size=36, crop_size=32)[0]
    assert item["A"].shape == item["B"].shape == (3, 32, 32)


def test_same_seed_same_bytes_different_seed_different_images(dataset, tmp_path):
    again = synthetic.generate(tmp_path / "again", size=32, n_train=6, n_test=5, seed=0)
    assert _digest(again) == _digest(dataset)
    other = synthetic.generate(tmp_path / "other", size=32, n_train=6, n_test=5, seed=1)
    a, b = _digest(dataset), _digest(other)
    assert all(a[k] != b[k] for k in a if k.endswith(".png"))


def test_counts_do_not_change_the_other_images(dataset, tmp_path):
    bigger = synthetic.generate(tmp_path / "bigger", size=32, n_train=8, n_test=5, seed=0)
    assert (bigger / "trainA" / "000005.png").read_bytes() == (dataset / "trainA" / "000005.png").read_bytes()


def test_generation_is_idempotent_and_replaces_its_own_older_output(tmp_path):
    out = synthetic.generate(tmp_path / "d", size=32, n_train=2, n_test=2)
    marker = out / "trainA" / "000000.png"
    stamp = marker.stat().st_mtime_ns
    synthetic.generate(out, size=32, n_train=2, n_test=2)
    assert marker.stat().st_mtime_ns == stamp  # nothing rewritten
    synthetic.generate(out, size=32, n_train=3, n_test=2)
    assert len(list((out / "trainA").iterdir())) == 3
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temporary folder left


def test_refuses_to_overwrite_a_foreign_folder_and_bad_sizes(tmp_path):
    (tmp_path / "mine.txt").write_text("keep me")
    with pytest.raises(ValueError, match="not empty"):
        synthetic.generate(tmp_path, size=32, n_train=1, n_test=1)
    assert (tmp_path / "mine.txt").exists()
    with pytest.raises(ValueError, match="32 and 256"):
        synthetic.generate(tmp_path / "x", size=16)


def test_domains_differ_as_designed(dataset):
    """A: flat shape (two colours); B and ground truth: black and white stripes inside the mask."""
    a = np.asarray(Image.open(dataset / "testA" / "000000.png"))
    gt = np.asarray(Image.open(dataset / "testA_gt" / "000000.png"))
    mask = np.asarray(Image.open(dataset / "testA_mask" / "000000.png")) > 127
    assert 0 < mask.mean() < 0.6
    assert len(np.unique(a.reshape(-1, 3), axis=0)) == 2
    assert np.array_equal(a[~mask], gt[~mask])  # same background
    assert set(np.unique(gt[mask])) == {15, 240}


def test_every_scene_has_the_datasets_background_colour(dataset):
    """One background colour (+- jitter) for the whole dataset, in both domains: see the next test."""
    for split in ("trainA", "trainB", "testA", "testB"):
        for p in sorted((dataset / split).iterdir()):
            corner = np.asarray(Image.open(p), dtype=int)[0, 0]  # shapes stay off the corners
            assert np.abs(corner - synthetic._BACKGROUND).max() <= synthetic._BACKGROUND_JITTER, (p, corner)


def test_the_generator_cannot_see_a_global_colour_shift():
    """Why the background colour is fixed: conv then InstanceNorm makes G(x + c) == G(x) for a per-channel
    constant c, so a per-image random background (most of the pixels) could never be reproduced."""
    import torch

    from qsattn.engine.config import resolve
    from qsattn.state import create_state

    torch.manual_seed(0)
    G = create_state(resolve({"method": "cut", "ngf": 8, "ndf": 8, "crop_size": 32, "load_size": 32,
                              "tracking_uri": "off"})).G.eval()
    x = torch.rand(1, 3, 32, 32) * 0.6 - 0.3
    shift = torch.tensor([0.5, -0.4, 0.2]).view(1, 3, 1, 1)
    with torch.no_grad():
        torch.testing.assert_close(G(x + shift), G(x), atol=1e-5, rtol=0)
        assert (G(x.flip(3)) - G(x)).abs().max() > 1e-3  # not a constant network: it does see content


def _predict(data_dir, out_dir, source: str) -> None:
    shutil.copytree(data_dir / source, out_dir)


def test_ground_truth_scores_clearly_better_than_identity(dataset, tmp_path):
    _predict(dataset, tmp_path / "gt", "testA_gt")
    _predict(dataset, tmp_path / "identity", "testA")
    gt = synthetic.score_translation(tmp_path / "gt", dataset)
    identity = synthetic.score_translation(tmp_path / "identity", dataset)
    assert gt["gt_score"] == pytest.approx(1.0) and gt["gt_l1"] == 0 and gt["stripe_score"] == pytest.approx(1.0)
    assert identity["gt_score"] < 0.3 and identity["stripe_score"] < 0.3
    assert identity["shape_iou"] == pytest.approx(1.0) and identity["background_l1"] == 0  # it does keep the shape
    assert identity["gt_l1"] > 0.02 and gt["n_images"] == 5


def test_other_stripes_still_count_and_a_ruined_background_does_not(dataset, tmp_path):
    """Unpaired translation: stripes at another angle are fine; painting over the background is not."""
    restriped, blank = tmp_path / "restriped", tmp_path / "blank"
    restriped.mkdir(), blank.mkdir()
    for i, p in enumerate(sorted((dataset / "testA_gt").iterdir())):
        gt = np.asarray(Image.open(p))
        mask = np.asarray(Image.open(dataset / "testA_mask" / p.name)) > 127
        other = gt.copy()
        other[mask] = synthetic._stripes(np.random.default_rng(1000 + i), gt.shape[0])[mask]
        Image.fromarray(other).save(restriped / p.name)
        Image.fromarray(np.full_like(gt, 230)).save(blank / p.name)
    assert synthetic.score_translation(restriped, dataset)["gt_score"] > 0.5
    ruined = synthetic.score_translation(blank, dataset)
    assert ruined["gt_score"] < 0.1 and ruined["background_l1"] > 0.1


def test_missing_predictions_are_named(dataset, tmp_path):
    _predict(dataset, tmp_path / "pred", "testA_gt")
    (tmp_path / "pred" / "000003.png").unlink()
    with pytest.raises(FileNotFoundError, match="000003") as e:
        synthetic.score_translation(tmp_path / "pred", dataset)
    assert "1 of 5" in str(e.value)


def test_predictions_of_another_size_are_resized(dataset, tmp_path):
    pred = tmp_path / "pred"
    pred.mkdir()
    for p in sorted((dataset / "testA_gt").iterdir()):
        Image.open(p).resize((64, 64), Image.NEAREST).save(pred / p.name)
    # bicubic back to 32 px blurs the edges a little
    assert synthetic.score_translation(pred, dataset)["gt_score"] > 0.8


def test_cli_generates_and_scores(tmp_path, capsys):
    out = tmp_path / "cli"
    assert main(["synthetic", "--out", str(out), "--size", "32", "--n-train", "2", "--n-test", "2", "--seed", "3"]) == 0
    assert json.loads((out / "meta.json").read_text())["seed"] == 3
    capsys.readouterr()
    assert main(["synthetic", "--out", str(out), "--score", str(out / "testA_gt")]) == 0
    assert json.loads(capsys.readouterr().out)["gt_score"] == pytest.approx(1.0)


def test_cli_errors_say_what_to_do_without_a_traceback(tmp_path, capsys):
    assert main(["synthetic", "--out", str(tmp_path / "nothing"), "--score", str(tmp_path)]) == 2
    assert "python -m qsattn synthetic --out" in capsys.readouterr().err


def test_a_hint_paints_the_b_stripes_faintly_into_the_a_shape(dataset, tmp_path):
    """hint > 0: inside the shape A follows its own ground-truth stripes at hint x their contrast, same
    background; hint 0 draws the same scenes flat (the test above)."""
    hinted = synthetic.generate(tmp_path / "h", size=32, n_train=6, n_test=5, seed=0, hint=0.2)
    flat = np.asarray(Image.open(dataset / "testA" / "000000.png"), dtype=float)
    a = np.asarray(Image.open(hinted / "testA" / "000000.png"), dtype=float)
    gt = np.asarray(Image.open(hinted / "testA_gt" / "000000.png"), dtype=float)
    mask = np.asarray(Image.open(hinted / "testA_mask" / "000000.png")) > 127
    assert np.array_equal(a[~mask], flat[~mask])
    assert (np.asarray(Image.open(dataset / "testA_gt" / "000000.png")) == gt).all()  # B side unchanged
    # the A shape is its flat colour + 0.2 * (stripe - 127.5), rounded and clipped
    expected = np.clip(np.rint(flat[mask] + 0.2 * (gt[mask] - 127.5)), 0, 255)
    assert np.array_equal(a[mask], expected)
    with pytest.raises(ValueError, match="hint"):
        synthetic.generate(tmp_path / "bad", size=32, hint=1.5)


def test_reference_scores_are_the_scores_of_those_translations(dataset, tmp_path):
    _predict(dataset, tmp_path / "identity", "testA")
    fixed = tmp_path / "fixed"
    fixed.mkdir()
    for p in (dataset / "testA").iterdir():
        shutil.copy(dataset / synthetic.FIXED_STRIPED, fixed / p.name)
    refs = synthetic.reference_scores(dataset)
    assert refs["identity"] == synthetic.score_translation(tmp_path / "identity", dataset)
    assert refs["fixed_striped"] == synthetic.score_translation(fixed, dataset)
    assert refs["fixed_striped"]["stripe_score"] > 0.3 and refs["fixed_striped"]["shape_iou"] < 0.6


def test_the_demo_flag_writes_the_demo_dataset(tmp_path, capsys):
    out = tmp_path / "demo"
    assert main(["synthetic", "--out", str(out), "--demo", "--n-train", "2", "--n-test", "2"]) == 0
    meta = json.loads((out / "meta.json").read_text())
    assert (meta["size"], meta["hint"]) == (synthetic.DEMO_DATASET["size"], synthetic.DEMO_DATASET["hint"])


def test_a_texture_lies_over_both_domains_background_and_keeps_the_ground_truth_exact(dataset, tmp_path):
    """texture > 0: a smooth field (std `texture` grey levels) over A and the B background; A and its
    ground truth still share the background pixel for pixel, so the ground truth still scores 1."""
    textured = synthetic.generate(tmp_path / "t", size=32, n_train=6, n_test=5, seed=0, texture=6)
    flat = np.asarray(Image.open(dataset / "testA" / "000000.png"), dtype=float)
    a = np.asarray(Image.open(textured / "testA" / "000000.png"), dtype=float)
    gt = np.asarray(Image.open(textured / "testA_gt" / "000000.png"), dtype=float)
    mask = np.asarray(Image.open(textured / "testA_mask" / "000000.png")) > 127
    assert np.array_equal(a[~mask], gt[~mask])
    field = (a - flat)[..., 0]
    assert np.array_equal(field, (a - flat)[..., 1])  # one luminance field for the three channels
    assert 3 < field[~mask].std() < 12 and np.abs(np.diff(field, axis=1)).mean() < 3  # about 6 levels, smooth
    _predict(textured, tmp_path / "gt", "testA_gt")
    assert synthetic.score_translation(tmp_path / "gt", textured)["gt_score"] == pytest.approx(1.0)


def test_the_shuffled_control_tells_an_input_independent_answer_from_a_translation(dataset, tmp_path):
    """One fixed image for every input scores the same shuffled; the ground truth loses most of its score."""
    fixed = tmp_path / "fixed"
    fixed.mkdir()
    for p in (dataset / "testA").iterdir():
        shutil.copy(dataset / synthetic.FIXED_STRIPED, fixed / p.name)
    assert synthetic.shuffled_score(fixed, dataset) == synthetic.score_translation(fixed, dataset)
    _predict(dataset, tmp_path / "gt", "testA_gt")
    assert synthetic.shuffled_score(tmp_path / "gt", dataset)["gt_score"] < 0.5


def _mask(folder, i=0):
    return np.asarray(Image.open(folder / "testA_mask" / f"{i:06d}.png")) > 127


def test_shape_scale_grows_each_shape_about_its_centre(dataset, tmp_path):
    """shape_scale multiplies the radius of the same shape (same draws): the default mask lies inside the
    scaled one, whose area is about scale^2 times larger (less where the border clips it)."""
    big = synthetic.generate(tmp_path / "big", size=64, n_train=1, n_test=8, seed=0, shape_scale=1.4)
    plain = synthetic.generate(tmp_path / "plain", size=64, n_train=1, n_test=8, seed=0)
    ratios = []
    for i in range(8):
        small, large = _mask(plain, i), _mask(big, i)
        assert not (small & ~large).any()
        ratios.append(large.sum() / small.sum())
    # 1.4^2 = 1.96 for an unclipped shape; pixel quantisation of a radius >= 11 px moves it by < 10 %,
    # and clipping at the border (centres at >= 16 px from it, radius <= 25 px) only lowers it.
    assert 1.5 < np.median(ratios) < 2.15 and max(ratios) < 2.15
    assert json.loads((big / "meta.json").read_text())["shape_scale"] == 1.4


def test_stripe_scale_widens_the_stripes():
    """stripe_scale 2 doubles the period (0.1 to 0.2 of the side, unclamped at 64 px), so half as many
    dark/white edges cross the image: the edge density of the same draws halves."""
    def edges(scale):
        rng = [np.random.default_rng(s) for s in range(20)]
        return np.mean([np.mean(np.diff(synthetic._stripes(r, 64, scale)[..., 0].astype(int), axis=1) != 0)
                        for r in rng])
    # Exact halving for straight stripes; the wobble adds edges in proportion to its amplitude / period,
    # which both scale alike, and pixel rounding of an edge's position is ±1 of >= 6 px: ±0.1 covers it.
    assert 0.4 < edges(2.0) / edges(1.0) < 0.6


@pytest.mark.parametrize("option", [{"stripe_scale": 0.2}, {"stripe_scale": 5}, {"shape_scale": 2}])
def test_scales_out_of_range_are_refused(tmp_path, option):
    with pytest.raises(ValueError, match=next(iter(option))):
        synthetic.generate(tmp_path / "bad", size=32, **option)


def test_the_command_line_takes_the_scales(tmp_path):
    out = tmp_path / "cli"
    assert main(["synthetic", "--out", str(out), "--stripe-scale", "2", "--shape-scale", "1.4",
                 "--n-train", "1", "--n-test", "1"]) == 0
    meta = json.loads((out / "meta.json").read_text())
    assert (meta["stripe_scale"], meta["shape_scale"]) == (2.0, 1.4)


def test_the_iou_error_splits_into_false_positives_and_negatives(dataset, tmp_path):
    """The input pasted with its shape shifted: every shape pixel outside the old mask is a false positive,
    every uncovered mask pixel a false negative; with the union they account for the whole IoU."""
    pred = tmp_path / "shifted"
    pred.mkdir()
    fp = fn = 0.0
    for p in sorted((dataset / "testA").iterdir()):
        gt = np.asarray(Image.open(dataset / "testA_gt" / p.name))
        mask = np.asarray(Image.open(dataset / "testA_mask" / p.name)) > 127
        shifted = np.roll(mask, 3, axis=1)  # shapes sit in the middle half: no wrap-around at 32 px
        out = np.asarray(Image.open(p)).copy()
        out[mask] = np.median(out[~mask], axis=0).astype(np.uint8)
        out[shifted] = gt[mask][0]  # one stripe colour: black or white, both far from the background
        Image.fromarray(out).save(pred / p.name)
        union = (mask | shifted).sum()
        fp += (shifted & ~mask).sum() / union / 5
        fn += (mask & ~shifted).sum() / union / 5
    scores = synthetic.score_translation(pred, dataset)
    assert scores["shape_false_pos"] == pytest.approx(fp) and scores["shape_false_neg"] == pytest.approx(fn)
    assert scores["shape_iou"] + scores["shape_false_pos"] + scores["shape_false_neg"] == pytest.approx(1.0)
