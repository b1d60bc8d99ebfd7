"""One writer per output: an advisory ``fcntl.flock`` lock that every command writing a folder (or a
gallery file) takes before it writes anything, and that readers of shards consult.

The lock file is ``.NAME.lock`` *beside* the output ``NAME`` (in its parent folder), not inside it:
several commands build their output beside the target and swap it in (``build-tfrecords`` and
``merge --overwrite``, ``export``, ``board-files``, ``add-teacher``'s ``.NAME.partial``), and a lock
file inside the folder would leave with the old folder at the swap, letting a second writer in
between the swap and the end of the run. Beside the target, the same lock file covers the whole
story: plan, staging folder, swap, clean-up. The same rule serves files (``enroll``'s gallery:
``.gallery.json.lock``).

The kernel holds the lock for the open file, so a process that dies in any way (SIGKILL, out of
memory) releases it: its rerun takes the folder over at once. While held, the file records the
holder (pid, host, the machine's boot id, command line, start time) so that a refused writer says
who holds it and what to do; a clean release deletes the file. A record left by another machine
(a shared file system, where ``flock`` may not reach across hosts, or that host died) cannot be
checked from here: the writer is refused and told how to clear it (``--break-lock``, or deleting
the file), never silently taken over. A record of this machine whose process is gone (the kernel
released its lock, or the machine rebooted since) is taken over.

Readers never take the lock; :func:`live_writer` tells them, without disturbing a writer, whether
another process is writing a folder now (``tfrecord.load_metadata`` refuses such a shard set as
incomplete). Within one process the lock is re-entrant per path (a second ``flock`` on another
descriptor of the same file would refuse its own process): the demo's and the bench's steps take
the locks of their own sub-folders, and a nested call for a folder already held goes through.

Standard library only.
"""
import contextlib
import dataclasses
import datetime
import fcntl
import json
import os
import shlex
import socket
import sys
import time
from pathlib import Path
from typing import Dict, Iterator, Optional, Tuple, Union

from mobilefacenet_k210.errors import Mfk210Error

LOCK_SUFFIX = ".lock"
_BOOT_ID = Path("/proc/sys/kernel/random/boot_id")
# A writer meeting a reader's momentary shared probe retries; this bounds the retries (a process that
# holds a shared lock for longer is not one of ours, and the writer is refused naming the lock file).
_ATTEMPTS = 200
_RETRY_S = 0.01


class FolderLockError(Mfk210Error, RuntimeError):
    """The output's lock cannot be had: another run is writing it (or may be: a lock left by another
    machine), or the lock file cannot be made there."""


@dataclasses.dataclass(frozen=True)
class Holder:
    """Who holds a lock, as recorded in the lock file."""

    pid: int
    host: str
    boot_id: str
    command: str
    started: str

    @classmethod
    def of_this_process(cls) -> "Holder":
        """This process as a holder (the console script and ``python -m`` both shown as ``mfk210``)."""
        argv = list(sys.argv) or ["python"]
        if Path(argv[0]).name in ("__main__.py", "mfk210"):
            argv[0] = "mfk210"
        command = shlex.join(argv)
        return cls(os.getpid(), socket.gethostname(), _boot_id(), command[:300],
                   datetime.datetime.now().astimezone().isoformat(timespec="seconds"))

    @classmethod
    def parse(cls, text: str) -> Optional["Holder"]:
        """The holder recorded in ``text``; None for an empty or unreadable record."""
        try:
            data = json.loads(text)
            return cls(int(data["pid"]), str(data["host"]), str(data.get("boot_id", "")), str(data["command"]),
                       str(data["started"]))
        except (ValueError, TypeError, KeyError):
            return None

    def same_machine(self) -> bool:
        """Whether the holder ran on this machine's kernel or on this host before a reboot: then the kernel's
        lock is the truth (a record whose lock is free is a dead process's). Another host: unknowable here."""
        here = Holder.of_this_process()
        if self.boot_id and here.boot_id and self.boot_id == here.boot_id:
            return True
        return self.host == here.host

    def describe(self) -> str:
        """One phrase for messages: pid, host, command and start time."""
        return f"pid {self.pid} on host {self.host} (`{self.command}`, started {self.started})"


def _boot_id() -> str:
    try:
        return _BOOT_ID.read_text(encoding="ascii").strip()
    except OSError:
        return ""


def lock_path(target: Union[str, Path]) -> Path:
    """The lock file of ``target`` (a folder or a file): ``.NAME.lock`` beside it, symlinks resolved."""
    target = Path(target).resolve()
    if not target.name:
        raise FolderLockError(f"{target}: cannot lock the file system root; write into a folder inside it")
    return target.with_name(f".{target.name}{LOCK_SUFFIX}")


_break_lock = False
# lock file -> (descriptor, depth) of the locks this process holds
_HELD: Dict[Path, Tuple[int, int]] = {}


@contextlib.contextmanager
def breaking_locks(enabled: bool) -> Iterator[None]:
    """While the block runs, :func:`hold` breaks locks recorded by another machine (the CLI's ``--break-lock``)."""
    global _break_lock
    previous, _break_lock = _break_lock, bool(enabled)
    try:
        yield
    finally:
        _break_lock = previous


def _read_holder(fd: int) -> Optional[Holder]:
    return Holder.parse(os.pread(fd, 4096, 0).decode("utf-8", "replace"))


