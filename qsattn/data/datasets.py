"""Download, verify and prepare a benchmark dataset into ROOT/NAME/{trainA,trainB,testA,testB}.

    python -m qsattn data horse2zebra            # Horse -> Zebra (CycleGAN archive, 117 MB)
    python -m qsattn data cat2dog                # AFHQ v1 cat -> dog (StarGAN v2 archive)
    python -m qsattn data cityscapes             # labels -> photos, from the two zips you fetch by hand
    python -m qsattn data cityscapes_val_for_cut # the JPEG val set CUT's published Cityscapes numbers used
    python -m qsattn data --list                 # every dataset, its sources and whether it is ready

Why each step: the download resumes (HTTP Range) because the archives are large and the links slow;
the sha256 check catches a truncated or replaced file before it silently changes the benchmark;
preparation happens in a hidden folder inside ROOT and is moved into place with one `os.replace`, so a
crash never leaves a half-prepared dataset that a later run would train on; the image counts of every
split are checked against the published ones, and a `.prepared.json` marker makes re-running a no-op.

`--mirror URL` (or $QSATTN_DATA_MIRROR) swaps the scheme and host of every source URL for URL's,
keeping the path; the sha256 check still applies.

Two runs at once: each dataset has a lock (ROOT/.NAME.lock, an flock released when its holder dies);
the second run waits for the first and then finds the dataset ready. A server that sends no
Content-Length cannot say when a transfer was cut short, so such a download counts as complete only
once it passes the sha256 check, or, where no hash is published, the archive's own integrity check
(every zip member's CRC; a tar's every member and its end-of-archive blocks). The prepared folder gets
the permissions the user's umask gives new files (group-readable with the usual 022 or 002), whatever
the archive or the temporary folder said.
"""
from __future__ import annotations

import argparse
import contextlib
import fcntl
import glob
import http.client
import json
import os
import shutil
import socket
import sys
import tarfile
import tempfile
import time
import urllib.error
import urllib.parse
import urllib.request
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from qsattn.data.files import count_images, sha256_file
from qsattn.errors import UserError
MARKER = ".prepared.json"
MIRROR_ENV = "QSATTN_DATA_MIRROR"


class DatasetError(UserError, RuntimeError):
    """Something the user must fix (missing file, bad checksum, wrong counts); the message says what."""


@dataclass(frozen=True)
class Source:
    """One file a dataset is built from. `sha256=None` means no public hash is known: the computed one
    is printed with a warning instead of being checked. `manual` files are never downloaded (licence)."""
    filename: str
    url: str
    size: int | None = None
    sha256: str | None = None
    must_contain: tuple[str, ...] = ()  # folders the archive must hold, to catch a wrong or renamed file
    manual: bool = False
    note: str = ""  # shown to the user, e.g. an approximate size where the exact one is unknown


@dataclass(frozen=True)
class Dataset:
    """A registry entry. Tests replace `sources` and `counts` (dataclasses.replace) to point at a local
    server with small archives; the real entries keep the real archives' paths and layouts."""
    name: str
    description: str
    sources: tuple[Source, ...]
    counts: dict[str, int]  # output folder -> expected number of images after preparation
    prepare: Callable[["Dataset", dict[str, Path], Path, dict], None]
    layout: dict[str, str] = field(default_factory=dict)  # output folder -> glob of its folder in the archive
    citation: str = ""
    licence: str = ""


# --------------------------------------------------------------------------------------------------
# Preparation steps (one per kind of source)
# --------------------------------------------------------------------------------------------------

def _prepare_by_layout(entry: Dataset, archives: dict[str, Path], staging: Path, options: dict) -> None:
    """Extract the archive(s), then move each folder named in `entry.layout` to its output name."""
    raw = staging / ".raw"
    wanted = tuple(p.split("*")[0] for p in entry.layout.values())  # literal prefixes: skip e.g. AFHQ's wild/
    for path in archives.values():
        safe_extract(path, raw, only=wanted if all(wanted) else None)
    for out, pattern in entry.layout.items():
        found = [Path(p) for p in glob.glob(str(raw / pattern), recursive=True) if Path(p).is_dir()]
        if len(found) != 1:
            top = sorted(p.name for p in raw.iterdir()) if raw.exists() else []
            raise DatasetError(f"{entry.name}: expected exactly one folder matching '{pattern}' in the archive, "
                               f"found {len(found)} (top level holds: {top}). The archive's layout has changed "
                               f"or it is not the right file; check the source URL.")
        os.replace(found[0], staging / out)
    shutil.rmtree(raw)


