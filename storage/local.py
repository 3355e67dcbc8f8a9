"""Local-folder backend: the embedded default (``file:///abs/dir`` or a plain path)."""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import re
import secrets
import stat
from collections.abc import Iterator, Mapping
from pathlib import Path

from storage.base import ObjectInfo, validate_metadata
from storage.errors import (
    InvalidKeyError,
    ObjectNotFoundError,
    ObjectTooLargeError,
    PreconditionFailedError,
    ReadOnlyStoreError,
    StoreAccessError,
)
from storage.keys import validate_folder, validate_key, validate_prefix

# The store's own files: the metadata folder and the lock file at the root, temp files in any
# folder. Only these exact names are reserved (never listed, refused as keys); any other name,
# ``.crs-x.png`` included, is an ordinary key, so no user file vanishes from a listing.
RESERVED_PREFIX = ".crs-"
META_DIR = ".crs-meta"
LOCK_FILE = ".crs-lock"
TMP_PREFIX = ".crs-tmp-"
_TMP_RE = re.compile(r"^\.crs-tmp-[0-9a-f]{16}$")
_META_SUFFIX = ".json"
_CHUNK = 1 << 20


def _reserved(name: str, top: bool) -> bool:
    return bool(_TMP_RE.match(name)) or (top and name in (META_DIR, LOCK_FILE))


