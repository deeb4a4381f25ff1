"""Every file the tool writes goes through here: one atomic writer, the checks on output paths, and
the sha256 of a file that model manifests and fingerprints record.

An investigator's folder holds evidence. So an output path is checked before any work: it must not
be a device, a FIFO or a folder (as root, replacing /dev/null with a regular file breaks the
machine), it must not be one of the inputs (the capture is evidence; a fingerprint is someone
else's work), two outputs must not share a file, and its folder must exist and be writable, so
that a long scan does not end in an error it could have given at once.

The writer creates its temporary file beside the destination (a rename within one file system is
atomic), gives it the mode any other program would (0666 less the user's umask), and renames it
into place only on commit; on any failure or interrupt it removes the temporary file.
"""

from __future__ import annotations

import hashlib
import os
import signal
import stat
import tempfile
import threading
from collections.abc import Iterable, Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any

_umask_lock = threading.Lock()
_umask: int | None = None
# Paths renamed into place by this process: an interrupt that lands after a commit must not be
# reported as "no output written".
committed: list[Path] = []


class OutputError(Exception):
    """An output path that must not be written, or a write that failed: one line naming the path."""


def file_mode() -> int:
    """The mode a new file gets from open(2) under this process's umask."""
    global _umask
    with _umask_lock:
        if _umask is None:
            # umask can only be read by setting it; done once, under a lock, and restored at once.
            _umask = os.umask(0o022)
            os.umask(_umask)
    return 0o666 & ~_umask


def _why(e: OSError) -> str:
    return e.strerror or str(e)


class _Named:
    """A file object whose write errors (a full disk) name the destination, not the temporary file."""

    def __init__(self, handle: IO[Any], path: Path):
        self._handle, self._path = handle, path

    def write(self, data: Any) -> int:
        try:
            return self._handle.write(data)
        except OSError as e:
            raise OutputError(f"cannot write {self._path}: {_why(e)}") from None

    def __getattr__(self, name: str) -> Any:
        return getattr(self._handle, name)


class AtomicFile:
    """A file being written beside `path`: renamed into place by `commit`, removed by `discard`.

    Errors name `path`, the file the user asked for, never the temporary file.
    """

    def __init__(self, path: str | os.PathLike, mode: str = "w", **open_kwargs: Any):
        self.path = Path(path)
        directory = self.path.parent
        try:
            fd, tmp = tempfile.mkstemp(prefix=f".{self.path.name}.", suffix=".tmp", dir=directory)
        except OSError as e:
            raise OutputError(f"cannot write {self.path}: {_why(e)}") from None
        self.tmp = Path(tmp)
        try:
            # mkstemp makes the file 0600; the result should read like any other file the user writes.
            os.fchmod(fd, file_mode())
            if "b" not in mode:
                open_kwargs.setdefault("encoding", "utf-8")
            self.handle: IO[Any] = _Named(os.fdopen(fd, mode, **open_kwargs), self.path)  # type: ignore[assignment]
        except BaseException:
            os.close(fd)
            self.tmp.unlink(missing_ok=True)
            raise
        self.done = False

    def finish(self) -> None:
        """Flush the content to disk; after this only the rename is left."""
        try:
            self.handle.flush()
            os.fsync(self.handle.fileno())
            self.handle.close()
        except OSError as e:
            raise OutputError(f"cannot write {self.path}: {_why(e)}") from None
        # checked before the work, and again here: a device made there meanwhile is not replaced either.
        try:
            mode = os.lstat(self.path).st_mode
        except FileNotFoundError:
            return
        except OSError as e:
            raise OutputError(f"cannot write {self.path}: {_why(e)}") from None
        if not (stat.S_ISREG(mode) or stat.S_ISLNK(mode)):
            raise OutputError(f"{self.path}: not a regular file; refusing to replace it")

    def rename(self) -> None:
        try:
            os.replace(self.tmp, self.path)
        except OSError as e:
            raise OutputError(f"cannot write {self.path}: {_why(e)}") from None
        self.done = True
        committed.append(self.path)

    def commit(self) -> None:
        commit_all([self])

    def discard(self) -> None:
        if not self.handle.closed:
            try:
                self.handle.close()
            except OSError:
                pass  # a full disk fails the close too; the file goes away all the same
        if not self.done:
            self.tmp.unlink(missing_ok=True)

    def __enter__(self) -> IO[Any]:
        return self.handle

    def __exit__(self, kind: object, *_: object) -> None:
        if kind is None:
            try:
                self.commit()
            finally:
                self.discard()
        else:
            self.discard()


