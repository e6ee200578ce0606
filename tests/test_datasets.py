"""`python -m qsattn data`: download, resume, checksum, safe extraction, preparation, counts, idempotence.

Every test talks to a threaded HTTP server on 127.0.0.1 that serves small archives built here in each
source's real layout; nothing touches the internet.
"""
from __future__ import annotations

import dataclasses
import hashlib
import io
import json
import os
import socket
import subprocess
import sys
import tarfile
import threading
import time
import zipfile
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from PIL import Image

from qsattn.data import datasets as ds
from qsattn.data.datasets import DatasetError


# --------------------------------------------------------------------------------------------------
# A local server: Range support, a mode that drops the first transfer halfway (or every one), a mode
# ignoring Range; `no_length` leaves out Content-Length, `delay` slows the transfer down
# --------------------------------------------------------------------------------------------------

class _Handler(BaseHTTPRequestHandler):
    def do_GET(self):
        srv = self.server
        srv.log.append((self.path, self.headers.get("Range")))
        body = srv.files.get(self.path)
        if body is None:
            self.send_error(404)
            return
        start = 0
        requested = self.headers.get("Range")
        if requested and srv.mode != "ignore_range":
            start = int(requested.removeprefix("bytes=").split("-")[0])
            if start >= len(body):
                self.send_response(416)
                self.send_header("Content-Length", "0")
                self.end_headers()
                return
            self.send_response(206)
            self.send_header("Content-Range", f"bytes {start}-{len(body) - 1}/{len(body)}")
        else:
            self.send_response(200)
        payload = body[start:]
        if not srv.no_length:
            self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        if (srv.mode == "drop_once" and not srv.dropped) or srv.mode == "drop_always":
            srv.dropped = True
            self.wfile.write(payload[: len(payload) // 2])
            self.wfile.flush()
            self.connection.shutdown(socket.SHUT_RDWR)
            self.close_connection = True
            return
        for i in range(0, len(payload), 4096):
            self.wfile.write(payload[i:i + 4096])
            time.sleep(srv.delay)

    def log_message(self, *args):
        pass

    def finish(self):
        try:
            super().finish()
        except OSError:
            pass  # the dropped connection


@pytest.fixture
def server():
    srv = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    srv.daemon_threads = True
    srv.files, srv.log, srv.mode, srv.dropped, srv.no_length, srv.delay = {}, [], "normal", False, False, 0.0
    srv.base = f"http://127.0.0.1:{srv.server_address[1]}"
    thread = threading.Thread(target=srv.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    yield srv
    srv.shutdown()
    srv.server_close()


# --------------------------------------------------------------------------------------------------
# Small archives in the real layouts
# --------------------------------------------------------------------------------------------------

def _image_bytes(seed: int, fmt: str = "JPEG", size=(8, 8), mode="RGB") -> bytes:
    im = Image.new(mode, size, (seed * 40 % 256, 50, 90) if mode != "L" else seed % 34)
    buf = io.BytesIO()
    im.save(buf, format=fmt)
    return buf.getvalue()


def _zip(members: dict[str, bytes]) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        for name, data in members.items():
            zf.writestr(name, data)
    return buf.getvalue()


def _tar(members: dict[str, bytes]) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tf:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tf.addfile(info, io.BytesIO(data))
    return buf.getvalue()


H2Z_COUNTS = {"trainA": 3, "trainB": 2, "testA": 2, "testB": 1}


def _horse2zebra_zip() -> bytes:
    members = {}
    for split, n in H2Z_COUNTS.items():
        for i in range(n):
            members[f"horse2zebra/{split}/n0{i:07d}_{split}.jpg"] = _image_bytes(i) + bytes(3000)  # padding: a
    return _zip(members)                                                                         # real halfway


def _entry(name: str, server, body: bytes, path: str, counts: dict | None = None, sha256: str | None = "auto",
           **source_changes) -> ds.Dataset:
    """The real registry entry, pointed at the local server, with the test archive's hash and counts."""
    real = ds.REGISTRY[name]
    server.files[path] = body
    digest = hashlib.sha256(body).hexdigest() if sha256 == "auto" else sha256
    source = dataclasses.replace(real.sources[0], url=server.base + path, size=len(body), sha256=digest,
                                 **source_changes)
    return dataclasses.replace(real, sources=(source,), counts=counts or real.counts)


def _h2z(server, **kw) -> ds.Dataset:
    return _entry("horse2zebra", server, _horse2zebra_zip(), "/cyclegan/datasets/horse2zebra.zip",
                  counts=H2Z_COUNTS, **kw)


def _no_partial_left(root: Path, name: str) -> bool:
    return not (root / name).exists() and not list(root.glob(f".{name}.partial-*"))


# --------------------------------------------------------------------------------------------------
# Tests
# --------------------------------------------------------------------------------------------------

def test_real_registry_matches_published_sources():
    h2z, afhq = ds.REGISTRY["horse2zebra"], ds.REGISTRY["cat2dog"]
    assert h2z.sources[0].url == "https://efrosgans.eecs.berkeley.edu/cyclegan/datasets/horse2zebra.zip"
    assert h2z.counts == {"trainA": 1067, "trainB": 1334, "testA": 120, "testB": 140}
    assert afhq.counts == {"trainA": 5153, "trainB": 4739, "testA": 500, "testB": 500}
    assert afhq.layout["trainA"] == "afhq/train/cat" and afhq.layout["testB"] == "afhq/val/dog"
    assert ds.REGISTRY["cityscapes"].counts["testA"] == 500
    for entry in ds.REGISTRY.values():
        for s in entry.sources:
            assert s.sha256 is None or len(s.sha256) == 64


def test_download_prepare_then_second_run_downloads_nothing(server, tmp_path):
    entry = _h2z(server)
    target = ds.prepare(entry, tmp_path, progress=False)
    assert target == tmp_path / "horse2zebra"
    assert {p.name for p in target.iterdir()} == {"trainA", "trainB", "testA", "testB", ".prepared.json"}
    assert {s: ds.count_images(target / s) for s in H2Z_COUNTS} == H2Z_COUNTS
    assert not (tmp_path / "horse2zebra.zip").exists()  # archive removed after success
    marker = (target / ".prepared.json").read_text()
    assert entry.sources[0].sha256 in marker and '"sha256_verified": true' in marker
    requests = len(server.log)
    assert requests == 1
    ds.prepare(entry, tmp_path, progress=False)
    assert len(server.log) == requests  # idempotent: nothing fetched again


def test_interrupted_transfer_resumes_with_range_request(server, tmp_path):
    server.mode = "drop_once"
    entry = _h2z(server)
    size = entry.sources[0].size
    ds.prepare(entry, tmp_path, progress=False)
    assert [r for _, r in server.log] == [None, f"bytes={size // 2}-"]
    assert ds.count_images(tmp_path / "horse2zebra" / "trainA") == 3


def test_server_that_ignores_range_gets_a_clean_restart(server, tmp_path):
    server.mode = "ignore_range"
    body = _horse2zebra_zip()
    server.files["/f.zip"] = body
    (tmp_path / "f.zip.part").write_bytes(b"garbage that must not stay in front")
    out = ds.download(server.base + "/f.zip", tmp_path / "f.zip", progress=False)
    assert server.log[0][1] == "bytes=35-"  # it did ask to resume...
    assert out.read_bytes() == body          # ...and started over when the server answered 200
    assert not (tmp_path / "f.zip.part").exists()


def test_checksum_mismatch_deletes_file_and_says_both_hashes(server, tmp_path):
    entry = _h2z(server, sha256="0" * 64)
    actual = hashlib.sha256(server.files["/cyclegan/datasets/horse2zebra.zip"]).hexdigest()
    with pytest.raises(DatasetError, match="sha256 mismatch") as err:
        ds.prepare(entry, tmp_path, progress=False)
    assert "0" * 64 in str(err.value) and actual in str(err.value) and "deleted" in str(err.value)
    assert not (tmp_path / "horse2zebra.zip").exists()
    assert _no_partial_left(tmp_path, "horse2zebra")


def test_unknown_sha256_warns_with_computed_hash(server, tmp_path, capsys):
    entry = _h2z(server, sha256=None)
    ds.prepare(entry, tmp_path, progress=False)
    err = capsys.readouterr().err
    actual = hashlib.sha256(server.files["/cyclegan/datasets/horse2zebra.zip"]).hexdigest()
    assert "WARNING" in err and "NOT verified" in err and actual in err
    assert '"sha256_verified": false' in (tmp_path / "horse2zebra" / ".prepared.json").read_text()


def test_truncated_archive_is_a_clear_error(server, tmp_path):
    body = _horse2zebra_zip()
    entry = _entry("horse2zebra", server, body[: len(body) // 2], "/h2z.zip", counts=H2Z_COUNTS, sha256=None)
    with pytest.raises(DatasetError, match="does not open as an archive"):
        ds.prepare(entry, tmp_path, progress=False)
    assert _no_partial_left(tmp_path, "horse2zebra") and not (tmp_path / "horse2zebra.zip").exists()


def test_wrong_counts_fail_and_leave_no_dataset(server, tmp_path):
    entry = _h2z(server)
    entry = dataclasses.replace(entry, counts={**H2Z_COUNTS, "testB": 140})
    with pytest.raises(DatasetError, match="testB: 1 images, expected 140"):
        ds.prepare(entry, tmp_path, progress=False)
    assert _no_partial_left(tmp_path, "horse2zebra")


def test_existing_folder_without_marker_is_not_overwritten(server, tmp_path):
    (tmp_path / "horse2zebra" / "trainA").mkdir(parents=True)
    with pytest.raises(DatasetError, match="not prepared by this command"):
        ds.prepare(_h2z(server), tmp_path, progress=False)
    assert server.log == []


@pytest.mark.parametrize("bad", ["../evil.txt", "/abs/evil.txt", "horse2zebra/../../evil.txt"])
def test_zip_path_traversal_is_rejected(tmp_path, bad):
    archive = tmp_path / "a.zip"
    archive.write_bytes(_zip({"horse2zebra/trainA/ok.jpg": b"x", bad: b"pwned"}))
    with pytest.raises(DatasetError, match="refusing"):
        ds.safe_extract(archive, tmp_path / "out")
    assert not (tmp_path / "evil.txt").exists() and not list((tmp_path / "out").rglob("*.jpg"))


def test_tar_link_pointing_outside_is_rejected(tmp_path):
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tf:
        link = tarfile.TarInfo("cityscapes_val/valA/escape")
        link.type, link.linkname = tarfile.SYMTYPE, "../../../../etc/passwd"
        tf.addfile(link)
    archive = tmp_path / "a.tar"
    archive.write_bytes(buf.getvalue())
    with pytest.raises(DatasetError, match="points outside"):
        ds.safe_extract(archive, tmp_path / "out")
    archive.write_bytes(_tar({"../evil.txt": b"pwned"}))
    with pytest.raises(DatasetError, match="refusing"):
        ds.safe_extract(archive, tmp_path / "out")
    assert not (tmp_path / "evil.txt").exists()


def test_mirror_replaces_scheme_and_host_and_keeps_the_path(server, tmp_path):
    assert ds.rewrite_url("https://www.dropbox.com/s/abc/afhq.zip?dl=1", "http://10.0.0.1:8000/pub") == \
        "http://10.0.0.1:8000/pub/s/abc/afhq.zip?dl=1"
    entry = _h2z(server)
    source = dataclasses.replace(entry.sources[0], url="https://unreachable.invalid/cyclegan/datasets/horse2zebra.zip")
    entry = dataclasses.replace(entry, sources=(source,))
    ds.prepare(entry, tmp_path, mirror=server.base, progress=False)
    assert server.log == [("/cyclegan/datasets/horse2zebra.zip", None)]


def test_cat2dog_maps_afhq_cat_to_A_dog_to_B_and_val_to_test(server, tmp_path):
    members = {}
    for split, domain, n in [("train", "cat", 3), ("train", "dog", 2), ("train", "wild", 2),
                             ("val", "cat", 1), ("val", "dog", 2), ("val", "wild", 1)]:
        for i in range(n):
            members[f"afhq/{split}/{domain}/pixabay_{domain}_{i:06d}.jpg"] = _image_bytes(i)
    counts = {"trainA": 3, "trainB": 2, "testA": 1, "testB": 2}
    entry = _entry("cat2dog", server, _zip(members), "/s/t9l9o3vsx2jai3z/afhq.zip", counts=counts)
    target = ds.prepare(entry, tmp_path, progress=False)
    assert sorted(p.name for p in (target / "trainA").iterdir())[0].startswith("pixabay_cat")
    assert all(p.name.startswith("pixabay_dog") for p in (target / "testB").iterdir())
    assert not list(target.rglob("*wild*"))


def test_cityscapes_val_for_cut_takes_labels_from_valB(server, tmp_path):
    members = {f"cityscapes_val/val{ab}/{i}_{ab}.jpg": _image_bytes(i) for ab in "AB" for i in range(2)}
    entry = _entry("cityscapes_val_for_cut", server, _tar(members), "/CUT/datasets/cityscapes_val_for_CUT.tar",
                   counts={"testA": 2, "testB": 2})
    target = ds.prepare(entry, tmp_path, progress=False)
    assert sorted(p.name for p in (target / "testA").iterdir()) == ["0_B.jpg", "1_B.jpg"]


# --- Cityscapes from the two zips fetched by hand ---------------------------------------------------

CITY_IDS = {"train": ["aachen_000000_000019", "aachen_000001_000019", "bochum_000000_000313"],
            "val": ["frankfurt_000000_000294", "munster_000000_000019"]}


def _fake_cityscapes(folder: Path) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    gt, photos = {"README": b"", "license.txt": b""}, {"README": b"", "license.txt": b""}
    for split, ids in CITY_IDS.items():
        for i, key in enumerate(ids):
            city = key.split("_")[0]
            gt[f"gtFine/{split}/{city}/{key}_gtFine_color.png"] = _image_bytes(i, "PNG", (64, 32), "RGBA")
            gt[f"gtFine/{split}/{city}/{key}_gtFine_labelIds.png"] = _image_bytes(i + 7, "PNG", (64, 32), "L")
            gt[f"gtFine/{split}/{city}/{key}_gtFine_instanceIds.png"] = _image_bytes(i, "PNG", (64, 32), "L")
            photos[f"leftImg8bit/{split}/{city}/{key}_leftImg8bit.png"] = _image_bytes(i, "PNG", (64, 32))
    gt["gtFine/test/berlin/berlin_000000_000019_gtFine_color.png"] = _image_bytes(0, "PNG", (64, 32))
    (folder / "gtFine_trainvaltest.zip").write_bytes(_zip(gt))
    (folder / "leftImg8bit_trainvaltest.zip").write_bytes(_zip(photos))


def _city_entry() -> ds.Dataset:
    return dataclasses.replace(ds.REGISTRY["cityscapes"],
                               counts={"trainA": 3, "trainB": 3, "testA": 2, "testB": 2, "testA_labelIds": 2})


def test_cityscapes_is_prepared_from_the_two_zips(tmp_path, capsys):
    _fake_cityscapes(tmp_path / "cityscapes_zips")
    target = ds.prepare(_city_entry(), tmp_path, progress=False)
    assert sorted(p.stem for p in (target / "testA").iterdir()) == CITY_IDS["val"]
    assert sorted(p.stem for p in (target / "trainB").iterdir()) == CITY_IDS["train"]
    with Image.open(target / "testB" / "frankfurt_000000_000294.jpg") as im:
        assert im.size == (256, 256) and im.mode == "RGB"
    with Image.open(target / "testA_labelIds" / "munster_000000_000019.png") as im:
        assert im.size == (256, 256) and im.getextrema() == (8, 8)  # NEAREST kept the class id exactly
    assert "NOT verified" in capsys.readouterr().err  # Cityscapes publishes no sha256
    assert (tmp_path / "cityscapes_zips" / "gtFine_trainvaltest.zip").exists()  # user's files are kept


def test_cityscapes_missing_zips_say_what_to_download_and_where(tmp_path):
    with pytest.raises(DatasetError) as err:
        ds.prepare(_city_entry(), tmp_path, zips_dir=tmp_path / "zips", progress=False)
    message = str(err.value)
    for needed in ("gtFine_trainvaltest.zip", "leftImg8bit_trainvaltest.zip", "cityscapes-dataset.com",
                   str(tmp_path / "zips")):
        assert needed in message
    assert _no_partial_left(tmp_path, "cityscapes")


def test_cityscapes_zip_that_is_not_a_zip_is_a_clear_error(tmp_path):
    _fake_cityscapes(tmp_path / "z")
    (tmp_path / "z" / "leftImg8bit_trainvaltest.zip").write_bytes(b"<html>login required</html>")
    with pytest.raises(DatasetError, match="does not open as an archive"):
        ds.prepare(_city_entry(), tmp_path, zips_dir=tmp_path / "z", progress=False)
    assert _no_partial_left(tmp_path, "cityscapes")


def test_cli_reports_errors_and_lists(server, tmp_path, capsys, monkeypatch):
    from qsattn.cli import main

    assert main(["data", "--list", "--root", str(tmp_path)]) == 0
    assert "horse2zebra" in capsys.readouterr().out
    # The real entry through a mirror env var: our small archive fails the real sha256, cleanly.
    server.files["/cyclegan/datasets/horse2zebra.zip"] = _horse2zebra_zip()
    monkeypatch.setenv("QSATTN_DATA_MIRROR", server.base)
    assert main(["data", "horse2zebra", "--root", str(tmp_path)]) == 1
    assert "sha256 mismatch" in capsys.readouterr().err
    assert server.log[0][0] == "/cyclegan/datasets/horse2zebra.zip"
    assert _no_partial_left(tmp_path, "horse2zebra") and not (tmp_path / "horse2zebra.zip").exists()


# --- downloads without Content-Length, two runs at once, permissions -----------------------------------

def test_a_download_without_content_length_cut_short_is_resumed_not_taken_as_complete(server, tmp_path):
    """The sha256 decides: the half received is not renamed into place; the resumed transfer is."""
    server.no_length, server.mode = True, "drop_once"
    entry = _h2z(server)
    target = ds.prepare(entry, tmp_path, progress=False)
    size = entry.sources[0].size
    assert [r for _, r in server.log] == [None, f"bytes={size // 2}-"]
    assert {s: ds.count_images(target / s) for s in H2Z_COUNTS} == H2Z_COUNTS


def test_a_download_without_content_length_that_keeps_failing_is_never_renamed(server, tmp_path):
    server.no_length, server.mode = True, "drop_always"
    body = _horse2zebra_zip()
    server.files["/h2z.zip"] = body
    with pytest.raises(DatasetError, match="interrupted") as err:
        ds.download(server.base + "/h2z.zip", tmp_path / "h2z.zip", progress=False,
                    complete=ds._completeness_check(ds.Source("h2z.zip", "", sha256=hashlib.sha256(body).hexdigest())))
    assert "not the whole file" in str(err.value)
    assert not (tmp_path / "h2z.zip").exists() and (tmp_path / "h2z.zip.part").exists()


@pytest.mark.parametrize("fmt", ["zip", "tar"])
def test_without_a_published_hash_the_archive_itself_proves_it_is_whole(tmp_path, fmt):
    members = {f"cityscapes_val/val{ab}/{i}_{ab}.jpg": _image_bytes(i) + bytes(700) for ab in "AB" for i in range(3)}
    body = _zip(members) if fmt == "zip" else _tar(members)
    whole = tmp_path / f"whole.{fmt}"
    whole.write_bytes(body)
    assert ds.archive_problem(whole) is None
    # cut in the middle of a member, and (tar) exactly at a member boundary, where no read error shows it
    cuts = [len(body) // 2]
    if fmt == "tar":
        with tarfile.open(whole) as tf:
            last = tf.getmembers()[-1]
        cuts.append(last.offset_data + -(-last.size // 512) * 512)  # after the last member, before the end blocks
    for cut in cuts:
        part = tmp_path / f"cut{cut}.{fmt}"
        part.write_bytes(body[:cut])
        assert ds.archive_problem(part), cut
    if fmt == "zip":  # a flipped byte inside a member's data: only the zip's CRC can tell (a tar has none)
        flipped = bytearray(body)
        flipped[body.index(_image_bytes(1)) + 40] ^= 0xFF
        (tmp_path / "flip.zip").write_bytes(bytes(flipped))
        assert "CRC" in ds.archive_problem(tmp_path / "flip.zip")


def test_without_hash_or_length_a_tar_cut_at_a_member_boundary_is_not_prepared(server, tmp_path):
    members = {f"cityscapes_val/val{ab}/{i}_{ab}.jpg": _image_bytes(i) for ab in "AB" for i in range(2)}
    body = _tar(members)
    with tarfile.open(fileobj=io.BytesIO(body)) as tf:
        last = tf.getmembers()[-1]
    cut = last.offset_data + -(-last.size // 512) * 512
    entry = _entry("cityscapes_val_for_cut", server, body[:cut], "/CUT/datasets/cityscapes_val_for_CUT.tar",
                   counts={"testA": 2, "testB": 2}, sha256=None)
    server.no_length = True
    with pytest.raises(DatasetError, match="not a good file|interrupted"):
        ds.prepare(entry, tmp_path, progress=False)
    assert not (tmp_path / "cityscapes_val_for_CUT.tar").exists()
    assert _no_partial_left(tmp_path, "cityscapes_val_for_cut")


PREPARE = """
import dataclasses, json, sys
from qsattn.data import datasets as ds
spec = json.loads(sys.argv[1])
real = ds.REGISTRY["horse2zebra"]
source = dataclasses.replace(real.sources[0], url=spec["url"], size=spec["size"], sha256=spec["sha256"])
entry = dataclasses.replace(real, sources=(source,), counts=spec["counts"])
ds.prepare(entry, spec["root"], progress=False)
"""


def test_two_data_runs_at_once_the_second_waits_and_finds_it_ready(server, tmp_path):
    body = _horse2zebra_zip()
    server.files["/h2z.zip"] = body
    server.delay = 0.05  # about 1 s for the whole archive: the second run starts while the first downloads
    spec = json.dumps(dict(url=server.base + "/h2z.zip", size=len(body), sha256=hashlib.sha256(body).hexdigest(),
                           counts=H2Z_COUNTS, root=str(tmp_path)))
    run = [sys.executable, "-c", PREPARE, spec]
    first = subprocess.Popen(run, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 60
    while not server.log and time.time() < deadline:  # the first is downloading
        time.sleep(0.02)
    second = subprocess.Popen(run, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    outs = [p.communicate(timeout=120) for p in (first, second)]
    assert [p.returncode for p in (first, second)] == [0, 0], outs
    assert "waiting for it to finish" in outs[1][1] and "already prepared" in outs[1][0]
    assert len(server.log) == 1, "the second run downloaded nothing"
    target = tmp_path / "horse2zebra"
    assert {s: ds.count_images(target / s) for s in H2Z_COUNTS} == H2Z_COUNTS
    assert not list(tmp_path.glob(".horse2zebra.partial-*"))


def test_a_prepared_dataset_is_readable_by_the_group(server, tmp_path):
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tf:
        for ab in "AB":
            for i in range(2):
                data = _image_bytes(i)
                info = tarfile.TarInfo(f"cityscapes_val/val{ab}/{i}_{ab}.jpg")
                info.size, info.mode = len(data), 0o600  # the archive's own modes: private
                tf.addfile(info, io.BytesIO(data))
    entry = _entry("cityscapes_val_for_cut", server, buf.getvalue(), "/CUT/datasets/cityscapes_val_for_CUT.tar",
                   counts={"testA": 2, "testB": 2})
    old = os.umask(0o022)
    try:
        target = ds.prepare(entry, tmp_path, progress=False)
    finally:
        os.umask(old)
    assert target.stat().st_mode & 0o777 == 0o755  # (mkdtemp made it 0700)
    assert {p.stat().st_mode & 0o777 for p in target.rglob("*") if p.is_dir()} == {0o755}
    assert {p.stat().st_mode & 0o777 for p in target.rglob("*") if p.is_file()} == {0o644}


def _textured_cityscapes(folder: Path) -> None:
    """Cityscapes-shaped zips whose photos are noise and whose label maps have two classes with a sharp edge,
    so that resize filters differ (the uniform images of _fake_cityscapes look the same under any filter)."""
    import numpy as np

    rng = np.random.default_rng(0)

    def png(arr) -> bytes:
        buf = io.BytesIO()
        Image.fromarray(arr).save(buf, format="PNG")
        return buf.getvalue()
    folder.mkdir(parents=True, exist_ok=True)
    gt, photos = {}, {}
    for split, ids in CITY_IDS.items():
        for key in ids:
            city = key.split("_")[0]
            colour = np.zeros((32, 64, 3), np.uint8)
            colour[:, :21] = (128, 64, 128)     # road
            colour[:, 21:] = (70, 70, 70)       # building
            ids_map = np.where(np.arange(64) < 21, 7, 11).astype(np.uint8)[None].repeat(32, 0)
            gt[f"gtFine/{split}/{city}/{key}_gtFine_color.png"] = png(colour)
            gt[f"gtFine/{split}/{city}/{key}_gtFine_labelIds.png"] = png(ids_map)
            photos[f"leftImg8bit/{split}/{city}/{key}_leftImg8bit.png"] = png(
                rng.integers(0, 256, (32, 64, 3), dtype=np.uint8))
    (folder / "gtFine_trainvaltest.zip").write_bytes(_zip(gt))
    (folder / "leftImg8bit_trainvaltest.zip").write_bytes(_zip(photos))


def test_cityscapes_default_filter_is_the_official_environments_nearest_and_others_are_selectable(tmp_path):
    """The official script resizes with Pillow's default filter, NEAREST in the Pillow 6.1.0 it pins: the
    default preparation equals that resize (then the same JPEG encoding) exactly; bicubic gives other pixels."""
    import numpy as np

    zips = tmp_path / "cityscapes_zips"
    _textured_cityscapes(zips)
    key = "frankfurt_000000_000294"
    with zipfile.ZipFile(zips / "leftImg8bit_trainvaltest.zip") as zf, \
            zf.open(f"leftImg8bit/val/frankfurt/{key}_leftImg8bit.png") as f, Image.open(f) as src:
        expected = io.BytesIO()
        src.convert("RGB").resize((256, 256), Image.NEAREST).save(expected, format="JPEG", quality=100, subsampling=0)
    target = ds.prepare(_city_entry(), tmp_path, progress=False)
    with Image.open(target / "testB" / f"{key}.jpg") as ours, Image.open(expected) as official:
        assert np.array_equal(np.asarray(ours), np.asarray(official))
    assert json.loads((target / ds.MARKER).read_text())["options"] == {"resample": "nearest"}
    other = ds.prepare(_city_entry(), tmp_path / "bicubic", zips_dir=zips, resample="bicubic", progress=False)
    with Image.open(target / "testB" / f"{key}.jpg") as a, Image.open(other / "testB" / f"{key}.jpg") as b:
        assert np.abs(np.asarray(a, np.int16) - np.asarray(b, np.int16)).mean() > 5


def test_the_filter_tool_measures_photos_and_blended_label_colours(tmp_path):
    import numpy as np

    _textured_cityscapes(tmp_path / "z")
    out = subprocess.run([sys.executable, str(Path(__file__).resolve().parents[1] / "tools" / "cityscapes_filters.py"),
                          "--zips", str(tmp_path / "z"), "--n", "2"], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    lines = {line.split(":")[0].strip(): line for line in out.stdout.splitlines()[1:]}
    assert set(lines) == {"labels bicubic vs nearest", "photo bicubic vs nearest"}
    off = float(lines["labels bicubic vs nearest"].split("off-palette pixels ")[1].rstrip("%"))
    assert off > 0  # bicubic blends road and building into colours of no class; nearest never does
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tools"))
    from cityscapes_filters import compare

    edge = Image.fromarray(np.where(np.arange(64) < 21, 0, 255).astype(np.uint8)[None, :, None].repeat(32, 0).repeat(3, 2))
    same = compare(edge, ["nearest", "nearest"], label=True)["nearest"]
    assert same == {"mean_abs": 0.0, "share_changed": 0.0, "share_off_palette": 0.0}
