"""download_dataset against archives built here and served from 127.0.0.1 (Range support,
cut transfers, bad checksums, offline), plus safe extraction."""

from __future__ import annotations

import hashlib
import http.server
import io
import logging
import socket
import tarfile
import threading
import zipfile
from pathlib import Path

import numpy as np
import pytest

from fcnseg.data import download
from fcnseg.data.download import download_dataset, extract_archive
from fcnseg.errors import ConfigError, DataError


def _tar_gz(members: dict[str, bytes]) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tf:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tf.addfile(info, io.BytesIO(data))
    return buf.getvalue()


# incompressible payload so the archive is ~200 KB and a cut really is mid-way
PAYLOAD = np.random.default_rng(0).integers(0, 256, 200_000, dtype=np.uint8).tobytes()
ARCHIVE = _tar_gz({"toy/images/a.bin": PAYLOAD, "toy/list.txt": b"a\n"})
ARCHIVE_MD5 = hashlib.md5(ARCHIVE).hexdigest()


class _Server:
    """Serves `files` (path -> bytes). `cut_after`: close the first full-body response
    after that many bytes; `ranges`: honour Range requests."""

    def __init__(self, files: dict[str, bytes]):
        self.files = files
        self.cut_after: int | None = None
        self.ranges = True
        self.requests: list[tuple[str, str | None]] = []
        outer = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def log_message(self, *args):  # keep test output clean
                pass

            def do_GET(self):
                rng = self.headers.get("Range")
                outer.requests.append((self.path, rng))
                data = outer.files.get(self.path)
                if data is None:
                    self.send_error(404)
                    return
                start = 0
                if rng and outer.ranges:
                    start = int(rng.removeprefix("bytes=").split("-")[0])
                    if start >= len(data):
                        self.send_response(416)
                        self.send_header("Content-Range", f"bytes */{len(data)}")
                        self.send_header("Content-Length", "0")
                        self.end_headers()
                        return
                    self.send_response(206)
                    self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
                else:
                    self.send_response(200)
                body = data[start:]
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                if outer.cut_after is not None:
                    self.wfile.write(body[: outer.cut_after])
                    outer.cut_after = None
                    self.close_connection = True
                    self.wfile.flush()
                    self.connection.shutdown(socket.SHUT_RDWR)
                    return
                self.wfile.write(body)

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self.thread = threading.Thread(
            target=self.httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        )
        self.thread.start()

    def close(self):
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def server():
    s = _Server({"/toy.tar.gz": ARCHIVE, "/list.txt": b"2008_000002\n2008_000003\n"})
    yield s
    s.close()


def _declare(monkeypatch, url: str, md5: str = ARCHIVE_MD5, extra: list | None = None):
    files = [{"url": url, "filename": "toy.tar.gz", "md5": md5, "extract": True}]
    monkeypatch.setitem(
        download.RESOURCES, "toy", {"data_root": "toy", "files": files + (extra or [])}
    )


def test_download_verify_extract_then_noop(server, monkeypatch, tmp_path, caplog):
    _declare(monkeypatch, server.url + "/toy.tar.gz")
    caplog.set_level(logging.INFO, logger="fcnseg.data.download")
    out = download_dataset("toy", tmp_path, progress=False)
    assert out == (tmp_path / "toy").resolve()
    assert (out / "images" / "a.bin").read_bytes() == PAYLOAD
    assert (tmp_path / ".toy.tar.gz.done").read_text().strip() == ARCHIVE_MD5
    assert not (tmp_path / "toy.tar.gz.part").exists()
    assert len(server.requests) == 1
    # second call: nothing fetched, nothing extracted, and it says so
    (out / "images" / "a.bin").write_bytes(b"edited")
    caplog.clear()
    assert download_dataset("toy", tmp_path, progress=False) == out
    assert len(server.requests) == 1
    assert (out / "images" / "a.bin").read_bytes() == b"edited"
    assert "nothing to do" in caplog.text
    # force: fetched and extracted again
    download_dataset("toy", tmp_path, force=True, progress=False)
    assert len(server.requests) == 2
    assert (out / "images" / "a.bin").read_bytes() == PAYLOAD


