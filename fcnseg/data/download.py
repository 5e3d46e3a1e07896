"""Download, verify and extract the public datasets: `download_dataset(name, root)`.

Every file is declared in `RESOURCES` with its URL and MD5 (the checksums torchvision
publishes for the same files). A download goes to `<file>.part` and resumes with an HTTP
`Range` request when the server honours it (else it restarts); the finished file is
verified before it is renamed into place, and a mismatch deletes it. Archives are
extracted member by member after checking that none escapes the root, and a marker file
`.<archive>.done` records a finished extraction, so a second call does nothing.
Only the standard library (urllib) is used for the transfer; tqdm draws the progress.
"""

from __future__ import annotations

import hashlib
import http.client
import logging
import os
import tarfile
import urllib.error
import urllib.request
import zipfile
from pathlib import Path, PurePosixPath

from fcnseg.errors import ConfigError, DataError

log = logging.getLogger(__name__)

TIMEOUT_S = 30.0
CHUNK = 1 << 20

# name -> dataset root (relative to the download root, what `build_dataset(root=...)`
# takes) and the files to fetch. `extract`: unpack into the download root; otherwise the
# file is stored as `dest/filename`.
RESOURCES: dict[str, dict] = {
    "oxford-pet": {
        "data_root": ".",
        "files": [
            {
                "url": "https://www.robots.ox.ac.uk/~vgg/data/pets/data/images.tar.gz",
                "filename": "images.tar.gz",
                "md5": "5c4f3ee8e5d25df40f4fd59a7f44e54c",
                "extract": True,
            },
            {
                "url": "https://www.robots.ox.ac.uk/~vgg/data/pets/data/annotations.tar.gz",
                "filename": "annotations.tar.gz",
                "md5": "95a8c909bbe2e81eed6a22bccdf3f68f",
                "extract": True,
            },
        ],
    },
    "voc": {
        "data_root": "VOCdevkit/VOC2012",
        "files": [
            {
                "url": "http://host.robots.ox.ac.uk/pascal/VOC/voc2012/VOCtrainval_11-May-2012.tar",
                "filename": "VOCtrainval_11-May-2012.tar",
                "md5": "6cd6e144f989b92b3379bac3b3de84fd",
                "extract": True,
            },
        ],
    },
    # No train_noval.txt (a personal homepage, often down): the sbd dataset's `train_aug`
    # split removes the VOC2012 val images itself.
    "sbd": {
        "data_root": "benchmark_RELEASE/dataset",
        "files": [
            {
                "url": "http://www.eecs.berkeley.edu/Research/Projects/CS/vision/grouping/semantic_contours/benchmark.tgz",
                "filename": "benchmark.tgz",
                "md5": "82b4d87ceb2ed10f6038a1cba92111cb",
                "extract": True,
            },
        ],
    },
}


def list_downloads() -> list[str]:
    """Names `download_dataset` accepts."""
    return sorted(RESOURCES)


def download_dataset(
    name: str,
    root: str | os.PathLike | None = None,
    *,
    force: bool = False,
    progress: bool = True,
) -> Path:
    """Fetch, verify and extract dataset `name` under `root` (default: where datasets look
    when given no root, `$FCNSEG_DATA/<name>`); return the dataset root to
    pass to `build_dataset(name, root=...)`.

    Idempotent: files already verified and extracted (marker present) are skipped, and
    the call logs that nothing was done. `force=True` downloads and extracts again.
    Raises DataError for network failures (with the manual steps), checksum mismatches
    and unsafe archives; ConfigError for an unknown name.
    """
    if name not in RESOURCES:
        raise ConfigError(
            f"no download for dataset {name!r}; downloadable: {', '.join(list_downloads())}"
            " (other datasets must be placed by hand: see `fcnseg data check`)"
        )
    entry = RESOURCES[name]
    if root is None:
        from fcnseg.data.base import default_root

        root = default_root(name)
    root = Path(root).expanduser()
    root.mkdir(parents=True, exist_ok=True)
    did_something = False
    for res in entry["files"]:
        did_something |= _fetch_resource(name, res, root, force=force, progress=progress)
    data_root = (root / entry["data_root"]).resolve()
    if not did_something:
        log.info(
            "%s: already downloaded and verified in %s; nothing to do "
            "(use --force to download again)",
            name,
            root,
        )
    else:
        log.info("%s: ready in %s", name, data_root)
    return data_root