CITYSCAPES_SIZE = (256, 256)


def _pil_filter(name: str):
    def get():
        from PIL import Image  # only Cityscapes needs Pillow here

        return getattr(Image.Resampling, name.upper())
    return get


# --cityscapes-resample: the filter of the 256x256 resize of labels and photos. nearest is what the published
# numbers' preparation used (see _prepare_cityscapes).
RESAMPLE_FILTERS = {name: _pil_filter(name) for name in ("nearest", "bicubic", "bilinear", "lanczos", "box")}
CITYSCAPES_DEFAULT_RESAMPLE = "nearest"


def _prepare_cityscapes(entry: Dataset, archives: dict[str, Path], staging: Path, options: dict) -> None:
    """Labels -> photos as CUT's datasets/prepare_cityscapes_dataset.py builds it, read straight from the
    zips (leftImg8bit is 11 GB; extracting it first would double the disk needed).

    Differences from the official script, on purpose: A = colour label maps and B = photos (the official
    script stores them the other way round and trains with --direction BtoA); files are named by their
    Cityscapes id (`frankfurt_000000_000294.jpg`) instead of a running index so that each test label map
    can be matched with its labelIds file. Like the official script: 256x256, the same filter for labels
    and photos, JPEG quality 100 without chroma subsampling; train -> trainA/trainB, val (500) ->
    testA/testB. The filter: the official script calls `resize((256, 256))` with Pillow's default
    (datasets/prepare_cityscapes_dataset.py:19), which is NEAREST in the Pillow 6.1.0 that CUT's
    environment.yml:12 pins (BICUBIC from Pillow 7.0 on); hence NEAREST by default, the others selectable
    with `--cityscapes-resample` (docs/datasets.md; tools/cityscapes_filters.py measures the difference).
    """
    resample = RESAMPLE_FILTERS[options["resample"]]()
    gt = zipfile.ZipFile(archives["gtFine_trainvaltest.zip"])
    photos = zipfile.ZipFile(archives["leftImg8bit_trainvaltest.zip"])
    with gt, photos:
        def index(zf: zipfile.ZipFile, top: str, split: str, suffix: str) -> dict[str, str]:
            out = {}
            for name in zf.namelist():
                parts = name.split("/")  # gtFine/train/aachen/aachen_000000_000019_gtFine_color.png
                if len(parts) == 4 and parts[0] == top and parts[1] == split and parts[3].endswith(suffix):
                    out[parts[3][: -len(suffix)]] = name
            return out

        def save(zf: zipfile.ZipFile, member: str, path: Path, filt, fmt: str) -> None:
            from PIL import Image

            with zf.open(member) as f, Image.open(f) as im:
                im = im.convert("RGB") if fmt == "JPEG" else im
                im = im.resize(CITYSCAPES_SIZE, filt)
                if fmt == "JPEG":
                    im.save(path, format="JPEG", quality=100, subsampling=0)
                else:
                    im.save(path, format="PNG")

        from tqdm import tqdm
        for split, phase in (("val", "test"), ("train", "train")):
            labels = index(gt, "gtFine", split, "_gtFine_color.png")
            label_ids = index(gt, "gtFine", split, "_gtFine_labelIds.png")
            images = index(photos, "leftImg8bit", split, "_leftImg8bit.png")
            if set(labels) != set(images):
                only = sorted(set(labels) ^ set(images))[:3]
                raise DatasetError(f"cityscapes: the {split} split has {len(labels)} colour label maps and "
                                   f"{len(images)} photos that do not pair up (e.g. {only}); the zips are "
                                   f"incomplete or from different releases: download both again.")
            dirs = {k: staging / f"{phase}{k}" for k in ("A", "B")}
            if phase == "test":
                # Eval needs the class-id maps of the test labels to score segmentation (mIoU / pixel
                # accuracy) of the photos generated from them. NEAREST: ids must never be blended.
                dirs["ids"] = staging / "testA_labelIds"
                missing = sorted(set(labels) - set(label_ids))[:3]
                if missing:
                    raise DatasetError(f"cityscapes: gtFine_trainvaltest.zip lacks *_gtFine_labelIds.png for "
                                       f"{missing}...; download it again.")
            for d in dirs.values():
                d.mkdir(parents=True)
            for key in tqdm(sorted(labels), desc=f"cityscapes {split}", unit="img", disable=None):
                save(gt, labels[key], dirs["A"] / f"{key}.jpg", resample, "JPEG")
                save(photos, images[key], dirs["B"] / f"{key}.jpg", resample, "JPEG")
                if "ids" in dirs:
                    save(gt, label_ids[key], dirs["ids"] / f"{key}.png", RESAMPLE_FILTERS["nearest"](), "PNG")


