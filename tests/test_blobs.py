"""Blob store contract, run against every backend the deployment may use.

The local folder always runs. S3 runs against moto's in-process server when
MEDSAM_TEST_S3=1, and must run in CI, where a missing moto fails the suite.
"""

from __future__ import annotations

import hashlib
import io
import os
import threading
import uuid
from datetime import datetime, timezone

import pytest

from portal.store import blobs
from portal.store.blobs import (
    BlobCorruptError,
    BlobInfo,
    BlobNotFoundError,
    BlobStore,
    BlobStoreUnavailableError,
    open_blob_store,
)
from tests.conftest import IN_CI, WANT_S3  # noqa: F401  (S3 fixtures live in conftest)


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


class GeneratedStream(io.RawIOBase):
    """A raw stream made up as it is read, so a test can tell if the store slurps it whole."""

    def __init__(self, total: int, seed: int = 0, fail_after: int | None = None) -> None:
        super().__init__()
        self.total = total
        self.seed = seed
        self.fail_after = fail_after
        self.pos = 0
        self.largest_read = 0
        self.hasher = hashlib.sha256()

    def readable(self) -> bool:
        return True

    def readinto(self, buffer) -> int:
        if self.fail_after is not None and self.pos >= self.fail_after:
            raise ConnectionResetError("client went away mid-upload")
        n = min(len(buffer), self.total - self.pos)
        self.largest_read = max(self.largest_read, len(buffer))
        if n <= 0:
            return 0
        block = bytes((self.seed + self.pos + i) % 251 for i in range(min(n, 251)))
        data = (block * (n // len(block) + 1))[:n]
        buffer[:n] = data
        self.hasher.update(data)
        self.pos += n
        return n


@pytest.fixture(
    params=[
        "local",
        pytest.param(
            "s3",
            marks=pytest.mark.skipif(not WANT_S3, reason="set MEDSAM_TEST_S3=1 to test the S3 backend (moto)"),
        ),
    ]
)
def store(request, tmp_path) -> BlobStore:
    if request.param == "local":
        return open_blob_store(str(tmp_path / "blobs"))
    endpoint, bucket = request.getfixturevalue("new_bucket")
    return open_blob_store(f"s3://{bucket}/blobs", s3_endpoint_url=endpoint)


def all_objects(store: BlobStore) -> list[str]:
    """Everything under the root, temp files included: what a crash could leave behind."""
    root = store.url.split("://", 1)[1]
    root = root if store.url.startswith("s3://") else "/" + root.lstrip("/")
    try:
        return sorted(store.fs.find(root))
    except FileNotFoundError:
        return []


def test_round_trip_bytes(store):
    data = b"\x00\x01 some pixels \xff" * 100
    digest = store.put_bytes(data)
    assert digest == sha(data)
    assert store.exists(digest)
    assert store.size(digest) == len(data)
    assert store.get_bytes(digest) == data
    with store.open(digest) as f:
        assert f.read() == data
    assert store.blob_path(digest).endswith(f"/{digest[:2]}/{digest[2:4]}/{digest}")


def test_empty_blob(store):
    digest = store.put_bytes(b"")
    assert store.get_bytes(digest) == b""
    assert store.size(digest) == 0


def test_put_stream_is_streamed(store):
    total = 5 * (1 << 20) + 12345
    stream = GeneratedStream(total)
    digest, size = store.put_stream(io.BufferedReader(stream, buffer_size=1 << 16), chunk_size=1 << 18)
    assert (digest, size) == (stream.hasher.hexdigest(), total)
    assert stream.largest_read <= 1 << 18, "the store read more than one chunk at a time"
    assert store.size(digest) == total
    hasher = hashlib.sha256()
    with store.open(digest) as f:
        while chunk := f.read(1 << 20):
            hasher.update(chunk)
    assert hasher.hexdigest() == digest


def test_multipart_sized_stream(store, monkeypatch):
    # Smallest parts S3 accepts, so an 11 MiB stream goes up as a 3-part upload.
    monkeypatch.setattr(blobs, "S3_PART_SIZE", 5 << 20)
    stream = GeneratedStream(11 << 20, seed=7)
    digest, size = store.put_stream(stream)
    assert size == 11 << 20 and digest == stream.hasher.hexdigest()
    assert store.size(digest) == size
    with store.open(digest) as f:
        assert hashlib.sha256(f.read()).hexdigest() == digest


def test_put_file(store, tmp_path):
    src = tmp_path / "upload.bin"
    src.write_bytes(os.urandom(300_000))
    digest, size = store.put_file(src)
    assert (digest, size) == (sha(src.read_bytes()), 300_000)
    assert store.get_bytes(digest) == src.read_bytes()


def test_dedupe(store):
    data = b"same bytes twice"
    first = store.put_bytes(data)
    second, size = store.put_stream(io.BytesIO(data))
    assert first == second and size == len(data)
    assert [b.digest for b in store.iter_blobs()] == [first]
    assert [p for p in all_objects(store) if p.endswith(first)] == [store.blob_path(first)]


def test_unknown_digest(store):
    missing = sha(b"never stored")
    assert not store.exists(missing)
    with pytest.raises(BlobNotFoundError, match=missing):
        store.get_bytes(missing)
    with pytest.raises(BlobNotFoundError, match=missing):
        store.open(missing)
    with pytest.raises(BlobNotFoundError, match=missing):
        store.size(missing)
    assert store.delete(missing) is False


def test_corrupt_blob(store):
    digest = store.put_bytes(b"the original mask")
    store.fs.pipe_file(store.blob_path(digest), b"something else entirely")
    with pytest.raises(BlobCorruptError, match=digest):
        store.get_bytes(digest)
    with store.open(digest) as f:
        with pytest.raises(BlobCorruptError):
            f.read()
    with store.open(digest) as f:
        with pytest.raises(BlobCorruptError):
            while f.read(4):
                pass


@pytest.mark.parametrize(
    "bad",
    [
        "../../etc/passwd",
        "A" * 64,
        sha(b"x").upper(),
        "abc123",
        sha(b"x") + "0",
        sha(b"x") + "\n",
        "../" + sha(b"x")[3:],
        "",
        None,
    ],
)
def test_invalid_digest(store, bad):
    for call in (store.get_bytes, store.open, store.exists, store.size, store.delete, store.blob_path):
        with pytest.raises(ValueError, match="SHA-256"):
            call(bad)


def test_delete(store):
    keep = store.put_bytes(b"keep")
    gone = store.put_bytes(b"gone")
    assert store.delete(gone) is True
    assert not store.exists(gone)
    assert store.delete(gone) is False
    assert store.exists(keep)
    with pytest.raises(BlobNotFoundError):
        store.get_bytes(gone)


def test_iter_blobs_lists_exactly_the_blobs(store):
    assert list(store.iter_blobs()) == []
    payloads = [os.urandom(n) for n in (1, 10, 1000)]
    digests = {store.put_bytes(p): len(p) for p in payloads}
    # Leftovers a killed process could leave, and a probe from check().
    store.fs.pipe_file(store.blob_path(sha(b"t")).rsplit("/", 3)[0] + "/.tmp/dead.part", b"half")
    store.check()
    before = datetime.now(timezone.utc)
    listed = list(store.iter_blobs())
    assert {b.digest: b.size for b in listed} == digests
    assert [b.digest for b in listed] == sorted(digests)
    for info in listed:
        assert isinstance(info, BlobInfo)
        assert info.modified.tzinfo is not None and info.modified.utcoffset().total_seconds() == 0
        assert abs((before - info.modified).total_seconds()) < 300


def test_crash_mid_write_leaves_nothing(store):
    stream = GeneratedStream(8 << 20, fail_after=3 << 18)
    with pytest.raises(ConnectionResetError):
        store.put_stream(stream, chunk_size=1 << 18)
    assert all_objects(store) == []
    assert list(store.iter_blobs()) == []


def test_concurrent_puts(store):
    shared = b"identical upload" * 1000
    errors: list[BaseException] = []
    results: dict[int, tuple[str, str]] = {}
    barrier = threading.Barrier(8)

    def worker(i: int) -> None:
        try:
            barrier.wait(timeout=10)
            own = f"thread {i} ".encode() * 5000
            results[i] = (store.put_bytes(shared), store.put_stream(io.BytesIO(own), chunk_size=4096)[0])
        except BaseException as exc:  # noqa: BLE001 - surfaced below
            errors.append(exc)

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert not errors, errors
    assert {r[0] for r in results.values()} == {sha(shared)}
    own_digests = {r[1] for r in results.values()}
    assert len(own_digests) == 8
    assert {b.digest for b in store.iter_blobs()} == own_digests | {sha(shared)}
    for d in own_digests | {sha(shared)}:
        store.get_bytes(d)


def test_check_passes_on_a_usable_store(store):
    store.check()
    assert all_objects(store) == []


def test_check_local_unwritable(tmp_path):
    root = tmp_path / "blobs"
    store = open_blob_store(str(root))
    root.rmdir()
    root.write_bytes(b"a file where the folder should be")
    with pytest.raises(BlobStoreUnavailableError, match="not usable"):
        store.check()


def test_local_folder_that_cannot_be_created(tmp_path):
    (tmp_path / "file").write_bytes(b"")
    with pytest.raises(BlobStoreUnavailableError, match="cannot create"):
        open_blob_store(str(tmp_path / "file" / "blobs"))


@pytest.mark.skipif(not WANT_S3, reason="set MEDSAM_TEST_S3=1 to test the S3 backend (moto)")
def test_check_s3_missing_bucket(moto_endpoint, s3_env):
    store = open_blob_store(f"s3://no-such-bucket-{uuid.uuid4().hex[:12]}/x", s3_endpoint_url=moto_endpoint)
    with pytest.raises(BlobStoreUnavailableError, match="s3://no-such-bucket"):
        store.check()


@pytest.mark.skipif(not WANT_S3, reason="set MEDSAM_TEST_S3=1 to test the S3 backend (moto)")
def test_check_s3_unreachable_endpoint(s3_env):
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    store = open_blob_store(
        "s3://bucket/x",
        s3_endpoint_url=f"http://127.0.0.1:{port}",
        s3_options={"config_kwargs": {"retries": {"max_attempts": 1}}, "retries": 1},
    )
    with pytest.raises(BlobStoreUnavailableError, match="not usable"):
        store.check()


def test_url_forms(tmp_path):
    plain = open_blob_store(str(tmp_path / "a"))
    assert (tmp_path / "a").is_dir() and plain.url == (tmp_path / "a").as_uri()
    as_url = open_blob_store((tmp_path / "b" / "nested").as_uri())
    assert (tmp_path / "b" / "nested").is_dir()
    digest = as_url.put_bytes(b"x")
    assert (tmp_path / "b" / "nested" / digest[:2] / digest[2:4] / digest).is_file()


def test_s3_url_needs_no_network(s3_env):
    store = open_blob_store("s3://bucket/some//prefix/", s3_endpoint_url="http://127.0.0.1:9")
    assert store.url == "s3://bucket/some/prefix"
    assert store.blob_path(sha(b"")).startswith("bucket/some/prefix/e3/b0/")


@pytest.mark.parametrize(
    "url",
    [
        "",
        "   ",
        "http://example.com/blobs",
        "gs://bucket/x",
        "s3://",
        "s3:///prefix",
        "s3://bucket/../x",
        "file://otherhost/data",
        "file://relative/path",
        "s3://bucket/x?versioning=1",
    ],
)
def test_bad_urls(url):
    with pytest.raises(ValueError) as info:
        open_blob_store(url)
    if url.strip() and not url.startswith("s3://bucket/.."):
        assert "s3://bucket" in str(info.value) and "file:///" in str(info.value)


def test_store_package_stays_free_of_web_and_queue_imports():
    import subprocess
    import sys

    code = (
        "import sys, portal.store.blobs; "
        "bad = [m for m in ('gradio', 'fastapi', 'celery') if m in sys.modules]; "
        "sys.exit(', '.join(bad) or None)"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert done.returncode == 0, f"portal.store.blobs pulled in: {done.stderr.strip()}"
