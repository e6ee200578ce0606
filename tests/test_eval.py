"""Metrics package: Fréchet/KID arithmetic, the FID image pipeline with a stand-in extractor, the
reference cache, coverage and missing-weights errors, segmentation scores and the DRN network."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image
from scipy import linalg

from eval import fid as fidmod
from eval.fid import InceptionWeights, compute_fid_kid, resolve_inception_weights
from eval.folders import EvalError, check_coverage
from eval.frechet import fid_from_features, frechet_distance, kernel_inception_distance
from eval.registry import evaluate_folder_pair, list_metrics
from eval.segmentation import (DRNSeg, _bilinear_up_kernel, confusion_matrix, labelids_to_trainids, load_drn_seg,
                               score_cityscapes, segmentation_scores)


# ---------------------------------------------------------------- Fréchet distance and KID
def test_frechet_distance_matches_closed_form_for_diagonal_gaussians():
    mu1, mu2 = np.array([0.0, 1.0, -2.0]), np.array([1.0, 1.0, 0.5])
    s1, s2 = np.array([1.0, 4.0, 0.25]), np.array([2.0, 1.0, 0.25])
    expected = np.sum((mu1 - mu2) ** 2) + np.sum(s1 + s2 - 2 * np.sqrt(s1 * s2))
    assert frechet_distance(mu1, np.diag(s1), mu2, np.diag(s2)) == pytest.approx(expected, rel=1e-9)


def test_frechet_distance_matches_scipy_on_sampled_features():
    rng = np.random.default_rng(0)
    a = rng.normal(size=(400, 6)) @ rng.normal(size=(6, 6))
    b = rng.normal(loc=0.3, size=(300, 6)) @ rng.normal(size=(6, 6))
    mu1, s1, mu2, s2 = a.mean(0), np.cov(a.T), b.mean(0), np.cov(b.T)
    root1 = linalg.sqrtm(s1).real   # tr sqrt(S1 S2) = tr sqrt(S1^½ S2 S1^½), a symmetric PSD matrix
    tr_cross = np.sum(np.sqrt(np.clip(np.linalg.eigvalsh(root1 @ s2 @ root1), 0, None)))
    expected = np.sum((mu1 - mu2) ** 2) + np.trace(s1) + np.trace(s2) - 2 * tr_cross
    assert fid_from_features(a, b) == pytest.approx(expected, rel=1e-6)
    assert fid_from_features(a, a) == pytest.approx(0.0, abs=1e-6)


def test_kid_equals_unbiased_mmd_with_cubic_kernel_when_subsets_are_whole_sets():
    rng = np.random.default_rng(1)
    x, y = rng.normal(size=(50, 8)), rng.normal(loc=0.5, size=(50, 8))
    d, m = x.shape[1], len(x)
    k = lambda a, b: (a @ b.T / d + 1) ** 3
    kxx, kyy, kxy = k(x, x), k(y, y), k(x, y)
    expected = ((kxx.sum() - np.trace(kxx)) + (kyy.sum() - np.trace(kyy))) / (m * (m - 1)) - 2 * kxy.mean()
    assert kernel_inception_distance(x, y, num_subsets=3, max_subset_size=1000) == pytest.approx(expected, rel=1e-9)


def test_kid_is_seeded_and_leaves_global_numpy_rng_alone():
    rng = np.random.default_rng(2)
    x, y = rng.normal(size=(40, 4)), rng.normal(size=(60, 4))
    np.random.seed(123)
    before = np.random.get_state()[1].copy()
    first = kernel_inception_distance(x, y, num_subsets=10, max_subset_size=20, seed=7)
    assert kernel_inception_distance(x, y, num_subsets=10, max_subset_size=20, seed=7) == first
    assert np.array_equal(np.random.get_state()[1], before)


# ---------------------------------------------------------------- image pipeline with a stand-in
class PooledProjection:
    """Deterministic stand-in: 4×4 average-pooled pixels times a fixed random matrix. Counts images."""
    name = "pooled_projection"
    fingerprint = "pooled-projection-seed0-v1"

    def __init__(self):
        self.weight = torch.from_numpy(np.random.default_rng(0).normal(size=(48, 8))).float()
        self.images_seen = 0

    def __call__(self, x):
        assert x.shape[1:] == (3, 299, 299) and float(x.max()) > 1.5   # clean-fid hands over [0,255] at 299
        self.images_seen += len(x)
        return torch.nn.functional.adaptive_avg_pool2d(x / 255, 4).flatten(1) @ self.weight


def _write_images(folder, stems, seed, shift):
    folder.mkdir(parents=True)
    rng = np.random.default_rng(seed)
    for s in stems:
        arr = np.clip(rng.normal(128 + shift, 40, size=(16, 16, 3)), 0, 255).astype(np.uint8)
        Image.fromarray(arr).save(folder / f"{s}.png")


@pytest.fixture
def folders(tmp_path):
    stems = [f"img_{i:03d}" for i in range(20)]
    _write_images(tmp_path / "testA", stems, 0, 0)
    _write_images(tmp_path / "gen", stems, 1, 30)
    _write_images(tmp_path / "horse2zebra" / "testB", [f"ref_{i:03d}" for i in range(20)], 2, -10)
    return tmp_path


@pytest.mark.parametrize("mode", ["clean", "legacy_pytorch"])
def test_fid_pipeline_with_standin_matches_direct_computation_and_is_labelled(folders, mode):
    """Each mode's images go through clean-fid's own resizer of that mode (build_resizer: PIL bicubic for
    clean, torch bilinear for legacy_pytorch), and the value is named by its mode."""
    from cleanfid.resize import build_resizer

    fx = PooledProjection()
    out = compute_fid_kid(folders / "gen", folders / "horse2zebra" / "testB", test_input_dir=folders / "testA",
                          mode=mode, feature_extractor=fx, cache_dir=folders / "cache", device="cpu", num_workers=0)
    resize = build_resizer(mode)

    def direct(folder):
        imgs = [resize(np.asarray(Image.open(p).convert("RGB"))) for p in sorted(folder.glob("*.png"))]
        return fx(torch.from_numpy(np.stack(imgs)).permute(0, 3, 1, 2).float()).numpy()

    gen, ref = direct(folders / "gen"), direct(folders / "horse2zebra" / "testB")
    assert not {"fid", "kid", f"fid_{mode}", f"kid_{mode}"} & set(out)   # a stand-in is never called FID
    assert out["metric_name"] == f"fid_standin_{mode}"
    # rel 1e-4: the same float32 features in the same order; only the float64 sqrtm of the 8x8 covariance
    # product differs between clean-fid's call and ours (round-off ~1e-12 relative), far below it.
    assert out[f"fid_standin_{mode}"] == pytest.approx(fid_from_features(gen, ref), rel=1e-4)
    assert out[f"kid_standin_{mode}"] == pytest.approx(kernel_inception_distance(gen, ref), rel=1e-3, abs=1e-7)
    p = out["protocol"]
    assert p["extractor"] == "custom:pooled_projection" and p["metric_name"] == f"fid_standin_{mode}"
    assert (p["mode"], p["n_generated"], p["n_real"]) == (mode, 20, 20) and p["pinned_sha256"] is None
    assert (p["reference_dataset"], p["reference_split"], p["reference_resolution"]) == ("horse2zebra", "testB", "16x16")
    assert p["cleanfid_version"] == "0.1.35" and p["coverage_checked_against"].endswith("testA")


def test_reference_features_are_cached_and_not_recomputed(folders):
    fx = PooledProjection()
    kw = dict(feature_extractor=fx, cache_dir=folders / "cache", device="cpu", num_workers=0)
    first = compute_fid_kid(folders / "gen", folders / "horse2zebra" / "testB", **kw)
    assert fx.images_seen == 40 and not first["protocol"]["reference_cache_hit"]
    cached = list((folders / "cache").glob("*.npz"))
    assert [c.name for c in cached] == [first["protocol"]["reference_stats_file"].rsplit("/", 1)[-1]]
    assert cached[0].name.startswith("horse2zebra_testB_clean_n20_16x16_custom-pooled_projection-")
    second = compute_fid_kid(folders / "gen", folders / "horse2zebra" / "testB", **kw)
    assert fx.images_seen == 60   # only the 20 generated images went through the extractor again
    assert second["protocol"]["reference_cache_hit"] and \
        second["fid_standin_clean"] == pytest.approx(first["fid_standin_clean"])
    with np.load(cached[0]) as z:   # mu and sigma are stored beside the features for KID
        assert z["feats"].shape == (20, 8) and z["mu"].shape == (8,) and z["sigma"].shape == (8, 8)
    from_stats = compute_fid_kid(folders / "gen", ref_stats=cached[0], **kw)
    assert from_stats["fid_standin_clean"] == pytest.approx(first["fid_standin_clean"])


def test_reference_stats_of_another_mode_are_refused(folders):
    fx = PooledProjection()
    kw = dict(feature_extractor=fx, cache_dir=folders / "cache", device="cpu", num_workers=0)
    compute_fid_kid(folders / "gen", folders / "horse2zebra" / "testB", **kw)
    stats = next((folders / "cache").glob("*.npz"))
    with pytest.raises(EvalError, match="legacy_pytorch"):
        compute_fid_kid(folders / "gen", ref_stats=stats, mode="legacy_pytorch", **kw)


def test_coverage_error_names_missing_stems(folders):
    (folders / "gen" / "img_003.png").unlink()
    (folders / "gen" / "img_017.png").unlink()
    with pytest.raises(EvalError, match=r"2 test image\(s\) have no translation: img_003, img_017"):
        check_coverage(folders / "gen", folders / "testA")
    with pytest.raises(EvalError, match="img_003"):
        compute_fid_kid(folders / "gen", folders / "horse2zebra" / "testB", test_input_dir=folders / "testA",
                        feature_extractor=PooledProjection(), cache_dir=folders / "cache", device="cpu", num_workers=0)
    assert check_coverage(folders / "testA", folders / "testA") == 20


@pytest.fixture
def offline(monkeypatch, tmp_path):
    """No internet, no weights in clean-fid's caches, nothing given."""
    monkeypatch.delenv(fidmod.WEIGHTS_ENV, raising=False)
    for mode, spec in list(fidmod.INCEPTION.items()):
        unreachable = "http://127.0.0.1:9/" + spec.file_name
        monkeypatch.setitem(fidmod.INCEPTION, mode, InceptionWeights(unreachable, lambda: str(tmp_path / "hub")))
    return tmp_path


