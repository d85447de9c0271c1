"""Writing and reading record shards (WebDataset ``.tar`` files in the schema of :mod:`datamodules.schema`).

Reading never stops on bad data: a truncated or unreadable shard, a record with malformed JSON, a missing or
unreadable frame, or metadata that breaks the schema is skipped, counted per reason in a :class:`SkipCounter`, and
logged once on the ``instructseg.data`` logger with the shard URL and the record key.

    with RecordWriter("out/train-%06d.tar", maxcount=500) as writer:
        writer.write("img0", meta, [frame], ext="jpg")
    for record in iter_records("out/train-*.tar"):
        image = record.frames[0]          # decoded on access
"""

from __future__ import annotations

import glob
import io
import json
import logging
import os
import re
import shlex
import shutil
import subprocess
import threading
import urllib.error
import urllib.request
from collections import Counter
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import webdataset as wds
from braceexpand import braceexpand
from PIL import Image
from webdataset.tariterators import tarfile_samples

from instructseg.processing import to_rgb_uint8

from .rle import decode_rle
from .schema import FRAME_EXTENSIONS, RecordError, validate_record

logger = logging.getLogger("instructseg.data")

_FRAME_NAME = re.compile(r"^(\d+)\.(" + "|".join(FRAME_EXTENSIONS) + r")$")
_REMOTE = re.compile(r"^(pipe:|[a-z][a-z0-9+.-]*://)")
URL_TIMEOUT = 10.0
"""Seconds a remote shard URL may take to answer the check of :func:`check_remote_urls`."""
_SCHEME_TOOLS = {"http": "curl", "https": "curl", "sftp": "curl", "ftps": "curl", "scp": "curl", "gs": "gsutil",
                 "ais": "ais", "hf": None, "htgs": None, "file": None}  # fmt: skip
"""URL schemes WebDataset opens (``webdataset.gopen``) and the program it runs for each."""
_CHECKED: set[str] = set()
_TAR_MAGIC = slice(257, 262), b"ustar"


def expand_urls(spec: str | Sequence[str]) -> list[str]:
    """Expand shard patterns into a list of URLs.

    Each pattern may use braces (``shards/refcoco-{000000..000127}.tar``) and shell globs (``shards/*.tar``). Glob
    matches are sorted. Remote URLs (``https://host/refcoco-{000000..000127}.tar``, ``pipe:curl -s URL``,
    ``gs://``, ...) are kept as written and checked once per process by :func:`check_remote_urls`.

    Args:
        spec: one pattern or a list of patterns.

    Returns:
        The URLs, in pattern order.

    Raises:
        FileNotFoundError: when a pattern matches nothing, names local files that do not exist, or names remote
            shards that cannot be read (see :func:`check_remote_urls`).
    """
    patterns = [spec] if isinstance(spec, str) else list(spec)
    if not patterns:
        raise FileNotFoundError("no shard pattern given (empty list).")
    urls: list[str] = []
    for pattern in patterns:
        matched, missing, remote = [], [], []
        for item in braceexpand(pattern):
            if _REMOTE.match(item):
                remote.append(item)
                matched.append(item)
            elif glob.has_magic(item):
                matched.extend(sorted(glob.glob(os.path.expanduser(item))))
            elif os.path.exists(os.path.expanduser(item)):
                matched.append(os.path.expanduser(item))
            else:
                missing.append(item)
        if missing:
            raise FileNotFoundError(f"shard pattern {pattern!r}: {len(missing)} file(s) missing, e.g. {missing[0]!r}.")
        if not matched:
            raise FileNotFoundError(f"shard pattern {pattern!r} matches no files.")
        check_remote_urls(remote)
        urls.extend(matched)
    return urls