# --------------------------------------------------------------------------------------------------
# The registry
# --------------------------------------------------------------------------------------------------

CYCLEGAN_CITATION = ("Zhu, Park, Isola, Efros. Unpaired Image-to-Image Translation using Cycle-Consistent "
                     "Adversarial Networks. ICCV 2017.")
CITYSCAPES_CITATION = ("Cordts et al. The Cityscapes Dataset for Semantic Urban Scene Understanding. CVPR 2016. "
                       "Prepared as in Park, Efros, Zhang, Zhu. Contrastive Learning for Unpaired "
                       "Image-to-Image Translation (CUT). ECCV 2020.")
CITYSCAPES_LICENCE = ("Cityscapes licence: non-commercial research only; register at cityscapes-dataset.com, "
                      "no redistribution (hence fetched by hand).")
CITYSCAPES_PACKAGE = "https://www.cityscapes-dataset.com/file-handling/?packageID="  # log in first

REGISTRY: dict[str, Dataset] = {d.name: d for d in (
    Dataset(
        name="horse2zebra",
        description="Horse -> Zebra, ImageNet photos collected for CycleGAN",
        sources=(Source(
            filename="horse2zebra.zip",
            url="https://efrosgans.eecs.berkeley.edu/cyclegan/datasets/horse2zebra.zip",
            # size and sha256: tensorflow/datasets url_checksums/cycle_gan.txt (same file, older host
            # people.eecs.berkeley.edu/~taesung_park/CycleGAN/datasets/).
            size=116_867_962,
            sha256="a74d9d392eecca9966b51287a76ca126af473d9de4f3e8fc0e9cda08fa1730a1",
            must_contain=("horse2zebra/trainA/", "horse2zebra/testB/"),
        ),),
        counts={"trainA": 1067, "trainB": 1334, "testA": 120, "testB": 140},
        prepare=_prepare_by_layout,
        layout={s: f"horse2zebra/{s}" for s in ("trainA", "trainB", "testA", "testB")},
        citation=CYCLEGAN_CITATION,
        licence="ImageNet images (ImageNet terms of access: non-commercial research and education).",
    ),
    Dataset(
        name="cat2dog",
        description="AFHQ v1 cat -> dog (StarGAN v2 release); train -> train, val -> test, as CUT used it",
        sources=(Source(
            filename="afhq.zip",
            # clovaai/stargan-v2 download.sh `afhq-dataset` (dl=1: the file itself, not Dropbox's page).
            url="https://www.dropbox.com/s/t9l9o3vsx2jai3z/afhq.zip?dl=1",
            size=None,  # no published byte count found
            # sha256: LS4GAN/uvcgan2 scripts/download_dataset.sh (CHECKSUMS[afhq], same Dropbox link).
            sha256="7f63dcc14ef58c0e849b59091287e1844da97016073aac20403ae6c6132b950f",
            must_contain=("afhq/train/cat/", "afhq/train/dog/", "afhq/val/cat/", "afhq/val/dog/"),
        ),),
        counts={"trainA": 5153, "trainB": 4739, "testA": 500, "testB": 500},
        prepare=_prepare_by_layout,
        layout={"trainA": "afhq/train/cat", "trainB": "afhq/train/dog",
                "testA": "afhq/val/cat", "testB": "afhq/val/dog"},
        citation="Choi, Uh, Yoo, Ha. StarGAN v2: Diverse Image Synthesis for Multiple Domains. CVPR 2020.",
        licence="AFHQ: CC BY-NC 4.0 (NAVER Corp.); images from Flickr and Pixabay under permissive licences.",
    ),
    Dataset(
        name="cityscapes",
        description="Cityscapes labels -> photos at 256x256 (CUT's preparation); zips fetched by hand",
        sources=(
            # Direct links (they work after logging in); sizes as the download page lists them.
            Source(filename="gtFine_trainvaltest.zip", url=CITYSCAPES_PACKAGE + "1", size=None, sha256=None,
                   note="about 241 MB",
                   must_contain=("gtFine/train/", "gtFine/val/"), manual=True),
            Source(filename="leftImg8bit_trainvaltest.zip", url=CITYSCAPES_PACKAGE + "3", size=None,
                   sha256=None, note="about 11 GB",
                   must_contain=("leftImg8bit/train/", "leftImg8bit/val/"), manual=True),
        ),
        counts={"trainA": 2975, "trainB": 2975, "testA": 500, "testB": 500, "testA_labelIds": 500},
        prepare=_prepare_cityscapes,
        citation=CITYSCAPES_CITATION,
        licence=CITYSCAPES_LICENCE,
    ),
    Dataset(
        name="cityscapes_val_for_cut",
        description=("the resized, JPEG-compressed Cityscapes val set that CUT's released models were scored "
                     "on (CUT README); test split only: testA = label maps, testB = photos"),
        sources=(Source(
            filename="cityscapes_val_for_CUT.tar",
            url="http://efrosgans.eecs.berkeley.edu/CUT/datasets/cityscapes_val_for_CUT.tar",
            size=None, sha256=None,  # no public size or hash found
        ),),
        counts={"testA": 500, "testB": 500},
        prepare=_prepare_by_layout,
        # CUT reads it with --phase val --direction BtoA: valB holds the label maps, valA the photos. The
        # folder above them is not documented, hence the recursive glob.
        layout={"testA": "**/valB", "testB": "**/valA"},
        citation=CITYSCAPES_CITATION,
        licence=CITYSCAPES_LICENCE + " Redistributed by the CUT authors for evaluation.",
    ),
)}