def test_verified_archive_is_extracted_without_download(server, monkeypatch, tmp_path):
    _declare(monkeypatch, server.url + "/toy.tar.gz")
    (tmp_path / "toy.tar.gz").write_bytes(ARCHIVE)  # placed by hand
    download_dataset("toy", tmp_path, progress=False)
    assert server.requests == []
    assert (tmp_path / "toy" / "list.txt").read_bytes() == b"a\n"


def test_checksum_mismatch_deletes_and_names_url(server, monkeypatch, tmp_path):
    url = server.url + "/toy.tar.gz"
    _declare(monkeypatch, url, md5="0" * 32)
    with pytest.raises(DataError) as e:
        download_dataset("toy", tmp_path, progress=False)
    msg = str(e.value)
    assert url in msg and "MD5" in msg and ARCHIVE_MD5 in msg and "deleted" in msg
    assert sorted(p.name for p in tmp_path.iterdir()) == []


def test_cut_transfer_keeps_part_and_resumes(server, monkeypatch, tmp_path):
    _declare(monkeypatch, server.url + "/toy.tar.gz")
    server.cut_after = 70_000
    with pytest.raises(DataError, match="re-run to resume"):
        download_dataset("toy", tmp_path, progress=False)
    part = tmp_path / "toy.tar.gz.part"
    assert part.stat().st_size == 70_000
    assert not (tmp_path / "toy").exists()
    download_dataset("toy", tmp_path, progress=False)
    assert server.requests[-1] == ("/toy.tar.gz", "bytes=70000-")
    assert (tmp_path / "toy.tar.gz").read_bytes() == ARCHIVE
    assert not part.exists()
    assert (tmp_path / "toy" / "images" / "a.bin").read_bytes() == PAYLOAD


def test_corrupt_part_is_caught_by_checksum_after_resume(server, monkeypatch, tmp_path):
    _declare(monkeypatch, server.url + "/toy.tar.gz")
    (tmp_path / "toy.tar.gz.part").write_bytes(b"x" * 1000)  # wrong first bytes
    with pytest.raises(DataError, match="MD5"):
        download_dataset("toy", tmp_path, progress=False)
    assert not (tmp_path / "toy.tar.gz.part").exists()
    download_dataset("toy", tmp_path, progress=False)  # clean retry succeeds
    assert (tmp_path / "toy.tar.gz").read_bytes() == ARCHIVE


def test_server_without_ranges_restarts(server, monkeypatch, tmp_path):
    _declare(monkeypatch, server.url + "/toy.tar.gz")
    server.ranges = False
    (tmp_path / "toy.tar.gz.part").write_bytes(ARCHIVE[:5000])
    download_dataset("toy", tmp_path, progress=False)
    assert server.requests == [("/toy.tar.gz", "bytes=5000-")]  # asked, got 200, restarted
    assert (tmp_path / "toy.tar.gz").read_bytes() == ARCHIVE


def test_complete_part_with_416(server, monkeypatch, tmp_path):
    _declare(monkeypatch, server.url + "/toy.tar.gz")
    (tmp_path / "toy.tar.gz.part").write_bytes(ARCHIVE)
    download_dataset("toy", tmp_path, progress=False)
    assert (tmp_path / "toy.tar.gz").read_bytes() == ARCHIVE


def test_offline_names_url_and_manual_steps(monkeypatch, tmp_path):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    url = f"http://127.0.0.1:{port}/toy.tar.gz"  # nothing listens there
    _declare(monkeypatch, url)
    with pytest.raises(DataError) as e:
        download_dataset("toy", tmp_path, progress=False)
    msg = str(e.value)
    assert url in msg and "browser" in msg and str(tmp_path / "toy.tar.gz") in msg
    assert "fcnseg data download toy" in msg


def test_http_404_is_a_data_error(server, monkeypatch, tmp_path):
    url = server.url + "/missing.tar.gz"
    _declare(monkeypatch, url)
    with pytest.raises(DataError, match="HTTP 404") as e:
        download_dataset("toy", tmp_path, progress=False)
    assert url in str(e.value)


