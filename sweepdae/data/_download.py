"""Checksummed downloads into the sweepdae cache, only when the user allows them (SWEEPDAE_DOWNLOAD=1)."""

from __future__ import annotations

import hashlib
import os
import tarfile
import urllib.error
import urllib.request
from collections.abc import Mapping
from pathlib import Path

from sweepdae.errors import DatasetError

DOWNLOAD_ENV = "SWEEPDAE_DOWNLOAD"
_ALGORITHMS = ("md5", "sha256")
_CHUNK = 1 << 20


def downloads_allowed() -> bool:
    """True when $SWEEPDAE_DOWNLOAD is 1/true/yes: sweeps never touch the network unless asked to."""
    return os.environ.get(DOWNLOAD_ENV, "").strip().lower() in ("1", "true", "yes")


def _parse_checksum(checksum: str) -> tuple[str, str]:
    """'md5:<hex>' or 'sha256:<hex>' -> (algorithm, lower-case hex)."""
    algo, _, digest = checksum.partition(":")
    if algo not in _ALGORITHMS or not digest:
        raise ValueError(f"checksum must be 'md5:<hex>' or 'sha256:<hex>', got {checksum!r}")
    return algo, digest.lower()


def file_digest(path: Path, algo: str) -> str:
    """Hex digest of a file, read in 1 MiB chunks."""
    h = hashlib.new(algo)
    with path.open("rb") as f:
        for block in iter(lambda: f.read(_CHUNK), b""):
            h.update(block)
    return h.hexdigest()


def verify(path: Path, checksum: str) -> bool:
    """Whether the file exists and matches 'algo:hex'."""
    algo, want = _parse_checksum(checksum)
    return path.is_file() and file_digest(path, algo) == want


def fetch(url: str, target: Path, checksum: str, *, timeout: float = 60.0) -> Path:
    """Download `url` to `target` through a temporary file; a checksum mismatch deletes it and raises DatasetError."""
    algo, want = _parse_checksum(checksum)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_name(f"{target.name}.part{os.getpid()}")
    h = hashlib.new(algo)
    try:
        with urllib.request.urlopen(url, timeout=timeout) as resp, tmp.open("wb") as out:
            for block in iter(lambda: resp.read(_CHUNK), b""):
                h.update(block)
                out.write(block)
    except (urllib.error.URLError, OSError, ValueError) as e:
        tmp.unlink(missing_ok=True)
        raise DatasetError(f"download of {url} failed: {e}") from e
    got = h.hexdigest()
    if got != want:
        tmp.unlink(missing_ok=True)
        raise DatasetError(f"download of {url} failed its {algo} check (got {got}, expected {want}); "
                           "the file was discarded")
    os.replace(tmp, target)
    return target


def download_files(base_url: str, dest: Path, checksums: Mapping[str, str], *, timeout: float = 60.0) -> Path:
    """Fetch each `file name -> 'algo:hex'` from `base_url` into `dest`, skipping files already there and intact."""
    base = base_url if base_url.endswith("/") else base_url + "/"
    for fname, checksum in checksums.items():
        target = dest / fname
        if not verify(target, checksum):
            fetch(base + fname, target, checksum, timeout=timeout)
    return dest


def extract_tar(archive: Path, dest: Path) -> None:
    """Unpack a downloaded .tar.gz into `dest`, refusing members that would land outside it."""
    try:
        with tarfile.open(archive, "r:*") as tar:
            if hasattr(tarfile, "data_filter"):  # Python >= 3.10.12 / 3.11.4: the safe extraction filter
                tar.extractall(dest, filter="data")
            else:  # pragma: no cover - older interpreters
                root = dest.resolve()
                for member in tar.getmembers():
                    if not (dest / member.name).resolve().is_relative_to(root) or member.issym() or member.islnk():
                        raise DatasetError(f"{archive}: refusing to extract unsafe member {member.name!r}")
                tar.extractall(dest)
    except (tarfile.TarError, OSError, EOFError) as e:
        raise DatasetError(f"cannot unpack {archive}: {e}") from e