def check_remote_urls(urls: Sequence[str], timeout: float = URL_TIMEOUT) -> None:
    """Make sure remote shard URLs can be read before any work starts (each URL is checked once per process).

    * ``http(s)://``: every URL answers a ``HEAD`` request (or a 1-byte ``GET`` where ``HEAD`` is refused) with a
      success status within ``timeout`` seconds (requests run 16 at a time), and ``curl``, which WebDataset reads
      them with, is installed;
    * ``pipe:CMD``: every command's program exists, and the first command writes a tar header within ``timeout``;
    * ``gs://``, ``ais://``, ``sftp://`` ...: the program WebDataset runs for the scheme is installed;
    * any other scheme (e.g. ``s3://``, which WebDataset does not open) is refused with the ``pipe:`` to use.

    Raises:
        FileNotFoundError: naming the first bad URL, why, and how many of the URLs failed.
    """
    given = list(dict.fromkeys(urls))
    todo = [url for url in given if url not in _CHECKED]
    if not todo:
        return
    pipes = [url for url in todo if url.startswith("pipe:")]
    failures = [(url, why) for url in todo if (why := _scheme_problem(url))]
    if pipes and not failures:
        failures += [(pipes[0], why)] if (why := _pipe_problem(pipes[0], timeout)) else []
    web = [url for url in todo if url.split("://", 1)[0] in ("http", "https")]
    if web and not failures:
        with ThreadPoolExecutor(max_workers=16) as pool:
            problems = pool.map(lambda url: _http_problem(url, timeout), web)
            failures += [(url, why) for url, why in zip(web, problems) if why]
    if failures:
        url, why = failures[0]
        raise FileNotFoundError(
            f"shard URL {url!r} cannot be read: {why} ({len(failures)} of {len(given)} remote shard URL(s) failed the "
            "check; fix the address or the server, or use local shards)."
        )
    _CHECKED.update(todo)


def _scheme_problem(url: str) -> str | None:
    """Why WebDataset cannot open ``url``'s scheme here (unknown scheme, missing program), or ``None``."""
    if url.startswith("pipe:"):
        try:
            words = shlex.split(url[len("pipe:") :])
        except ValueError as exc:
            return f"the pipe command does not parse ({exc})"
        if not words:
            return "the pipe command is empty"
        return None if shutil.which(words[0]) else f"the pipe command's program {words[0]!r} is not installed"
    scheme = url.split("://", 1)[0]
    if scheme not in _SCHEME_TOOLS:
        return (
            f"WebDataset does not open {scheme}:// URLs; use a pipe, e.g. 'pipe:aws s3 cp {url} -', or one of "
            f"{sorted(_SCHEME_TOOLS)}"
        )
    tool = _SCHEME_TOOLS[scheme]
    return None if tool is None or shutil.which(tool) else f"WebDataset reads {scheme}:// with {tool!r}, not installed"