def test_file_url_and_plain_file_resource(server, monkeypatch, tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    (src / "toy.tar.gz").write_bytes(ARCHIVE)
    listing = b"2008_000002\n2008_000003\n"
    extra = [
        {
            "url": server.url + "/list.txt",
            "filename": "train_noval.txt",
            "md5": hashlib.md5(listing).hexdigest(),
            "extract": False,
            "dest": "toy/lists",
        }
    ]
    _declare(monkeypatch, (src / "toy.tar.gz").as_uri(), extra=extra)
    root = tmp_path / "root"
    download_dataset("toy", root, progress=False)
    assert (root / "toy" / "images" / "a.bin").read_bytes() == PAYLOAD
    assert (root / "toy" / "lists" / "train_noval.txt").read_bytes() == listing
    n = len(server.requests)
    download_dataset("toy", root, progress=False)
    assert len(server.requests) == n


def test_unknown_name():
    with pytest.raises(ConfigError, match="oxford-pet, sbd, voc"):
        download_dataset("camvid", "/nonexistent")


def test_declared_resources_are_well_formed():
    assert set(download.RESOURCES) == {"oxford-pet", "voc", "sbd"}
    for entry in download.RESOURCES.values():
        for res in entry["files"]:
            assert res["url"].startswith(("http://", "https://"))
            assert len(res["md5"]) == 32 and int(res["md5"], 16) >= 0
    pet = [r["md5"] for r in download.RESOURCES["oxford-pet"]["files"]]
    assert pet == ["5c4f3ee8e5d25df40f4fd59a7f44e54c", "95a8c909bbe2e81eed6a22bccdf3f68f"]


@pytest.mark.parametrize("name", ["../evil.txt", "/tmp/evil.txt", "a/../../evil.txt"])
def test_tar_escaping_member_rejected(tmp_path, name):
    archive = tmp_path / "bad.tar.gz"
    archive.write_bytes(_tar_gz({"ok.txt": b"ok", name: b"evil"}))
    root = tmp_path / "root"
    with pytest.raises(DataError, match="refusing"):
        extract_archive(archive, root)
    assert not (tmp_path / "evil.txt").exists()
    assert not (root / "ok.txt").exists()  # nothing written before the check


def test_tar_symlink_escape_rejected(tmp_path):
    archive = tmp_path / "link.tar"
    with tarfile.open(archive, "w") as tf:
        info = tarfile.TarInfo("data/link")
        info.type = tarfile.SYMTYPE
        info.linkname = "../../outside"
        tf.addfile(info)
    with pytest.raises(DataError, match="outside"):
        extract_archive(archive, tmp_path / "root")


def test_zip_extract_and_escape(tmp_path):
    good = tmp_path / "good.zip"
    with zipfile.ZipFile(good, "w") as zf:
        zf.writestr("d/x.txt", "x")
    extract_archive(good, tmp_path / "r")
    assert (tmp_path / "r" / "d" / "x.txt").read_text() == "x"
    bad = tmp_path / "bad.zip"
    with zipfile.ZipFile(bad, "w") as zf:
        zf.writestr("../evil.txt", "e")
    with pytest.raises(DataError, match="refusing"):
        extract_archive(bad, tmp_path / "r2")
    assert not (tmp_path / "evil.txt").exists()


def test_not_an_archive(tmp_path):
    p = tmp_path / "junk.tar"
    p.write_bytes(b"not an archive at all")
    with pytest.raises(DataError, match="not a readable"):
        extract_archive(p, tmp_path / "r")


def test_extract_accepts_str_paths(tmp_path):
    # Path objects and str both accepted
    archive = tmp_path / "a.tar.gz"
    archive.write_bytes(_tar_gz({"f.txt": b"1"}))
    extract_archive(str(archive), str(tmp_path / "out"))
    assert Path(tmp_path / "out" / "f.txt").read_bytes() == b"1"