class LocalStore:
    """Objects are files under ``root``; keys map to paths segment by segment.

    * Writes are atomic and durable: a temp file in the target's folder is written, fsynced,
      and ``os.replace``-d over the target, then the folder is fsynced.
    * No key can leave the root: keys are validated (:mod:`storage.keys`) and every path is
      resolved with ``realpath`` and checked to lie inside the root, so a symlink inside the
      root that points outside is refused too (:class:`InvalidKeyError`). Symlinked folders
      are not descended into by :meth:`list`.
    * User metadata lives in ``<root>/.crs-meta/<key>.json`` together with the ETag of the
      content it belongs to; :meth:`head` returns it only while that ETag still matches. Its
      path is checked like a data path (a symlinked ``.crs-meta`` is refused). :meth:`put`
      commits the metadata first and renames the data into place last, so a failed put never
      leaves new data behind, and checks the file system's name limits before writing.
    * ``list`` holds the names of one folder at a time (sorted, to give S3's order), so its
      memory grows with the largest single folder, not with the total number of keys.
    """

    def __init__(
        self,
        root: str | os.PathLike[str],
        *,
        read_only: bool = False,
        create: bool | None = None,
        durable: bool = True,
    ) -> None:
        path = Path(os.path.abspath(os.fspath(root)))
        if create is None:
            create = not read_only
        if not path.exists():
            if not create:
                raise StoreAccessError(
                    f"local store root {path} does not exist", operation="open", key=None
                )
            path.mkdir(parents=True, exist_ok=True)
        if not path.is_dir():
            raise StoreAccessError(
                f"local store root {path} is not a folder", operation="open", key=None
            )
        self._root = os.path.realpath(path)
        self._read_only = read_only
        self._durable = durable
        try:
            self._name_max = os.pathconf(self._root, "PC_NAME_MAX")
            self._path_max = os.pathconf(self._root, "PC_PATH_MAX")
        except (OSError, ValueError):
            self._name_max, self._path_max = 255, 4096

    def __repr__(self) -> str:
        return f"LocalStore({self._root!r}, read_only={self._read_only})"

    @property
    def uri(self) -> str:
        return Path(self._root).as_uri()

    @property
    def root(self) -> Path:
        return Path(self._root)

    @property
    def read_only(self) -> bool:
        return self._read_only

    # ---------------------------------------------------------------- paths
    def _inside(self, real: str) -> bool:
        return real == self._root or real.startswith(self._root + os.sep)

    def _path(self, key: str) -> str:
        """Validated key -> absolute path inside the root (symlinks resolved and checked)."""
        validate_key(key)
        parts = key.split("/")
        if any(_reserved(p, i == 0) for i, p in enumerate(parts)):
            raise InvalidKeyError(key, "names the local store's own files (reserved)")
        path = os.path.join(self._root, *parts)
        if not self._inside(os.path.realpath(path)):
            raise InvalidKeyError(key, "resolves outside the store root (symlink)")
        return path

    def _meta_path(self, key: str) -> str:
        """``<root>/.crs-meta/<key>.json``, resolved and checked to lie inside ``.crs-meta``
        (a planted symlink, at ``.crs-meta`` or below it, never redirects metadata writes)."""
        meta_root = os.path.join(self._root, META_DIR)
        if os.path.islink(meta_root):
            raise StoreAccessError(
                f"{meta_root} is a symlink: refusing to use it for metadata", operation="meta", key=key
            )
        path = os.path.join(meta_root, *key.split("/")) + _META_SUFFIX
        real = os.path.realpath(path)
        if not real.startswith(meta_root + os.sep):
            raise InvalidKeyError(key, "metadata path resolves outside the store (symlink)")
        return path

    def check_key(self, key: str) -> None:
        """:class:`InvalidKeyError` if ``put(key)`` would refuse the key (nothing written)."""
        self._path(key)
        self._check_names(key)

    def _check_names(self, key: str) -> None:
        """Refuse, before writing anything, a key the file system cannot hold (with its
        metadata file's ``.json`` suffix): each name <= NAME_MAX bytes, the path <= PATH_MAX."""
        parts = key.split("/")
        names = [*parts[:-1], parts[-1] + _META_SUFFIX]
        for name in names:
            size = len(os.fsencode(name))
            if size > self._name_max:
                raise InvalidKeyError(
                    key, f"a path segment is {size} bytes with the metadata suffix, over this file "
                    f"system's {self._name_max}"
                )
        longest = len(os.fsencode(os.path.join(self._root, META_DIR, key + _META_SUFFIX)))
        if longest >= self._path_max:
            raise InvalidKeyError(key, f"path of {longest} bytes, over this file system's {self._path_max}")

    # ---------------------------------------------------------------- listing
    def list(self, prefix: str = "") -> Iterator[str]:
        prefix = validate_prefix(prefix)
        folder, _, start = prefix.rpartition("/")
        key_prefix = folder + "/" if folder else ""
        directory = self._path(folder) if folder else self._root
        return self._walk(directory, key_prefix, start)

    def _sorted_names(self, directory: str, start: str, dirs_only: bool) -> list[str]:
        """Entry names of one folder in S3 key order: folders sort as ``name + '/'``."""
        names: list[str] = []
        try:
            with os.scandir(directory) as it:
                top = directory == self._root
                for entry in it:
                    name = entry.name
                    if not name.startswith(start) or _reserved(name, top):
                        continue
                    if entry.is_dir(follow_symlinks=False):
                        names.append(name + "/")
                    elif not dirs_only:
                        names.append(name)
        except (FileNotFoundError, NotADirectoryError):
            return []
        except OSError as exc:
            raise StoreAccessError(
                f"cannot list {directory} in {self.uri}: {exc.strerror}", operation="list", key=None
            ) from exc
        # str order is code-point order, which is UTF-8 byte order: S3's listing order.
        names.sort()
        return names

    def _walk(self, directory: str, key_prefix: str, start: str = "") -> Iterator[str]:
        for name in self._sorted_names(directory, start, dirs_only=False):
            if name.endswith("/"):
                yield from self._walk(os.path.join(directory, name[:-1]), key_prefix + name)
                continue
            path = os.path.join(directory, name)
            try:
                st = os.stat(path)  # follows a symlink: list regular files only
            except OSError:
                continue  # vanished or dangling link
            if not stat.S_ISREG(st.st_mode):
                continue
            if os.path.islink(path) and not self._inside(os.path.realpath(path)):
                continue
            yield key_prefix + name

    def list_dirs(self, prefix: str = "") -> Iterator[str]:
        prefix = validate_folder(prefix)
        directory = self._path(prefix[:-1]) if prefix else self._root
        for name in self._sorted_names(directory, "", dirs_only=True):
            yield prefix + name

    # ---------------------------------------------------------------- reads
    def get(self, key: str, max_bytes: int | None = None) -> bytes:
        path = self._path(key)
        try:
            with open(path, "rb") as f:
                st = os.fstat(f.fileno())
                if not stat.S_ISREG(st.st_mode):
                    raise ObjectNotFoundError(self.uri, key)
                if max_bytes is not None and st.st_size > max_bytes:
                    raise ObjectTooLargeError(self.uri, key, st.st_size, max_bytes)
                return f.read()
        except (FileNotFoundError, IsADirectoryError, NotADirectoryError) as exc:
            raise ObjectNotFoundError(self.uri, key) from exc
        except OSError as exc:
            raise self._access_error("get", key, exc) from exc

    def head(self, key: str) -> ObjectInfo:
        path = self._path(key)
        digest = hashlib.md5(usedforsecurity=False)
        size = 0
        try:
            with open(path, "rb") as f:
                if not stat.S_ISREG(os.fstat(f.fileno()).st_mode):
                    raise ObjectNotFoundError(self.uri, key)
                while chunk := f.read(_CHUNK):
                    digest.update(chunk)
                    size += len(chunk)
        except (FileNotFoundError, IsADirectoryError, NotADirectoryError) as exc:
            raise ObjectNotFoundError(self.uri, key) from exc
        except OSError as exc:
            raise self._access_error("head", key, exc) from exc
        etag = f'"{digest.hexdigest()}"'
        return ObjectInfo(size=size, etag=etag, metadata=self._read_meta(key, etag))

    def _read_meta(self, key: str, etag: str) -> dict[str, str]:
        try:
            with open(self._meta_path(key), "rb") as f:
                record = json.loads(f.read())
        except (OSError, ValueError):
            return {}
        if not isinstance(record, dict) or record.get("etag") != etag:
            return {}  # metadata of an older content: not this object's
        meta = record.get("metadata")
        return dict(meta) if isinstance(meta, dict) else {}

    def exists(self, key: str) -> bool:
        return os.path.isfile(self._path(key))

    # ---------------------------------------------------------------- writes
    def put(self, key: str, data: bytes, metadata: Mapping[str, str] | None = None) -> None:
        if self._read_only:
            raise ReadOnlyStoreError(f"{self.uri} is read-only: refusing to write {key!r}")
        path = self._path(key)
        meta = validate_metadata(metadata)
        if not isinstance(data, bytes | bytearray | memoryview):
            raise TypeError(f"data must be bytes, not {type(data).__name__}")
        self._check_names(key)
        meta_path = self._meta_path(key)
        etag = f'"{hashlib.md5(data, usedforsecurity=False).hexdigest()}"'
        record = json.dumps({"etag": etag, "metadata": meta}, sort_keys=True).encode()
        staged: list[str] = []
        try:
            # Both files are staged before either is committed; the metadata (which names the
            # new content's ETag, so it never describes the old data) goes first, the data last:
            # if anything fails, the key still holds its old content.
            data_tmp = self._stage(path, data)
            staged.append(data_tmp)
            meta_tmp = self._stage(meta_path, record)
            staged.append(meta_tmp)
            self._commit(meta_tmp, meta_path)
            staged.remove(meta_tmp)
            self._commit(data_tmp, path)
            staged.remove(data_tmp)
        except OSError as exc:
            raise self._access_error("put", key, exc) from exc
        finally:
            for tmp in staged:
                with contextlib.suppress(OSError):
                    os.unlink(tmp)

    def put_if(self, key: str, data: bytes, *, if_match: str | None) -> str:
        """Conditional put (the run lease): write only if the object's current ETag is
        ``if_match``, or, with ``if_match=None``, only if it does not exist; else
        :class:`PreconditionFailedError`. Returns the new ETag. Serialised across processes by ``flock`` on
        ``<root>/.crs-lock`` (every writer of a conditional key goes through here)."""
        if self._read_only:
            raise ReadOnlyStoreError(f"{self.uri} is read-only: refusing to write {key!r}")
        self._path(key)
        lock = os.open(os.path.join(self._root, LOCK_FILE), os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW, 0o644)
        try:
            fcntl.flock(lock, fcntl.LOCK_EX)
            try:
                current: str | None = self.head(key).etag
            except ObjectNotFoundError:
                current = None
            if current != if_match:
                raise PreconditionFailedError(
                    f"conditional put of {key!r} in {self.uri}: ETag is {current}, expected {if_match}",
                    operation="put", key=key, code="PreconditionFailed",
                )
            self.put(key, data)
        finally:
            os.close(lock)  # releases the flock
        return f'"{hashlib.md5(data, usedforsecurity=False).hexdigest()}"'

    def _stage(self, path: str, data: bytes | bytearray | memoryview) -> str:
        """Write ``data`` to a fresh temp file beside ``path`` (fsynced); return its path."""
        parent = os.path.dirname(path)
        os.makedirs(parent, exist_ok=True)
        tmp = os.path.join(parent, f"{TMP_PREFIX}{secrets.token_hex(8)}")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o666)
        try:
            with os.fdopen(fd, "wb") as f:
                f.write(data)
                f.flush()
                if self._durable:
                    os.fsync(f.fileno())
        except BaseException:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)
            raise
        return tmp

    def _commit(self, tmp: str, path: str) -> None:
        """Rename a staged file over ``path`` (atomic), then fsync the folder."""
        os.replace(tmp, path)
        if self._durable:
            dir_fd = os.open(os.path.dirname(path), os.O_RDONLY)
            try:
                os.fsync(dir_fd)
            finally:
                os.close(dir_fd)

    def delete(self, key: str) -> None:
        """Remove an object and its metadata (missing is fine); empty folders are left."""
        if self._read_only:
            raise ReadOnlyStoreError(f"{self.uri} is read-only: refusing to delete {key!r}")
        path = self._path(key)
        try:
            for p in (path, self._meta_path(key)):
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(p)
                parent = os.path.dirname(p)  # remove folders left empty, up to the root
                while parent != self._root and self._inside(parent):
                    try:
                        os.rmdir(parent)
                    except OSError:
                        break
                    parent = os.path.dirname(parent)
        except OSError as exc:
            raise self._access_error("delete", key, exc) from exc

    def _access_error(self, op: str, key: str, exc: OSError) -> StoreAccessError:
        why = exc.strerror or type(exc).__name__
        return StoreAccessError(
            f"local {op} of {key!r} in {self.uri} failed: {why}", operation=op, key=key
        )