def _pipe_problem(url: str, timeout: float) -> str | None:
    """Why the command of a ``pipe:`` URL gives no tar data within ``timeout`` seconds, or ``None``."""
    proc = subprocess.Popen(url[len("pipe:") :], shell=True, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    reader = ThreadPoolExecutor(max_workers=1)
    try:
        head = reader.submit(proc.stdout.read, 512).result(timeout=timeout)
    except TimeoutError:
        return f"the command wrote nothing within {timeout:g} s"
    finally:
        proc.kill()
        proc.wait()
        reader.shutdown(wait=False)
    if head[_TAR_MAGIC[0]] == _TAR_MAGIC[1]:
        return None
    stderr = " ".join(proc.stderr.read().decode(errors="replace").split())[-300:]
    return f"the command wrote no tar data (exit status {proc.returncode}{'; ' + stderr if stderr else ''})"


def _http_problem(url: str, timeout: float) -> str | None:
    """Why ``url`` does not answer with a success status within ``timeout`` seconds, or ``None``."""
    for request in (
        urllib.request.Request(url, method="HEAD"),
        urllib.request.Request(url, headers={"Range": "bytes=0-0"}),
    ):
        try:
            with urllib.request.urlopen(request, timeout=timeout):
                return None
        except urllib.error.HTTPError as exc:
            if exc.code not in (405, 501) or request.method == "GET":
                return f"HTTP {exc.code} {exc.reason}"
        except (urllib.error.URLError, OSError, ValueError) as exc:
            return f"unreachable ({getattr(exc, 'reason', exc)})"
    return None


class SkipCounter:
    """Counts skipped data per reason and logs each skip.

    A counter belongs to the stream that reads the data, so it is local to the thread or DataLoader worker process
    that iterates it; :func:`default_skip_counter` gives a thread-local one.

    Attributes:
        totals: ``reason -> count`` since creation.
    """

    def __init__(self) -> None:
        self.totals: Counter[str] = Counter()
        self._recent: Counter[str] = Counter()

    def add(self, reason: str, url: str, key: str | None, message: str) -> None:
        """Count one skip and log it as a warning naming the shard URL and the record key."""
        self.totals[reason] += 1
        self._recent[reason] += 1
        logger.warning("skipped %s in %s (%s): %s", f"record {key!r}" if key else "data", url, reason, message)

    def pop_recent(self) -> dict[str, int]:
        """``reason -> count`` since the previous call (empty dict when nothing was skipped)."""
        recent = dict(self._recent)
        self._recent.clear()
        return recent

    def total(self) -> int:
        """Number of skips since creation."""
        return sum(self.totals.values())


_LOCAL = threading.local()


def default_skip_counter() -> SkipCounter:
    """The counter of the calling thread (each DataLoader worker process has its own)."""
    if not hasattr(_LOCAL, "counter"):
        _LOCAL.counter = SkipCounter()
    return _LOCAL.counter


def decode_frame(data: bytes, where: str) -> np.ndarray:
    """Decode encoded image bytes into ``(H, W, 3)`` uint8 RGB.

    Raises:
        RecordError: ``"bad_frame"`` when the bytes cannot be decoded.
    """
    try:
        with Image.open(io.BytesIO(data)) as image:
            image.load()
            return to_rgb_uint8(image)
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as exc:
        raise RecordError("bad_frame", f"{where}: cannot decode the frame ({exc}).") from None


def frame_size(data: bytes, where: str) -> tuple[int, int]:
    """``(H, W)`` from the image header only (cheap).

    Raises:
        RecordError: ``"bad_frame"`` when the header cannot be read.
    """
    try:
        with Image.open(io.BytesIO(data)) as image:
            return image.height, image.width
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as exc:
        raise RecordError("bad_frame", f"{where}: unreadable frame header ({exc}).") from None


class Frames(Sequence[np.ndarray]):
    """The frames of a record, each decoded to ``(H, W, 3)`` uint8 when indexed (no caching)."""

    def __init__(self, encoded: Sequence[bytes], where: str) -> None:
        self.encoded = list(encoded)
        self.where = where

    def __len__(self) -> int:
        return len(self.encoded)

    def __getitem__(self, index: int | slice) -> np.ndarray | list[np.ndarray]:
        if isinstance(index, slice):
            return [self[i] for i in range(*index.indices(len(self)))]
        return decode_frame(self.encoded[index], f"{self.where} frame {index}")


@dataclass
class Record:
    """One decoded record: validated metadata plus lazily decoded frames.

    Attributes:
        key: record key inside the shard.
        url: shard URL.
        meta: the ``<key>.json`` contents (validated; unknown keys kept).
        frames: ``n`` frames, each ``(H, W, 3)`` uint8 when indexed.
    """

    key: str
    url: str
    meta: dict[str, Any]
    frames: Frames = field(repr=False)

    @property
    def task(self) -> str:
        return self.meta["task"]

    @property
    def num_frames(self) -> int:
        return self.meta["frames"]

    @property
    def size(self) -> tuple[int, int]:
        """``(H, W)`` of every frame."""
        return self.meta["height"], self.meta["width"]

    @property
    def queries(self) -> list[dict[str, Any]]:
        return self.meta["queries"]

    @property
    def where(self) -> str:
        return f"{self.url}:{self.key}"

    def _decode(self, rle: dict[str, Any] | None, what: str) -> np.ndarray:
        if rle is None:
            return np.zeros(self.size, dtype=bool)
        try:
            return decode_rle(rle)
        except ValueError as exc:
            raise RecordError("bad_rle", f"{self.where}: {what}: {exc}") from None

    def object_mask(self, object_id: str, frame: int) -> np.ndarray:
        """``(H, W)`` bool mask of one object on one frame (all False where the object is absent)."""
        return self._decode(self.meta["objects"][object_id]["masks"][frame], f"object {object_id!r} frame {frame}")

    def target_mask(self, object_ids: Sequence[str], frame: int) -> np.ndarray:
        """``(H, W)`` bool union of the objects' masks on one frame."""
        target = np.zeros(self.size, dtype=bool)
        for object_id in object_ids:
            target |= self.object_mask(object_id, frame)
        return target

    def foreground_mask(self, frame: int) -> np.ndarray:
        """``(H, W)`` bool foreground for the robustness score R: the record's ``foreground`` RLE where it has one
        (ReVOS ``mask_dict_foreground.json``), else the union of all its objects."""
        foreground = self.meta.get("foreground")
        if foreground is not None:
            return self._decode(foreground[frame], f"foreground frame {frame}")
        return self.target_mask(list(self.meta["objects"]), frame)

    def ignore_mask(self, frame: int) -> np.ndarray:
        """``(H, W)`` bool region excluded from the loss on one frame (all False without ``ignore``)."""
        ignore = self.meta.get("ignore")
        return self._decode(None if ignore is None else ignore[frame], f"ignore frame {frame}")


def _parse_sample(sample: dict[str, Any], url: str, task: str | None) -> Record:
    """Turn one WebDataset sample (``{"__key__", "json", "000.jpg", ...}``) into a validated :class:`Record`."""
    key = sample["__key__"]
    where = f"{url}:{key}"
    if "json" not in sample:
        raise RecordError("missing_json", f"{where}: no {key}.json in the shard.")
    try:
        meta = json.loads(sample["json"])
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise RecordError("bad_json", f"{where}: malformed JSON ({exc}).") from None
    if isinstance(meta, dict) and task is not None:
        meta["task"] = task
    frames = sorted((int(m.group(1)), name) for name in sample if (m := _FRAME_NAME.match(name)))
    if [index for index, _ in frames] != list(range(len(frames))):
        raise RecordError("frame_count", f"{where}: frame files must be numbered 000 .. n-1, got {frames}.")
    validate_record(meta, len(frames), where)
    encoded = [sample[name] for _, name in frames]
    for index, data in enumerate(encoded):
        if frame_size(data, f"{where} frame {index}") != (meta["height"], meta["width"]):
            raise RecordError("frame_size", f"{where}: frame {index} is not {meta['height']}x{meta['width']}.")
    return Record(key=key, url=url, meta=meta, frames=Frames(encoded, where))


def _truncation(url: str) -> str | None:
    """Why a local uncompressed ``.tar`` looks truncated, or ``None``.

    Python's ``tarfile`` ends silently when a shard is cut at a header, so check the size (a multiple of 512 bytes)
    and the end-of-archive marker (two zero blocks) that every complete tar file has.
    """
    if not url.endswith(".tar") or not os.path.isfile(url):
        return None
    size = os.path.getsize(url)
    if size % 512:
        return f"size {size} is not a multiple of 512 bytes (truncated)"
    with open(url, "rb") as stream:
        stream.seek(max(0, size - 1024))
        if size < 1024 or stream.read(1024).strip(b"\0"):
            return "no end-of-archive marker (truncated)"
    return None


def shard_records(url: str, counter: SkipCounter | None = None, task: str | None = None) -> Iterator[Record]:
    """Records of one shard, skipping (and counting) bad data.

    Tar-level errors (truncated or unreadable shard, duplicate file names) go through WebDataset's ``handler`` hook
    and count once per shard as ``"bad_tar"``, as does a local ``.tar`` that lacks its end (a shard cut at a member
    boundary reads without error). A record cut short by them is counted under its own reason.

    Args:
        url: shard path or URL.
        counter: where skips are counted (default: :func:`default_skip_counter`).
        task: override the records' ``task`` (e.g. a shard set reused for another task).
    """
    counter = counter or default_skip_counter()
    errors: list[Exception] = []

    def handler(exn: Exception) -> bool:
        errors.append(exn)
        return True

    key = None
    for sample in tarfile_samples([{"url": url}], handler=handler):
        key = sample.get("__key__")
        try:
            yield _parse_sample(sample, url, task)
        except RecordError as exc:
            counter.add(exc.reason, url, key, exc.message)
    problem = repr(errors[0]) if errors else _truncation(url)
    if problem:
        counter.add("bad_tar", url, key, f"shard broken after record {key!r}: {problem}")


def iter_records(
    urls: str | Sequence[str], counter: SkipCounter | None = None, task: str | None = None
) -> Iterator[Record]:
    """Records of all shards in ``urls`` (patterns are expanded by :func:`expand_urls`), in order.

    Args:
        urls: shard pattern(s).
        counter: where skips are counted (default: :func:`default_skip_counter`).
        task: override the records' ``task``.
    """
    for url in expand_urls(urls):
        yield from shard_records(url, counter, task)


class RecordWriter:
    """Writes validated records into numbered shards through ``webdataset.ShardWriter``.

    Args:
        pattern: shard path with a ``%d``-style field, e.g. ``"out/train-%06d.tar"`` (parent folders are created).
        maxcount: most records per shard.
        maxsize: most bytes per shard (approximate).
        jpeg_quality: JPEG quality for frames written with ``ext="jpg"``.

    Attributes:
        shards: paths of the shards written so far.
    """

    def __init__(self, pattern: str, maxcount: int = 1000, maxsize: float = 1e9, jpeg_quality: int = 95) -> None:
        os.makedirs(os.path.dirname(pattern) or ".", exist_ok=True)
        self.shards: list[str] = []
        self.jpeg_quality = jpeg_quality
        self._writer = wds.ShardWriter(
            pattern, maxcount=maxcount, maxsize=maxsize, verbose=0, post=self.shards.append, mtime=0, encoder=False
        )

    def _encode(self, frame: np.ndarray | bytes, ext: str, where: str) -> bytes:
        if isinstance(frame, (bytes, bytearray)):
            return bytes(frame)
        array = np.asarray(frame)
        if array.dtype != np.uint8 or array.ndim != 3 or array.shape[2] != 3:
            raise ValueError(f"{where}: frames must be (H, W, 3) uint8 arrays or encoded bytes, got {array.shape}.")
        buffer = io.BytesIO()
        if ext == "png":
            Image.fromarray(array).save(buffer, format="PNG")
        else:
            Image.fromarray(array).save(buffer, format="JPEG", quality=self.jpeg_quality)
        return buffer.getvalue()

    def write(self, key: str, meta: dict[str, Any], frames: Sequence[np.ndarray | bytes], ext: str = "jpg") -> None:
        """Validate and write one record.

        Args:
            key: record key; must not contain ``.`` (WebDataset splits names at the first dot).
            meta: the record metadata (see :mod:`datamodules.schema`).
            frames: ``n`` frames, ``(H, W, 3)`` uint8 arrays or already encoded bytes.
            ext: ``"jpg"`` (JPEG, quality ``jpeg_quality``) or ``"png"`` (lossless).

        Raises:
            ValueError: for a bad key or extension, or frames that do not match ``meta``.
            RecordError: when ``meta`` breaks the schema.
        """
        if not key or "." in os.path.basename(key):
            raise ValueError(f"record key {key!r}: must be non-empty and contain no '.'.")
        if ext not in FRAME_EXTENSIONS:
            raise ValueError(f"ext: expected one of {FRAME_EXTENSIONS}, got {ext!r}.")
        validate_record(meta, len(frames), key)
        sample: dict[str, Any] = {"__key__": key, "json": json.dumps(meta).encode("utf-8")}
        for index, frame in enumerate(frames):
            data = self._encode(frame, ext, f"{key} frame {index}")
            if frame_size(data, f"{key} frame {index}") != (meta["height"], meta["width"]):
                raise ValueError(f"{key}: frame {index} is not {meta['height']}x{meta['width']}.")
            sample[f"{index:03d}.{ext}"] = data
        self._writer.write(sample)

    def close(self) -> None:
        """Finish the last shard."""
        self._writer.close()

    def __enter__(self) -> RecordWriter:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()
