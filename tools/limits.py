"""The limits of one sandboxed tool call (`Limits`) and the operating-system pieces the sandbox
(tools/sandbox.py) enforces them with: rlimits, a scrubbed environment, process-group
accounting read from /proc, and Linux namespaces for strict mode. Linux only, like the
sandbox (it forks)."""

from __future__ import annotations

import ctypes
import math
import os
import resource
import shutil
import signal
import tempfile
import threading
import time
from dataclasses import dataclass

STRICT_ENV = "TOOLCALL_RL_SANDBOX_STRICT"  # 1/true/yes: every isolated call runs in strict mode
KEEP_ENV = ("PATH", "LANG", "LANGUAGE", "LC_ALL", "LC_CTYPE", "TZ", "PYTHONHASHSEED", "PYTHONIOENCODING", "PYTHONUTF8")
DEFAULT_PATH = "/usr/local/bin:/usr/bin:/bin"

_CLONE_NEWNS, _CLONE_NEWUSER, _CLONE_NEWPID, _CLONE_NEWNET = 0x00020000, 0x10000000, 0x20000000, 0x40000000
_MS_NOSUID, _MS_NODEV, _MS_NOEXEC, _MS_REC, _MS_PRIVATE = 2, 4, 8, 1 << 14, 1 << 18
_libc = ctypes.CDLL(None, use_errno=True)  # loaded here, in the parent: dlopen after a fork can deadlock


@dataclass(frozen=True)
class Limits:
    """What one isolated call may use. memory_mb is address space on top of what the forked
    process maps already; max_processes counts the call's live processes, itself included;
    cpu_s is per process (RLIMIT_CPU), None: ceil(timeout) + 1."""

    memory_mb: int = 512
    max_processes: int = 16
    max_file_mb: int = 16  # largest file the tool may write (RLIMIT_FSIZE); the number of files is not capped
    max_result_chars: int = 20000  # longer results are cut, with a note saying so
    cpu_s: float | None = None
    strict: bool | None = None  # no network, own user/PID/mount namespaces; None: the env var STRICT_ENV decides
    keep_env: tuple[str, ...] = ()  # environment variables passed to the tool besides KEEP_ENV

    def __post_init__(self):
        for name in ("memory_mb", "max_processes", "max_file_mb", "max_result_chars"):
            if not isinstance(getattr(self, name), int) or getattr(self, name) < 1:
                raise ValueError(f"Limits.{name} must be a positive integer, got {getattr(self, name)!r}")
        if self.cpu_s is not None and not self.cpu_s > 0:
            raise ValueError(f"Limits.cpu_s must be positive or None (derived from the timeout), got {self.cpu_s!r}")

    def is_strict(self) -> bool:
        if self.strict is not None:
            return self.strict
        return os.environ.get(STRICT_ENV, "").strip().lower() in ("1", "true", "yes", "on")

    def cpu_seconds(self, timeout_s: float) -> int:
        return math.ceil(self.cpu_s if self.cpu_s is not None else math.ceil(timeout_s) + 1)


def cut(text: str, max_chars: int) -> str:
    """`text` within max_chars, with a note saying how much was dropped."""
    if len(text) <= max_chars:
        return text
    return text[:max_chars] + f"\n[result cut: {len(text):,} characters, showing the first {max_chars:,}]"


# --- accounting, in the parent -----------------------------------------------------------------
def _stat(pid: str) -> list[str] | None:
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            raw = f.read()
    except OSError:  # gone meanwhile
        return None
    return raw[raw.rfind(b")") + 2:].decode().split()  # after "pid (comm) ": state ppid pgrp ...


def group_members(pgids: set[int]) -> dict[int, list[int]]:
    """The live (not zombie) processes of each process group in `pgids`, from /proc."""
    found: dict[int, list[int]] = {g: [] for g in pgids}
    for pid in os.listdir("/proc"):
        if pid.isdigit() and (fields := _stat(pid)) and fields[0] not in "ZX" and int(fields[2]) in found:
            found[int(fields[2])].append(int(pid))
    return found


def user_tasks(uid: int) -> int:
    """Threads of the processes whose real uid is `uid`: what RLIMIT_NPROC counts."""
    total = 0
    for pid in os.listdir("/proc"):
        if not pid.isdigit():
            continue
        try:
            with open(f"/proc/{pid}/status") as f:
                lines = dict(line.split(":", 1) for line in f if ":" in line)
            if int(lines["Uid"].split()[0]) == uid:
                total += int(lines["Threads"])
        except (OSError, KeyError, ValueError):
            continue
    return total