def commit_all(files: Iterable[AtomicFile]) -> None:
    """Commit several outputs together: all of them, or (when one cannot be flushed) none.

    SIGINT, SIGTERM and SIGHUP wait until the renames are done: an interrupt never commits half a set.
    """
    files = list(files)
    for f in files:
        f.finish()
    blocked = {signal.SIGINT, signal.SIGTERM, signal.SIGHUP}
    main_thread = threading.current_thread() is threading.main_thread()
    old = signal.pthread_sigmask(signal.SIG_BLOCK, blocked) if main_thread else None
    try:
        for f in files:
            f.rename()
    finally:
        if old is not None:
            signal.pthread_sigmask(signal.SIG_SETMASK, old)


@contextmanager
def atomic_output(path: str | os.PathLike, mode: str = "w", **open_kwargs: Any) -> Iterator[IO[Any]]:
    """A file object whose content appears at `path` only when the block ends without an exception."""
    out = AtomicFile(path, mode, **open_kwargs)
    with out as handle:
        yield handle


def write_text_atomic(path: str | os.PathLike, text: str) -> None:
    """Write text to `path` atomically, with the user's umask."""
    with atomic_output(path) as f:
        f.write(text)


def sha256_file(path: str | os.PathLike) -> str:
    """The sha256 of a file's content, read a block at a time: what manifests and fingerprints record."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _identity(path: str) -> tuple[str, tuple[int, int] | None]:
    """The path with symlinks resolved, and the (device, inode) of what it names, if it exists."""
    try:
        st = os.stat(path)
        node = (st.st_dev, st.st_ino)
    except OSError:
        node = None
    return os.path.realpath(path), node


def check_outputs(outputs: Mapping[str, str | None], inputs: Mapping[str, Iterable[str]]) -> None:
    """Refuse, before any work, output paths that would destroy something or fail at the end.

    `outputs` maps an option (`--json`) to the path given (None or '-' when not asked for);
    `inputs` maps a description (`the capture`) to the input paths it stands for.
    Raises OutputError with one line naming the option and the path.
    """
    known: list[tuple[str, str, tuple[str, tuple[int, int] | None]]] = []
    for what, paths in inputs.items():
        for p in paths:
            known.append((what, p, _identity(p)))
    for option, path in outputs.items():
        if path is None or path == "-":
            continue
        if path == "":
            raise OutputError(f"{option}: an empty path")
        try:
            st = os.stat(path)
        except FileNotFoundError:
            st = None
        except OSError as e:
            raise OutputError(f"{option} {path}: {_why(e)}") from None
        if st is not None and not stat.S_ISREG(st.st_mode):
            kind = "a folder" if stat.S_ISDIR(st.st_mode) else "not a regular file"
            raise OutputError(f"{option} {path}: {kind}; refusing to replace it")
        real, node = _identity(path)
        for what, other, (other_real, other_node) in known:
            if real == other_real or (node is not None and node == other_node):
                alias = "" if other == path else f" ({other})"
                raise OutputError(f"{option} {path} is {what}{alias}; refusing to overwrite it")
        folder = Path(path).parent
        if not folder.is_dir():
            raise OutputError(f"{option} {path}: the folder {folder} does not exist")
        if not os.access(folder, os.W_OK | os.X_OK):
            raise OutputError(f"{option} {path}: the folder {folder} is not writable")
        known.append((f"the {option} output", path, (real, node)))