@pytest.mark.parametrize("mode, file_name", [("clean", "inception-2015-12-05.pt"),
                                             ("legacy_pytorch", "pt_inception-2015-12-05-6726825d.pth")])
def test_missing_inception_weights_error_says_which_file_where_from_and_how_to_pass_it(offline, mode, file_name):
    with pytest.raises(EvalError) as err:
        resolve_inception_weights(mode)
    msg = str(err.value)
    assert file_name in msg and f"http://127.0.0.1:9/{file_name}" in msg
    assert "--inception-weights" in msg and "QSATTN_INCEPTION_WEIGHTS" in msg
    assert not (offline / "hub" / file_name).exists()   # no truncated file left behind
    with pytest.raises(EvalError, match="do not exist"):
        resolve_inception_weights(mode, offline / "nowhere.pt")


def test_without_weights_fid_fails_instead_of_falling_back(offline, folders, capsys):
    with pytest.raises(EvalError, match="inception-2015-12-05.pt"):
        compute_fid_kid(folders / "gen", folders / "horse2zebra" / "testB", cache_dir=folders / "cache", device="cpu")
    from qsattn.cli import main

    assert main(["eval", "--gen", str(folders / "gen"), "--ref", str(folders / "horse2zebra" / "testB"),
                 "--test-input", str(folders / "testA"), "--mode", "legacy_pytorch", "--cache-dir",
                 str(folders / "cache"), "--device", "cpu"]) == 2
    assert "pt_inception-2015-12-05-6726825d.pth" in capsys.readouterr().err