def kill_group(pgid: int) -> None:
    """SIGKILL a call's process group. Callers keep the group leader unreaped until the last
    kill, so its pid, the group's id, cannot have been reused by an unrelated process."""
    try:
        os.killpg(pgid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass


def settle(leaders: set[int], wait_s: float = 2.0) -> None:
    """Kill the groups of these (unreaped) children, wait until no live process is left in
    them, then reap the children (one stuck in the kernel is reaped in the background)."""
    groups, give_up = set(leaders), time.monotonic() + wait_s
    while groups:
        for g in groups:  # again while members remain: a fork may have raced the kill
            kill_group(g)
        groups = {g for g, live in group_members(groups).items() if live}
        if groups and time.monotonic() > give_up:
            break
        time.sleep(0.005 if groups else 0)
    for pid in leaders:
        try:
            if os.waitpid(pid, os.WNOHANG)[0] == 0:
                threading.Thread(target=os.waitpid, args=(pid, 0), daemon=True).start()
        except ChildProcessError:
            pass


def _force(func, path, _exc) -> None:  # a tool may have made a directory unreadable
    try:
        os.chmod(os.path.dirname(path), 0o700)
        os.chmod(path, 0o700)
        func(path)
    except OSError:
        pass


def remove_scratch(path: str) -> None:
    shutil.rmtree(path, onerror=_force)
    shutil.rmtree(path, ignore_errors=True)


# --- in the child ------------------------------------------------------------------------------
def enter_scratch(scratch: str, keep_env: tuple[str, ...]) -> None:
    """Own session and process group (no terminal signals, one group to kill), stdin from
    /dev/null, the scratch dir as working dir, HOME and TMPDIR, and only allowlisted env vars."""
    os.setsid()
    null = os.open(os.devnull, os.O_RDONLY)
    os.dup2(null, 0)
    os.close(null)
    os.chdir(scratch)
    kept = {k: os.environ[k] for k in (*KEEP_ENV, *keep_env) if k in os.environ}
    os.environ.clear()  # putenv/unsetenv too: subprocesses see the same
    os.environ.update({"PATH": DEFAULT_PATH, **kept, "HOME": scratch, "TMPDIR": scratch})
    tempfile.tempdir = scratch  # tempfile caches the parent's choice


def set_rlimits(limits: Limits, timeout_s: float, nproc: int | None) -> None:
    """Address space, file size, CPU time and (when nproc is given) the per-user task count."""
    with open("/proc/self/statm") as f:  # the cap is on top of what the fork maps already (GBs for a trainer)
        mapped = int(f.read().split()[0]) * resource.getpagesize()
    for kind, soft in ((resource.RLIMIT_AS, mapped + limits.memory_mb * 2**20),
                       (resource.RLIMIT_FSIZE, limits.max_file_mb * 2**20),
                       (resource.RLIMIT_CPU, limits.cpu_seconds(timeout_s)),
                       (resource.RLIMIT_NPROC, nproc)):
        if soft is None:
            continue
        hard = resource.getrlimit(kind)[1]
        unlimited = hard == resource.RLIM_INFINITY
        soft = soft if unlimited else min(soft, hard)
        grace = kind == resource.RLIMIT_CPU and (unlimited or soft < hard)  # SIGXCPU first, SIGKILL a second later
        resource.setrlimit(kind, (soft, soft + 1 if grace else soft))


def _check(result: int, what: str) -> None:
    if result != 0:
        errno = ctypes.get_errno()
        raise OSError(errno, f"{what} failed: {os.strerror(errno)}")


class StrictUnavailable(OSError):
    """The OS refused the namespaces of strict mode."""


def confine(limits: Limits, timeout_s: float, scratch: str, nproc: int | None, strict: bool) -> int | None:
    """Put this (freshly forked) child under the sandbox. None: run the tool here. In strict
    mode the tool runs in the new PID namespace's first process, and this process, left
    outside it, only waits: it gets the exit code to end with, mirroring that process."""
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))  # a crash must not dump a trainer-sized core
    enter_scratch(scratch, limits.keep_env)
    if strict:
        try:
            unshare_strict()
        except OSError as e:
            raise StrictUnavailable(str(e)) from None
        inner = os.fork()
        if inner:
            return _mirror(os.waitpid(inner, 0)[1])
        mount_own_proc()
    set_rlimits(limits, timeout_s, nproc)
    return None


def _mirror(status: int) -> int:
    if os.WIFSIGNALED(status):  # die by the same signal, so the parent reads the same
        sig = os.WTERMSIG(status)
        try:
            signal.signal(sig, signal.SIG_DFL)
        except (OSError, ValueError):  # SIGKILL, SIGSTOP
            pass
        os.kill(os.getpid(), sig)
        return 128 + sig  # a signal whose default is to be ignored
    return os.WEXITSTATUS(status)


def unshare_strict() -> None:
    """New user, network, PID and mount namespaces for this process (PID: for its next child).
    The uid/gid map to themselves, so files in the scratch dir keep their owner."""
    uid, gid = os.geteuid(), os.getegid()
    _check(_libc.unshare(_CLONE_NEWUSER | _CLONE_NEWNET | _CLONE_NEWPID | _CLONE_NEWNS), "unshare")
    try:
        with open("/proc/self/setgroups", "w") as f:
            f.write("deny")
    except FileNotFoundError:  # kernels before 3.19
        pass
    for name, ident in (("uid_map", uid), ("gid_map", gid)):
        with open(f"/proc/self/{name}", "w") as f:
            f.write(f"{ident} {ident} 1")


def mount_own_proc() -> bool:
    """Best effort, in the PID namespace's first process: a /proc that lists only the
    namespace's processes. False where the OS refuses (a /proc with masked paths)."""
    if _libc.mount(None, b"/", None, _MS_REC | _MS_PRIVATE, None) != 0:
        return False
    return _libc.mount(b"proc", b"/proc", b"proc", _MS_NOSUID | _MS_NODEV | _MS_NOEXEC, None) == 0


_strict_ok: bool | None = None


def strict_available() -> bool:
    """Whether this machine lets a process unshare user, network, PID and mount namespaces
    (probed once, in a throwaway child)."""
    global _strict_ok
    if _strict_ok is None:
        try:
            pid = os.fork()
        except OSError:
            return False
        if pid == 0:
            code = 1
            try:
                unshare_strict()
                inner = os.fork()
                if inner == 0:
                    os._exit(0)
                code = 0 if os.waitpid(inner, 0)[1] == 0 else 1
            finally:
                os._exit(code)
        _strict_ok = os.waitpid(pid, 0)[1] == 0
    return _strict_ok