# --------------------------------------------------------------------------------------------------
# Download, checksum, safe extraction
# --------------------------------------------------------------------------------------------------

def rewrite_url(url: str, mirror: str | None) -> str:
    """Replace scheme and host of `url` with the mirror's (a path on the mirror is kept as a prefix)."""
    if not mirror:
        return url
    src, dst = urllib.parse.urlsplit(url), urllib.parse.urlsplit(mirror)
    if not dst.scheme or not dst.netloc:
        raise DatasetError(f"--mirror must look like http://host[:port][/prefix], got '{mirror}'.")
    return urllib.parse.urlunsplit((dst.scheme, dst.netloc, dst.path.rstrip("/") + src.path, src.query, ""))


def download(url: str, dest: Path, *, attempts: int = 3, progress: bool = True,
             complete: Callable[[Path], str | None] | None = None) -> Path:
    """Fetch `url` into `dest`, through `dest.part`, resuming from the part's size with a Range request.

    A server that ignores Range (answers 200, not 206) gets a clean restart; an interrupted transfer is
    retried `attempts` times from where it stopped, and the `.part` is kept so a later run resumes too.
    Without a Content-Length the end of the stream proves nothing: `complete(part)` (None when the file is
    whole, else why not) decides whether the `.part` becomes `dest` or the transfer resumes.
    """
    from tqdm import tqdm

    part = dest.with_name(dest.name + ".part")
    for attempt in range(1, attempts + 1):
        have = part.stat().st_size if part.exists() else 0
        request = urllib.request.Request(url, headers={"User-Agent": "qsattn-harness"})
        if have:
            request.add_header("Range", f"bytes={have}-")
        try:
            with urllib.request.urlopen(request, timeout=60) as response:
                if have and response.status != 206:
                    print(f"{url}: the server ignored the resume request; starting over.", file=sys.stderr)
                    have = 0
                length = response.headers.get("Content-Length")
                total = have + int(length) if length is not None else None
                with open(part, "ab" if have else "wb") as out, tqdm(
                        total=total, initial=have, unit="B", unit_scale=True, desc=dest.name,
                        disable=None if progress else True) as bar:
                    while chunk := response.read(1 << 20):
                        out.write(chunk)
                        bar.update(len(chunk))
            got = part.stat().st_size
            if total is not None and got < total:
                raise http.client.IncompleteRead(b"", total - got)
            why = complete(part) if total is None and complete is not None else None
            if why:
                raise ConnectionError(f"the server sent no Content-Length and the {got} bytes received are not "
                                      f"the whole file ({why})")
            os.replace(part, dest)
            return dest
        except urllib.error.HTTPError as e:
            if e.code == 416 and have:  # the .part already holds the whole file, says the server
                why = complete(part) if complete is not None else None
                if why:
                    part.unlink()
                    raise DatasetError(f"downloading {url}: the server has nothing beyond the {have} bytes "
                                       f"received, and they are not a good file ({why}). The partial file was "
                                       f"deleted; run again to download it afresh.") from e
                os.replace(part, dest)
                return dest
            raise DatasetError(f"downloading {url} failed: HTTP {e.code} {e.reason}. Check the URL (or "
                               f"--mirror / ${MIRROR_ENV}) and try again.") from e
        except (OSError, http.client.HTTPException) as e:
            got = part.stat().st_size if part.exists() else 0
            if attempt == attempts:
                raise DatasetError(f"downloading {url} was interrupted after {got} bytes ({e!r}). The partial "
                                   f"file {part} is kept: run the same command again to resume.") from e
            print(f"{url}: transfer interrupted after {got} bytes ({e!r}); resuming (try {attempt + 1}/"
                  f"{attempts}).", file=sys.stderr)
            time.sleep(0.2 * attempt)
    raise AssertionError("unreachable")