def test_the_two_modes_give_different_numbers_on_the_same_folders(folders):
    """The same folders and extractor, other resizers: the values differ (a resizer mix-up would make them equal)."""
    fx = PooledProjection()
    out = evaluate_folder_pair(folders / "gen", folders / "horse2zebra" / "testB", metrics=["fid", "kid"],
                               feature_extractor=fx, cache_dir=folders / "cache", device="cpu", extra={"num_workers": 0})
    clean, legacy = out["metrics"]["fid_standin_clean"], out["metrics"]["fid_standin_legacy_pytorch"]
    # 16x16 noise upsampled to 299 by PIL bicubic (which overshoots) vs torch bilinear, then 4x4-pooled: the
    # pooled means nearly agree, their spread does not (measured: 6.806 vs 6.792, a 2e-3 relative gap). The
    # same mode twice differs only by float32 round-off of the 8-d features (~1e-7 relative, ~1e-6 on the
    # FID); 1e-4 is 100x above that and 20x below the gap.
    assert abs(clean - legacy) > 1e-4 * max(clean, legacy)
    assert out["protocol"]["fid_kid_clean"]["resizer"].startswith("PIL bicubic")
    assert out["protocol"]["fid_kid_legacy_pytorch"]["resizer"].startswith("torch bilinear")