def _fetch_resource(name: str, res: dict, root: Path, *, force: bool, progress: bool) -> bool:
    """Make one declared file present (and extracted). Returns True if anything was done."""
    url, md5 = res["url"], res["md5"]
    if res.get("extract"):
        archive = root / res["filename"]
        marker = root / f".{res['filename']}.done"
        if force:
            marker.unlink(missing_ok=True)
            archive.unlink(missing_ok=True)
        if marker.is_file() and marker.read_text().strip() == md5:
            log.info("%s: %s already extracted (marker %s)", name, res["filename"], marker)
            return False
        if archive.is_file() and _md5(archive) == md5:
            log.info("%s: %s already downloaded and verified", name, archive)
        else:
            if archive.is_file():
                log.warning("%s: %s has the wrong checksum; downloading it again", name, archive)
                archive.unlink()
            _download(name, url, archive, md5, progress=progress)
        log.info("%s: extracting %s into %s", name, archive.name, root)
        extract_archive(archive, root)
        marker.write_text(md5 + "\n")
        return True
    target = root / res.get("dest", ".") / res["filename"]
    if force:
        target.unlink(missing_ok=True)
    if target.is_file() and _md5(target) == md5:
        log.info("%s: %s already downloaded and verified", name, target)
        return False
    if target.is_file():
        target.unlink()
    target.parent.mkdir(parents=True, exist_ok=True)
    _download(name, url, target, md5, progress=progress)
    return True


def _md5(path: Path) -> str:
    h = hashlib.md5()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(CHUNK), b""):
            h.update(block)
    return h.hexdigest()


def _manual_steps(name: str, url: str, dest: Path) -> str:
    return (
        f"To do it by hand: download {url} with a browser, place the file at {dest} "
        f"(it is checked against its MD5), then re-run `fcnseg data download {name} "
        f"--root {dest.parent}`."
    )


def _download(name: str, url: str, dest: Path, md5: str, *, progress: bool) -> None:
    """Download `url` to `dest` through `dest.part`, resuming a previous partial file;
    verify the MD5 and rename. Raises DataError (keeping `.part`) when the transfer fails."""
    from tqdm import tqdm

    part = dest.with_name(dest.name + ".part")
    have = part.stat().st_size if part.is_file() else 0
    request = urllib.request.Request(url, headers={"User-Agent": "fcnseg"})
    if have:
        request.add_header("Range", f"bytes={have}-")
    try:
        response = urllib.request.urlopen(request, timeout=TIMEOUT_S)
    except urllib.error.HTTPError as e:
        if e.code == 416 and have:
            # the partial file may already be complete; the checksum decides
            _finish(name, url, part, dest, md5)
            return
        raise DataError(
            f"{name}: downloading {url} failed: HTTP {e.code} {e.reason}. "
            + _manual_steps(name, url, dest)
        ) from e
    except (urllib.error.URLError, OSError) as e:
        reason = getattr(e, "reason", e)
        raise DataError(
            f"{name}: cannot reach {url} ({reason}); are you offline? "
            + _manual_steps(name, url, dest)
        ) from e

    with response:
        status = getattr(response, "status", None) or response.getcode()
        length = response.headers.get("Content-Length")
        length = int(length) if length and length.isdigit() else None
        if have and status == 206 and _range_start(response.headers) == have:
            mode, start = "ab", have
            log.info("%s: resuming %s at %d bytes", name, dest.name, have)
        else:
            if have:
                log.info("%s: server does not resume; restarting %s", name, dest.name)
            mode, start = "wb", 0
        total = start + length if length is not None else None
        received = 0
        bar = tqdm(
            total=total,
            initial=start,
            unit="B",
            unit_scale=True,
            unit_divisor=1024,
            desc=dest.name,
            disable=not progress,
        )
        try:
            with open(part, mode) as f:
                while True:
                    block = response.read(CHUNK)
                    if not block:
                        break
                    f.write(block)
                    received += len(block)
                    bar.update(len(block))
        except (OSError, http.client.HTTPException) as e:  # incl. timeouts
            raise DataError(
                f"{name}: the transfer of {url} broke after {start + received} bytes ({e}); "
                f"the partial file {part} is kept: re-run to resume. "
                + _manual_steps(name, url, dest)
            ) from e
        finally:
            bar.close()
    if length is not None and received < length:
        raise DataError(
            f"{name}: the transfer of {url} was cut at {start + received} of {total} bytes; "
            f"the partial file {part} is kept: re-run to resume. " + _manual_steps(name, url, dest)
        )
    _finish(name, url, part, dest, md5)