def verify_sha256(path: Path, expected: str | None, *, delete_on_mismatch: bool = True) -> tuple[str, bool]:
    """Return (actual sha256, whether it was checked). A mismatch deletes the file (so the next run fetches
    it again) and raises; an unknown expected hash prints a warning with the computed one."""
    actual = sha256_file(path)
    if expected is None:
        print(f"WARNING: {path.name}: no published sha256 is known, so this file was NOT verified. "
              f"Its sha256 is {actual}; compare it with a colleague's copy.", file=sys.stderr)
        return actual, False
    if actual != expected.lower():
        action = "It was deleted; run again to download it afresh." if delete_on_mismatch else \
            "Replace it with a good copy."
        if delete_on_mismatch:
            path.unlink()
        raise DatasetError(f"{path.name}: sha256 mismatch (expected {expected}, got {actual}): the file is "
                           f"truncated, corrupted or not the published one. {action}")
    return actual, True


def archive_problem(path: Path) -> str | None:
    """Why `path` is not a whole zip or tar archive, or None: every zip member's CRC; every tar member's
    data read through (a compressed tar's own checksum included) and, for a plain tar, the two zero blocks
    that end it, which a transfer cut at a member boundary lacks."""
    try:
        if zipfile.is_zipfile(path):  # (a zip cut anywhere loses its central directory, at the end)
            with zipfile.ZipFile(path) as zf:
                bad = zf.testzip()
            return f"member {bad} fails its CRC check" if bad else None
        if not tarfile.is_tarfile(path):
            return "neither a zip nor a tar archive"
        try:
            tf, plain = tarfile.open(path, "r:"), True
        except tarfile.ReadError:
            tf, plain = tarfile.open(path, "r:*"), False
        with tf:
            for member in tf:
                if member.isfile():
                    data = tf.extractfile(member)
                    while data.read(1 << 20):
                        pass
            end = tf.offset
        if plain:
            with open(path, "rb") as f:
                f.seek(end)
                tail = f.read(2 * tarfile.BLOCKSIZE)
            if len(tail) < 2 * tarfile.BLOCKSIZE or tail.strip(b"\0"):
                return "the tar archive lacks its end-of-archive blocks: it was cut short"
        return None
    except (zipfile.BadZipFile, tarfile.TarError, EOFError, OSError, ValueError) as e:
        return f"{type(e).__name__}: {e}"


def _completeness_check(source: Source) -> Callable[[Path], str | None]:
    """How a download of `source` without Content-Length proves it is whole: its published sha256, else
    the archive's own integrity."""
    if source.sha256:
        return lambda part: None if sha256_file(part) == source.sha256.lower() else "sha256 differs from the published one"
    return archive_problem


def _check_member(name: str, archive: Path) -> None:
    p = name.replace("\\", "/")
    if p.startswith("/") or (len(p) > 1 and p[1] == ":") or ".." in p.split("/"):
        raise DatasetError(f"{archive.name}: refusing to extract '{name}' (absolute path or '..' escapes the "
                           f"target folder). The archive is not the published one; delete it.")