def test_a_clean_mode_file_with_another_hash_is_refused_naming_both_hashes_and_the_url(tmp_path):
    wrong = tmp_path / "inception-2015-12-05.pt"
    wrong.write_bytes(b"not the torchscript file")
    with pytest.raises(EvalError) as err:
        fidmod.load_inception("clean", wrong, torch.device("cpu"))
    msg = str(err.value)
    assert fidmod.sha256_file(wrong) in msg and fidmod.PINNED_SHA256["clean"] in msg
    assert fidmod.INCEPTION["clean"].url in msg


def test_legacy_pytorch_inception_loads_from_a_local_file_and_refuses_a_foreign_hash(tmp_path, monkeypatch, folders):
    import sys

    from cleanfid import inception_pytorch

    # A random-weight file with pytorch-fid's layout: take the state dict of the net being built.
    original = inception_pytorch.load_state_dict_from_url
    monkeypatch.setattr(inception_pytorch, "load_state_dict_from_url",
                        lambda *a, **k: sys._getframe(1).f_locals["inception"].state_dict())
    torch.manual_seed(0)
    state = inception_pytorch.fid_inception_v3().state_dict()
    monkeypatch.setattr(inception_pytorch, "load_state_dict_from_url", original)
    path = tmp_path / "pt_inception-2015-12-05-6726825d.pth"
    torch.save(state, path)
    with pytest.raises(EvalError) as err:   # random weights under the right name: refused, not warned about
        fidmod.load_inception("legacy_pytorch", path, torch.device("cpu"))
    assert fidmod.sha256_file(path) in str(err.value) and fidmod.PINNED_SHA256["legacy_pytorch"] in str(err.value)
    assert fidmod.INCEPTION["legacy_pytorch"].url in str(err.value)
    monkeypatch.setitem(fidmod.PINNED_SHA256, "legacy_pytorch", fidmod.sha256_file(path))  # pinned: it loads
    ex = fidmod.load_inception("legacy_pytorch", path, torch.device("cpu"))
    assert inception_pytorch.load_state_dict_from_url is original
    assert ex.name == "inception_v3:pytorch_fid" and ex.weights_sha256 == fidmod.sha256_file(path)
    files = sorted((folders / "gen").glob("*.png"))[:2]
    assert fidmod.compute_features(files, ex, "legacy_pytorch", torch.device("cpu"), num_workers=0).shape == (2, 2048)


def test_registry_runs_fid_and_kid_once_and_keeps_standin_names(folders):
    assert {"fid", "kid", "cityscapes_seg"} <= set(list_metrics())
    fx = PooledProjection()
    out = evaluate_folder_pair(folders / "gen", folders / "horse2zebra" / "testB", metrics=["fid", "kid"],
                               feature_extractor=fx, cache_dir=folders / "cache", device="cpu",
                               extra={"num_workers": 0})
    assert fx.images_seen == 80   # 20 generated + 20 reference images, once per mode
    assert set(out["metrics"]) == {f"{v}_standin_{m}" for v in ("fid", "kid") for m in ("clean", "legacy_pytorch")}
    assert out["protocol"]["fid_kid_clean"]["extractor"] == "custom:pooled_projection"
    json.dumps(out)   # the CLI writes it as JSON
    with pytest.raises(EvalError, match="Did you mean 'fid'"):
        evaluate_folder_pair(folders / "gen", metrics=["fdi"])