def _same_file(fd: int, path: Path) -> bool:
    """Whether ``path`` still names the file open as ``fd`` (a releasing holder deletes it)."""
    try:
        st = os.stat(path)
    except FileNotFoundError:
        return False
    mine = os.fstat(fd)
    return (st.st_dev, st.st_ino) == (mine.st_dev, mine.st_ino)


def _write_lock_held(fd: int) -> bool:
    """Whether another open file holds ``fd``'s file exclusively (a writer), tested with a shared probe."""
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    fcntl.flock(fd, fcntl.LOCK_UN)
    return False


def _refusal(target: Path, path: Path, holder: Optional[Holder]) -> FolderLockError:
    if holder is None:
        return FolderLockError(f"{target}: another process is writing it (its lock {path} is held, no holder "
                                 f"recorded yet); wait for it, or find it with `fuser {path}`")
    if holder.same_machine():
        return FolderLockError(f"{target}: another run is writing it: {holder.describe()}; wait for it to "
                                 f"finish, or stop pid {holder.pid}")
    return FolderLockError(f"{target}: another run is writing it: {holder.describe()}, not this machine; wait "
                             f"for it, or stop pid {holder.pid} on {holder.host}; if {holder.host} is down, rerun "
                             f"with --break-lock or delete {path}")


def _stale_foreign(target: Path, path: Path, holder: Holder) -> FolderLockError:
    return FolderLockError(f"{target}: its lock file {path} says {holder.describe()} is writing it, and this "
                             f"machine cannot tell whether that run still goes on (a lock on a shared file system); "
                             f"if it does not, rerun with --break-lock or delete {path}")


def _open(target: Path, path: Path) -> int:
    """``path`` opened for reading and writing, created (with its folder) if absent."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        return os.open(path, os.O_RDWR | os.O_CREAT, 0o666)
    except OSError as exc:
        blocker = next((p for p in (path.parent, *path.parent.parents) if p.exists()), path.parent)
        if not blocker.is_dir():
            raise FolderLockError(f"{target}: cannot write there: {blocker} is a file, not a folder; choose "
                                  "another output") from None
        raise FolderLockError(f"{target}: cannot write there: its lock file {path} cannot be made "
                              f"({exc.strerror or exc}); choose another output or fix the permissions of "
                              f"{path.parent}") from None


def _acquire(target: Path, path: Path, break_lock: bool) -> int:
    """Open, lock and claim ``path`` for this process; its descriptor. Refuses as :func:`hold` says."""
    for _ in range(_ATTEMPTS):
        fd = _open(target, path)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            if not _write_lock_held(fd):  # only readers' momentary probes: try again
                os.close(fd)
                time.sleep(_RETRY_S)
                continue
            holder = _read_holder(fd)
            os.close(fd)
            if break_lock and holder is not None and not holder.same_machine():
                print(f"--break-lock: removing {path} of {holder.describe()}", file=sys.stderr, flush=True)
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(path)
                continue
            raise _refusal(target, path, holder)
        if not _same_file(fd, path):  # its holder deleted it on release after we opened it: open the new one
            os.close(fd)
            continue
        previous = _read_holder(fd)
        if previous is not None and not previous.same_machine():
            if not break_lock:
                os.close(fd)
                raise _stale_foreign(target, path, previous)
            print(f"--break-lock: taking over {path} from {previous.describe()}", file=sys.stderr, flush=True)
        record = json.dumps(dataclasses.asdict(Holder.of_this_process()), sort_keys=True).encode("utf-8")
        os.ftruncate(fd, 0)
        os.pwrite(fd, record + b"\n", 0)
        return fd
    raise FolderLockError(f"{target}: could not take its lock {path}: another process keeps it locked shared; "
                            f"find it with `fuser {path}`")


@contextlib.contextmanager
def hold(target: Union[str, Path], break_lock: Optional[bool] = None) -> Iterator[Path]:
    """Hold the write lock of ``target`` (a folder or a file, existing or not) while the block runs.

    Raises :class:`FolderLockError` naming ``target``, the holder and what to do if another process
    holds it, or if the lock file records a holder on another machine (``break_lock``, default: the
    CLI's ``--break-lock``, takes such a lock over instead). Re-entrant within this process. Yields
    the lock file's path; on leaving the outermost block the file is deleted and the lock released.
    """
    target = Path(target)
    path = lock_path(target)
    if path in _HELD:
        fd, depth = _HELD[path]
        _HELD[path] = (fd, depth + 1)
    else:
        fd = _acquire(target, path, _break_lock if break_lock is None else break_lock)
        _HELD[path] = (fd, 1)
    try:
        yield path
    finally:
        fd, depth = _HELD[path]
        if depth > 1:
            _HELD[path] = (fd, depth - 1)
        else:
            del _HELD[path]
            if _same_file(fd, path):
                os.unlink(path)
            os.close(fd)


def live_writer(target: Union[str, Path]) -> Optional[str]:
    """Who is writing ``target`` now if another process holds its write lock (e.g. "pid 12 on host h
    (`mfk210 build-tfrecords raw out`, started ...)"), else None.

    For readers: a shared, non-blocking probe released at once, which never stands in a writer's way
    (a writer that meets it tries again). A lock held by this very process is not another writer.
    """
    try:
        path = lock_path(target)
    except FolderLockError:
        return None
    if path in _HELD:
        return None
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return None
    try:
        if not _write_lock_held(fd):
            return None
        holder = _read_holder(fd)
        return holder.describe() if holder else f"a process that holds {path}"
    finally:
        os.close(fd)