def safe_extract(archive: Path, dest: Path, only: tuple[str, ...] | None = None) -> None:
    """Extract a zip or tar after checking every member stays inside `dest` (no absolute paths, no '..',
    no links leading out), so a hostile or broken archive cannot write elsewhere. `only`: name prefixes
    to extract, to skip parts of an archive we do not use."""
    dest.mkdir(parents=True, exist_ok=True)
    keep = (lambda n: True) if only is None else (lambda n: n.startswith(only))
    try:
        if zipfile.is_zipfile(archive):
            with zipfile.ZipFile(archive) as zf:
                members = zf.infolist()
                for m in members:
                    _check_member(m.filename, archive)
                    if (m.external_attr >> 16) & 0o170000 == 0o120000:  # a symlink stored in the zip
                        raise DatasetError(f"{archive.name}: refusing symlink member '{m.filename}'; "
                                           f"the archive is not the published one.")
                zf.extractall(dest, [m for m in members if keep(m.filename)])
        elif tarfile.is_tarfile(archive):
            with tarfile.open(archive) as tf:
                members = tf.getmembers()
                for m in members:
                    _check_member(m.name, archive)
                    if m.issym() or m.islnk():
                        target = os.path.normpath(os.path.join(os.path.dirname(m.name), m.linkname)
                                                  if m.issym() else m.linkname)
                        if os.path.isabs(m.linkname) or target.startswith(".."):
                            raise DatasetError(f"{archive.name}: refusing link '{m.name}' -> '{m.linkname}', "
                                               f"which points outside the archive; it is not the published one.")
                    elif not (m.isfile() or m.isdir()):
                        raise DatasetError(f"{archive.name}: refusing special file '{m.name}'.")
                tf.extractall(dest, [m for m in members if keep(m.name)], filter="data")
        else:
            raise DatasetError(f"{archive} is neither a zip nor a tar archive (truncated or an HTML error "
                               f"page?). Delete it and run again.")
    except (zipfile.BadZipFile, tarfile.TarError, EOFError) as e:
        raise DatasetError(f"{archive} is damaged ({e}); delete it and run again.") from e


# --------------------------------------------------------------------------------------------------
# The whole flow
# --------------------------------------------------------------------------------------------------

def _check_counts(entry: Dataset, folder: Path) -> None:
    found = {split: count_images(folder / split) for split in entry.counts}
    wrong = {s: (found[s], n) for s, n in entry.counts.items() if found[s] != n}
    if wrong:
        detail = ", ".join(f"{s}: {got} images, expected {n}" for s, (got, n) in wrong.items())
        raise DatasetError(f"{entry.name}: wrong image counts ({detail}). The source is not the published "
                           f"release; nothing was kept under {folder.parent / entry.name}. Check the source "
                           f"file (and --mirror), delete it, and run again.")


def _manual_missing(entry: Dataset, zips_dir: Path) -> str:
    files = "\n".join(f"  - {s.filename} ({s.note}) from {s.url}" for s in entry.sources)
    return (f"{entry.name}: the licence forbids automatic download. Register and log in at "
            f"https://www.cityscapes-dataset.com/, then download these files yourself:\n{files}\n"
            f"and put them in {zips_dir}/ (or pass --cityscapes-zips DIR), then run this command again.")


def _gather_sources(entry: Dataset, root: Path, mirror: str | None, zips_dir: Path,
                    progress: bool) -> tuple[dict[str, Path], list[dict]]:
    """Bring every source file here and check it: sha256 (or a warning), and the folders it must hold."""
    paths: dict[str, Path] = {}
    records = []
    if any(s.manual for s in entry.sources):
        missing = [s for s in entry.sources if s.manual and not (zips_dir / s.filename).is_file()]
        if missing:
            raise DatasetError(_manual_missing(entry, zips_dir))
    for source in entry.sources:
        if source.manual:
            path = zips_dir / source.filename
        else:
            path = root / source.filename
            if not path.exists():
                url = rewrite_url(source.url, mirror)
                print(f"downloading {url}" + (f" ({source.size / 1e6:.0f} MB)" if source.size else ""))
                download(url, path, progress=progress, complete=_completeness_check(source))
        digest, verified = verify_sha256(path, source.sha256, delete_on_mismatch=not source.manual)
        try:
            _check_archive_contents(path, source)
        except DatasetError as e:
            if source.manual:
                raise
            path.unlink()  # a download we cannot use: fetch it afresh next time
            raise DatasetError(f"{e} The download was deleted; run again to fetch it afresh.") from None
        paths[source.filename] = path
        records.append({"file": source.filename, "sha256": digest, "sha256_verified": verified})
    return paths, records