# ---------------------------------------------------------------- segmentation metric
def test_confusion_matrix_and_scores_by_hand():
    label = np.array([[0, 0, 1], [1, 255, 2]])
    pred = np.array([[0, 1, 1], [1, 0, 2]])
    conf = confusion_matrix(pred, label, num_classes=3)
    assert conf.tolist() == [[1, 1, 0], [0, 2, 0], [0, 0, 1]]   # rows: true class; 255 ignored
    s = segmentation_scores(conf)
    # IoU: 1/(2+1-1), 2/(2+3-2), 1/1; pixel acc 4/5; class acc 1/2, 2/2, 1/1
    assert s["mAP"] == pytest.approx(100 * (1 / 2 + 2 / 3 + 1) / 3)
    assert s["pixAcc"] == pytest.approx(80.0)
    assert s["classAcc"] == pytest.approx(100 * (1 / 2 + 1 + 1) / 3)


def test_scores_skip_classes_absent_everywhere_but_count_false_predictions():
    # class 2 is predicted but never labelled: IoU 0 counts, its accuracy (0/0) does not; class 3 unused.
    conf = np.array([[3, 0, 1, 0], [0, 2, 0, 0], [0, 0, 0, 0], [0, 0, 0, 0]])
    s = segmentation_scores(conf)
    assert s["mAP"] == pytest.approx(100 * (3 / 4 + 1 + 0) / 3)
    assert s["classAcc"] == pytest.approx(100 * (3 / 4 + 1) / 2)
    assert s["pixAcc"] == pytest.approx(100 * 5 / 6)


def test_cityscapes_label_ids_map_to_train_ids():
    ids = np.array([7, 8, 11, 26, 33, 0, 6, 9, 34, 255])
    assert labelids_to_trainids(ids).tolist() == [0, 1, 2, 13, 18, 255, 255, 255, 255, 255]


# ---------------------------------------------------------------- DRN
def test_drn_outputs_class_scores_at_input_resolution():
    torch.manual_seed(0)
    for arch in ("drn_d_22", "drn_d_105"):
        net = DRNSeg(arch).eval()
        with torch.no_grad():
            assert net(torch.randn(2, 3, 32, 64)).shape == (2, 19, 32, 64)


def test_up_layer_is_drn_fixed_bilinear_kernel():
    f, k = 8, 16
    c = (2 * f - 1 - f % 2) / (2.0 * f)
    expected = [[(1 - abs(i / f - c)) * (1 - abs(j / f - c)) for j in range(k)] for i in range(k)]
    assert torch.allclose(_bilinear_up_kernel(16), torch.tensor(expected), atol=1e-7)
    up = DRNSeg("drn_d_22").up
    assert up.weight.shape == (19, 1, 16, 16) and not up.weight.requires_grad
    assert torch.equal(up.weight[5, 0], up.weight[0, 0])