def _range_start(headers) -> int | None:
    """First byte of a `Content-Range: bytes START-END/TOTAL` header, or None."""
    value = headers.get("Content-Range", "")
    try:
        unit, rest = value.split(" ", 1)
        return int(rest.split("-", 1)[0]) if unit == "bytes" else None
    except ValueError:
        return None


def _finish(name: str, url: str, part: Path, dest: Path, md5: str) -> None:
    got = _md5(part)
    if got != md5:
        part.unlink()
        raise DataError(
            f"{name}: {url} downloaded but its MD5 is {got}, expected {md5}; the bad file "
            "was deleted. Re-run to download it again; if it keeps failing, the server or "
            "a proxy is serving a different file. " + _manual_steps(name, url, dest)
        )
    os.replace(part, dest)


def _check_member(name: str, root: Path, archive: Path) -> Path:
    """Resolve an archive member name under `root`, rejecting escapes."""
    pure = PurePosixPath(name.replace("\\", "/"))
    if pure.is_absolute() or ".." in pure.parts or (pure.parts and ":" in pure.parts[0]):
        raise DataError(
            f"{archive}: unsafe member {name!r} (absolute or '..' path); "
            "refusing to extract this archive"
        )
    target = (root / pure).resolve()
    if not target.is_relative_to(root):
        raise DataError(
            f"{archive}: member {name!r} would be written outside {root}; "
            "refusing to extract this archive"
        )
    return target


def extract_archive(archive: str | os.PathLike, root: str | os.PathLike) -> None:
    """Extract a .tar/.tar.gz/.tgz/.zip `archive` into `root`, refusing any member whose
    path (or link target) escapes `root`, and device files. Nothing is written if a
    member is rejected."""
    archive, root = Path(archive), Path(root).resolve()
    root.mkdir(parents=True, exist_ok=True)
    if zipfile.is_zipfile(archive):
        with zipfile.ZipFile(archive) as zf:
            for info in zf.infolist():
                _check_member(info.filename, root, archive)
            zf.extractall(root)
        return
    try:
        tf = tarfile.open(archive)
    except tarfile.TarError as e:
        raise DataError(
            f"{archive}: not a readable tar or zip archive ({e}); delete it and re-run the download"
        ) from e
    with tf:
        members = tf.getmembers()
        for m in members:
            target = _check_member(m.name, root, archive)
            if m.issym() or m.islnk():
                base = target.parent if m.issym() else root
                if not (base / m.linkname).resolve().is_relative_to(root):
                    raise DataError(
                        f"{archive}: link {m.name!r} -> {m.linkname!r} points "
                        f"outside {root}; refusing to extract this archive"
                    )
            elif not (m.isfile() or m.isdir()):
                raise DataError(
                    f"{archive}: member {m.name!r} is a device or fifo; "
                    "refusing to extract this archive"
                )
        if hasattr(tarfile, "data_filter"):
            tf.extractall(root, members=members, filter="data")
        else:  # pragma: no cover - Python without PEP 706 filters; members checked above
            tf.extractall(root, members=members)