def _check_archive_contents(path: Path, source: Source) -> None:
    if not source.must_contain:
        return
    try:
        if zipfile.is_zipfile(path):
            with zipfile.ZipFile(path) as zf:
                names = zf.namelist()
        else:
            with tarfile.open(path) as tf:
                names = tf.getnames()
    except (zipfile.BadZipFile, tarfile.TarError, EOFError, OSError) as e:
        raise DatasetError(f"{path} does not open as an archive ({e}): it is truncated or not "
                           f"{source.filename}. Replace it with a complete copy.") from e
    absent = [p for p in source.must_contain if not any(n.startswith(p) for n in names)]
    if absent:
        raise DatasetError(f"{path} does not look like {source.filename}: it has no {', '.join(absent)}. "
                           f"Check that you downloaded the right file.")


def _read_marker(folder: Path) -> dict | None:
    try:
        return json.loads((folder / MARKER).read_text())
    except (OSError, ValueError):
        return None


@contextlib.contextmanager
def dataset_lock(root: Path, name: str):
    """Hold ROOT/.NAME.lock; if another process holds it, say so and wait for it (an flock: released by
    the kernel when its holder dies, so a killed run never blocks the next one)."""
    root.mkdir(parents=True, exist_ok=True)
    fd = os.open(root / f".{name}.lock", os.O_RDWR | os.O_CREAT, 0o664)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 200, 0).decode(errors="replace").strip() or "another process"
            print(f"{name}: another `qsattn data {name}` ({holder}) is preparing it; waiting for it to finish.",
                  file=sys.stderr, flush=True)
            fcntl.flock(fd, fcntl.LOCK_EX)
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"pid {os.getpid()} on {socket.gethostname()} since {time.strftime('%H:%M:%S')}".encode(), 0)
        yield
    finally:
        os.close(fd)


def _make_readable(folder: Path) -> None:
    """Give the prepared folder the modes the umask gives new files (mkdtemp makes it 0700; archives
    may carry their own modes), so that a dataset on shared storage is readable by the group."""
    umask = os.umask(0)
    os.umask(umask)
    for top, dirs, files in os.walk(folder):
        os.chmod(top, 0o777 & ~umask)
        for name in files:
            os.chmod(os.path.join(top, name), 0o666 & ~umask)


def prepare(entry: Dataset, root: str | Path = "datasets", *, mirror: str | None = None,
            zips_dir: str | Path | None = None, resample: str = CITYSCAPES_DEFAULT_RESAMPLE, keep_archives: bool = False,
            progress: bool = True) -> Path:
    """Make ROOT/NAME hold the verified dataset and return its path; a no-op when it already does."""
    root = Path(root)
    target = root / entry.name
    zips_dir = Path(zips_dir) if zips_dir else root / "cityscapes_zips"
    options = {"resample": resample} if entry.prepare is _prepare_cityscapes else {}
    if _read_marker(target) is None:  # (a prepared dataset on read-only storage needs no lock)
        with dataset_lock(root, entry.name):
            return _prepare_locked(entry, root, target, zips_dir, options, mirror, keep_archives, progress)
    return _prepare_locked(entry, root, target, zips_dir, options, mirror, keep_archives, progress)