def test_drn_d22_state_dict_has_released_layout_and_loads_strictly(tmp_path):
    torch.manual_seed(0)
    net = DRNSeg("drn_d_22")
    state = net.state_dict()
    expected_shapes = {"base.0.0.weight": (16, 3, 7, 7), "base.1.0.weight": (16, 16, 3, 3),
                       "base.2.0.weight": (32, 16, 3, 3), "base.3.0.conv1.weight": (64, 32, 3, 3),
                       "base.3.0.downsample.0.weight": (64, 32, 1, 1), "base.3.1.bn2.running_var": (64,),
                       "base.6.1.conv2.weight": (512, 512, 3, 3), "base.7.0.weight": (512, 512, 3, 3),
                       "base.8.1.running_mean": (512,), "seg.weight": (19, 512, 1, 1), "seg.bias": (19,),
                       "up.weight": (19, 1, 16, 16)}
    for key, shape in expected_shapes.items():
        assert tuple(state[key].shape) == shape, key
    assert "base.9.0.weight" not in state and not any(k.startswith("fc") for k in state)
    # The released files predate num_batches_tracked; some carry DataParallel's 'module.' prefix.
    old = {k: v.clone() for k, v in state.items() if not k.endswith("num_batches_tracked")}
    torch.save(old, tmp_path / "drn_d_22_cityscapes.pth")
    torch.save({"state_dict": {"module." + k: v for k, v in old.items()}}, tmp_path / "ckpt.pth.tar")
    for path in (tmp_path / "drn_d_22_cityscapes.pth", tmp_path / "ckpt.pth.tar"):
        loaded = load_drn_seg(path, "drn_d_22")
        assert all(torch.equal(loaded.state_dict()[k], v) for k, v in old.items())
    with pytest.raises(EvalError, match="drn_d_105"):
        load_drn_seg(tmp_path / "drn_d_22_cityscapes.pth", "drn_d_105")
    # with a pinned sha256 (drn_sha256: fyu/drn publishes none) any other file is refused, naming both
    # hashes, the published file name and where to get it
    path = tmp_path / "drn_d_22_cityscapes.pth"
    actual = fidmod.sha256_file(path)
    assert load_drn_seg(path, "drn_d_22", expected_sha256=actual) is not None
    with pytest.raises(EvalError) as err:
        load_drn_seg(path, "drn_d_22", expected_sha256="0" * 64)
    msg = str(err.value)
    assert actual in msg and "0" * 64 in msg and "drn_d_22_cityscapes.pth" in msg and "go.yf.io/drn" in msg
    with pytest.raises(EvalError, match="drn-d-105_ms_cityscapes.pth"):
        load_drn_seg(tmp_path / "missing.pth", "drn_d_105")
    (tmp_path / "pickle.pth").write_bytes(b"\x80\x04cos\nsystem\n.")   # needs code to unpickle: refused
    with pytest.raises(EvalError, match="not a readable DRN weights file"):
        load_drn_seg(tmp_path / "pickle.pth", "drn_d_22")


def test_score_cityscapes_pairs_files_and_records_the_segmenter(tmp_path):
    torch.manual_seed(0)
    torch.save(DRNSeg("drn_d_22").state_dict(), tmp_path / "drn.pth")
    (tmp_path / "gen").mkdir(), (tmp_path / "labels").mkdir()
    rng = np.random.default_rng(0)
    for name in ("frankfurt_000000_000294", "lindau_000001_000019"):
        Image.fromarray(rng.integers(0, 255, (64, 128, 3), dtype=np.uint8)).save(tmp_path / "gen" / f"{name}_leftImg8bit.png")
        Image.fromarray(rng.choice([7, 8, 26, 0], size=(256, 512)).astype(np.uint8)).save(
            tmp_path / "labels" / f"{name}_gtFine_labelIds.png")
    out = score_cityscapes(tmp_path / "gen", tmp_path / "labels", tmp_path / "drn.pth", "drn_d_22", size=(64, 32),
                           device="cpu")
    assert all(0 <= out[k] <= 100 for k in ("mAP", "pixAcc", "classAcc"))
    p = out["protocol"]
    assert (p["segmenter"], p["n_generated"], p["size_wh"]) == ("drn_d_22", 2, [64, 32]) and len(p["segmenter_sha256"]) == 64
    (tmp_path / "labels" / "lindau_000001_000019_gtFine_labelIds.png").unlink()
    with pytest.raises(EvalError, match="lindau_000001_000019"):
        score_cityscapes(tmp_path / "gen", tmp_path / "labels", tmp_path / "drn.pth", size=(64, 32), device="cpu")


def test_gen_without_test_input_checks_the_known_split_sizes(folders, capsys):
    """horse2zebra's test split is 120 horses and 140 zebras: 20 generated images are refused, naming both."""
    from qsattn.cli import main

    for named in ([], ["--dataset", "horse2zebra"]):   # the folder above --ref, or the name given
        code = main(["eval", "--gen", str(folders / "gen"), "--ref", str(folders / "horse2zebra" / "testB"), *named,
                     "--cache-dir", str(folders / "cache"), "--device", "cpu"])
        err = capsys.readouterr().err
        assert code == 2 and "holds 20 images, horse2zebra's test split has 120" in err and "has 140" in err