def _prepare_locked(entry: Dataset, root: Path, target: Path, zips_dir: Path, options: dict, mirror: str | None,
                    keep_archives: bool, progress: bool) -> Path:
    marker = _read_marker(target)
    if marker is not None:
        if marker.get("counts") != entry.counts or marker.get("options", {}) != options:
            raise DatasetError(f"{target} was prepared with other settings ({marker.get('options')}, counts "
                               f"{marker.get('counts')}). Delete it to prepare it again.")
        try:
            _check_counts(entry, target)
        except DatasetError as e:
            raise DatasetError(f"{target} has changed since it was prepared ({e}). Delete it and run "
                               f"again.") from None
        print(f"{entry.name}: already prepared and verified in {target}")
        return target
    if target.exists():
        raise DatasetError(f"{target} exists but was not prepared by this command (no {MARKER}). Move it "
                           f"away or delete it, then run again.")

    root.mkdir(parents=True, exist_ok=True)
    for stale in root.glob(f".{entry.name}.partial-*"):  # left by a killed run (we hold the lock: not a live one's)
        shutil.rmtree(stale, ignore_errors=True)
    archives, records = _gather_sources(entry, root, mirror, zips_dir, progress)

    staging = Path(tempfile.mkdtemp(prefix=f".{entry.name}.partial-", dir=root))
    try:
        print(f"{entry.name}: preparing in {staging}")
        entry.prepare(entry, archives, staging, options)
        _check_counts(entry, staging)
        (staging / MARKER).write_text(json.dumps({
            "name": entry.name, "counts": entry.counts, "sources": records, "options": options,
            "prepared_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        }, indent=2) + "\n")
        _make_readable(staging)
        os.replace(staging, target)
    finally:
        shutil.rmtree(staging, ignore_errors=True)

    if not keep_archives:
        for source in entry.sources:
            if not source.manual:
                (root / source.filename).unlink(missing_ok=True)
    print(f"{entry.name}: ready in {target} ({', '.join(f'{s} {n}' for s, n in entry.counts.items())})")
    for r in records:
        if not r["sha256_verified"]:
            print(f"WARNING: {r['file']} was not checked against a published sha256 (computed {r['sha256']}).",
                  file=sys.stderr)
    return target


# --------------------------------------------------------------------------------------------------
# CLI: python -m qsattn data NAME
# --------------------------------------------------------------------------------------------------

def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("name", nargs="?", choices=sorted(REGISTRY), metavar="NAME",
                        help=f"dataset to prepare: {', '.join(REGISTRY)}")
    parser.add_argument("--root", default="datasets", help="folder that holds the datasets (default: datasets)")
    parser.add_argument("--mirror", default=os.environ.get(MIRROR_ENV),
                        help=f"replace scheme+host of every source URL with this one, keeping the path "
                             f"(default: ${MIRROR_ENV}); checksums still apply")
    parser.add_argument("--cityscapes-zips", default=None, metavar="DIR",
                        help="folder with gtFine_trainvaltest.zip and leftImg8bit_trainvaltest.zip "
                             "(default: ROOT/cityscapes_zips)")
    parser.add_argument("--cityscapes-resample", choices=tuple(RESAMPLE_FILTERS), default=CITYSCAPES_DEFAULT_RESAMPLE,
                        help="filter for the 256x256 resize of labels and photos (default: nearest, the official "
                             "script's: Pillow's default in the Pillow 6.1.0 CUT pins; bicubic since Pillow 7)")
    parser.add_argument("--keep-archives", action="store_true",
                        help="keep downloaded archives after a successful preparation (default: delete)")
    parser.add_argument("--list", action="store_true", help="list the datasets, their sources and status")


def _print_list(root: Path) -> None:
    for entry in REGISTRY.values():
        ready = "ready" if _read_marker(root / entry.name) else "not prepared"
        print(f"{entry.name}  [{ready} in {root / entry.name}]\n  {entry.description}")
        for s in entry.sources:
            size = f"{s.size / 1e6:.0f} MB" if s.size else (s.note or "size unknown")
            sha = "sha256 known" if s.sha256 else "no published sha256"
            how = "fetch by hand from" if s.manual else "from"
            print(f"  {s.filename}: {how} {s.url} ({size}, {sha})")
        print(f"  counts: {', '.join(f'{k} {v}' for k, v in entry.counts.items())}")
        print(f"  cite: {entry.citation}\n  licence: {entry.licence}\n")


def run(args: argparse.Namespace) -> int:
    root = Path(args.root)
    if args.list:
        _print_list(root)
        return 0
    if not args.name:
        print(f"error: name a dataset ({', '.join(REGISTRY)}) or pass --list.", file=sys.stderr)
        return 2
    try:
        prepare(REGISTRY[args.name], root, mirror=args.mirror, zips_dir=args.cityscapes_zips,
                resample=args.cityscapes_resample, keep_archives=args.keep_archives)
    except DatasetError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    return 0


__all__ = ["DatasetError", "Source", "Dataset", "REGISTRY", "prepare", "download", "verify_sha256",
           "safe_extract", "rewrite_url", "count_images", "archive_problem", "dataset_lock", "add_arguments", "run"]
