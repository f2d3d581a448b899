"""Run untrusted, model-written code in a contained child process.

:func:`run_sandboxed` writes the given files into a fresh temporary directory, runs ``command``
there and returns a :class:`SandboxResult`. Model text is only ever written to files in that
directory; the host process never passes it to ``eval``/``exec``.

Layers, strongest first (each is used when it works on this machine, see :func:`isolation`):

* **A minimal root** (bubblewrap, ``bwrap``): the command sees a fresh root holding only
  read-only binds of ``/usr`` (and the ``/bin``, ``/lib*`` links into it), a few files of ``/etc``,
  a fresh ``/proc``, a minimal ``/dev`` and a size-limited tmpfs work dir (``/tmp``, the cwd and
  ``HOME``) holding a copy of the files: nothing of the host's home directories, project
  checkouts, ``/run``, ``/tmp`` or ``/var``. All namespaces are new (user, PID, mount, network,
  IPC, UTS, cgroup), the user namespace cannot be nested (``--disable-userns``), capabilities are
  dropped, the run is its own session and dies with its supervisor. On a root host bwrap itself
  runs as a dedicated uid (below). Programs run from the host's ``/usr``: use :func:`python` for a
  Python interpreter that exists in there.
* **Namespaces** (root with ``unshare`` and ``setpriv``): new PID, mount and network namespaces.
  The command runs as PID 1 of its PID namespace, so when it exits or is killed the kernel kills
  every process it left behind (double forks and ``setsid`` included). The network namespace has
  only a downed loopback device. In the mount namespace ``/tmp`` is replaced by a size-limited
  tmpfs holding a copy of the files (the cwd and ``HOME``), and the other world-writable
  directories (``/var/tmp``, ``/dev/shm``, ``/run/lock``) by empty read-only ones.
* **A dedicated uid** (root): the command runs as a random, otherwise unused uid with no
  capabilities and ``no_new_privs``. It can write only where "other" may write, ``RLIMIT_NPROC``
  counts only this run's processes, and on return every process of that uid is SIGKILLed.
* **rlimits** (always): CPU seconds, address space, process count, file size, no core dumps.
* **A new session/process group** (always): the whole group is SIGKILLed on timeout and return.

Without root, the minimal root still applies where the kernel lets users create namespaces;
otherwise only the last two do (see ``docs/sandbox.md`` for what is NOT protected).

A run never gets a weaker layer than :func:`isolation` silently: a command that cannot run in the
strongest layer (a program outside ``/usr`` under bwrap, or inside a directory the namespace layer
hides) raises :class:`~codrl.errors.CodrlError`, unless the caller passes ``allow_weaker=True``.
"""

from __future__ import annotations

import contextlib
import errno
import functools
import os
import random
import resource
import selectors
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Mapping, Sequence
import dataclasses
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from codrl.errors import CodrlError

#: Appended to a stream that was cut at ``max_output_bytes``.
TRUNCATION_MARKER = "\n[... output truncated by sandbox ...]\n"
#: The only environment the child sees (plus ``HOME``); nothing is inherited from the host.
BASE_ENV: dict[str, str] = {
    "PATH": "/usr/local/bin:/usr/bin:/bin",
    "LANG": "C.UTF-8",
    "PYTHONDONTWRITEBYTECODE": "1",
    "PYTHONHASHSEED": "0",
}
#: Range of the throwaway uids a root host runs children as (never in /etc/passwd in practice).
_UID_RANGE = (1_500_000, 1_999_999)
_READ_CHUNK = 65536
_SIGNALS = frozenset(int(s) for s in signal.Signals)

# Runs inside the new namespaces as root (PID 1 there), then runs the command as the sandbox uid.
# The shell stays PID 1 and exits with the command's status (128+N for signal N): unshare 2.38
# fails to re-raise a child's SIGXCPU itself, so the status travels as a plain exit code.
# $1 = host work dir, $2 = uid, $3 = tmpfs size in MiB; the rest is the command.
_NS_SCRIPT = r"""
set -e
src=$1; uid=$2; size=$3; shift 3
cd "$src"
mount -t tmpfs -o "size=${size}m,mode=0700,nosuid,nodev" sandbox /tmp
cp -a . /tmp/
chown -R "$uid:$uid" /tmp
for d in /var/tmp /dev/shm /run/lock; do
  if [ -d "$d" ]; then mount -t tmpfs -o size=4k,mode=0755,ro,nosuid,nodev,noexec none "$d"; fi
done
cd /tmp
unset OLDPWD
ip link set lo up 2>/dev/null || true
set +e
setpriv --reuid="$uid" --regid="$uid" --clear-groups --no-new-privs \
  --inh-caps=-all --bounding-set=-all -- "$@"
exit $?
"""


@dataclass(frozen=True)
class SandboxResult:
    """What a sandboxed run produced; ``killed_reason`` says in one line why it was stopped."""

    returncode: int
    stdout: str
    stderr: str
    timed_out: bool
    killed_reason: str | None
    duration_s: float

    @property
    def ok(self) -> bool:
        """True when the command exited 0 on its own."""
        return self.returncode == 0 and self.killed_reason is None


#: System calls a program in the minimal root may not make (they fail with EPERM): new namespaces
#: and mounts, tracing other processes, kernel attack surface an untrusted program never needs
#: (eBPF, perf events, userfaultfd, io_uring, the kernel keyring, module loading).
DENIED_SYSCALLS = ("mount", "umount2", "pivot_root", "unshare", "setns", "ptrace", "process_vm_readv",
                   "process_vm_writev", "bpf", "perf_event_open", "userfaultfd", "io_uring_setup", "io_uring_enter",
                   "io_uring_register", "keyctl", "add_key", "request_key", "kexec_load", "init_module",
                   "finit_module", "delete_module")
_CLONE_NEWUSER = 0x10000000


@functools.lru_cache(maxsize=1)
def seccomp_filter() -> bytes | None:
    """The minimal root's seccomp filter as BPF (libseccomp through ``pyseccomp``), or None where
    libseccomp is not available. Allows everything but :data:`DENIED_SYSCALLS` and ``clone`` of a
    new user namespace; ``clone3`` answers ENOSYS (its flags are out of a filter's sight; the C
    library then falls back to ``clone``)."""
    try:
        import pyseccomp as sc
    except (ImportError, OSError, RuntimeError):
        return None
    flt = sc.SyscallFilter(sc.ALLOW)
    for name in DENIED_SYSCALLS:
        try:
            flt.add_rule(sc.ERRNO(errno.EPERM), name)
        except (OSError, ValueError, RuntimeError):  # a call this architecture does not have
            pass
    flt.add_rule(sc.ERRNO(errno.EPERM), "clone", sc.Arg(0, sc.MASKED_EQ, _CLONE_NEWUSER, _CLONE_NEWUSER))
    flt.add_rule(sc.ERRNO(errno.ENOSYS), "clone3")
    with tempfile.TemporaryFile() as tmp:
        flt.export_bpf(tmp)
        tmp.seek(0)
        return tmp.read()


def _seccomp_fd() -> int | None:
    """A file descriptor holding :func:`seccomp_filter` for bwrap to read (None: no filter)."""
    bpf = seccomp_filter()
    if bpf is None:
        return None
    fd = os.memfd_create("codrl-seccomp", 0)  # not close-on-exec: bwrap reads it after exec
    os.write(fd, bpf)
    os.lseek(fd, 0, os.SEEK_SET)
    return fd


#: Files of the host's ``/etc`` bound read-only into the minimal root (the dynamic loader's
#: cache and config, the time zone, the user and group names, Debian's alternatives links).
_ETC = ("/etc/ld.so.cache", "/etc/ld.so.conf", "/etc/ld.so.conf.d", "/etc/localtime", "/etc/passwd", "/etc/group",
        "/etc/alternatives")
#: Top-level directories of the host the minimal root takes (merged-/usr links or read-only binds).
_ROOT_DIRS = ("bin", "sbin", "lib", "lib32", "lib64", "libx32")
#: Inside the minimal root: the copy of the files (writable tmpfs) and the host work dir (read-only).
_BW_WORK, _BW_SRC = "/tmp", "/sandbox-src"
_BW_START = 'cp -a "$0"/. . && exec "$@"'


@functools.lru_cache(maxsize=1)
def _layers() -> tuple[str, ...]:
    """The layers that work on this machine, strongest first (probed once, by running them)."""
    out: list[str] = []
    if shutil.which("bwrap") and _probe(_bwrap_prefix(65534 if os.getuid() == 0 else None, network=False, binds=())
                                        + ["/bin/sh", "-c", "cd /tmp && true"]):
        out.append("bwrap")
    if os.getuid() == 0:
        if shutil.which("unshare") and shutil.which("setpriv") and _probe(
                ["unshare", "--pid", "--fork", "--mount", "--mount-proc", "--net", "--kill-child", "sh", "-c",
                 "mount -t tmpfs none /tmp && setpriv --reuid=65534 true"]):
            out.append("namespaces")
        out.append("uid")
    out.append("rlimits")
    return tuple(out)


def _probe(argv: list[str]) -> bool:
    """Whether ``argv`` runs and exits 0 within 10 s (the binary may exist while the kernel or a
    container policy refuses namespaces)."""
    try:
        return subprocess.run(argv, capture_output=True, timeout=10, check=False).returncode == 0
    except (OSError, subprocess.SubprocessError):
        return False


def isolation() -> str:
    """The strongest layer that works here: ``"bwrap"``, ``"namespaces"``, ``"uid"`` or ``"rlimits"``.

    Probed once by actually running each layer's tools.
    """
    return _layers()[0]


#: Directories namespace mode hides behind empty mounts (``/tmp`` behind the private work dir).
_HIDDEN = ("/tmp", "/var/tmp", "/dev/shm", "/run/lock")
def _program(command: Sequence[str]) -> str:
    """The command's program as an absolute path (looked up on the sandbox's ``PATH``)."""
    found = shutil.which(command[0], path=BASE_ENV["PATH"]) if "/" not in command[0] else command[0]
    return os.path.abspath(found or command[0])


def _weaker(mode: str) -> str:
    """The next layer below ``mode`` that works here (``rlimits`` always does)."""
    layers = ("bwrap", "namespaces", "uid", "rlimits")
    return next(m for m in layers[layers.index(mode) + 1:] if m in _layers())


def isolation_for(command: Sequence[str], binds: Sequence[str] = (), allow_weaker: bool = False) -> str:
    """The layer :func:`run_sandboxed` uses for ``command``: :func:`isolation`, unless its program
    cannot run there: a program outside ``/usr`` (and ``binds``) under the minimal root, or one in
    a directory the namespace layer hides (e.g. an interpreter of a virtualenv under ``/tmp``).
    Then the next layer down is used if ``allow_weaker``; otherwise :class:`CodrlError` says why."""
    mode = isolation()
    program = _program(command)
    while True:
        if mode == "bwrap":
            inside = [d.rstrip("/") + "/" for d in ("/usr", *(f"/{d}" for d in _ROOT_DIRS), *binds)]
            why = None if any(program.startswith(d) for d in inside) else (
                f"{program} is not inside the minimal root (only /usr and the binds are); run a program from "
                "/usr (codrl.sandbox.python() for Python) or bind its directory read-only")
        elif mode == "namespaces":
            why = (f"{program} lives in a directory the namespace layer hides"
                   if any(program.startswith(d + "/") for d in _HIDDEN) else None)
        else:
            return mode
        if why is None:
            return mode
        if not allow_weaker:
            raise CodrlError(f"sandbox: the {mode} layer cannot run this command: {why} (or pass "
                             "allow_weaker=True to accept a weaker layer)")
        mode = _weaker(mode)


def python() -> str:
    """A Python interpreter for sandboxed programs: the system ``python3`` (standard library only)
    where it exists, which every layer can run; else this process's interpreter."""
    return shutil.which("python3", path="/usr/bin:/bin") or sys.executable


def run_sandboxed(
    files: Mapping[str, str | bytes],
    command: Sequence[str],
    *,
    timeout_s: float = 10.0,
    cpu_s: int = 10,
    memory_mb: int = 512,
    max_procs: int = 32,
    max_output_bytes: int = 1_000_000,
    max_file_mb: int = 16,
    max_open_files: int = 256,
    disk_mb: int = 64,
    network: bool = False,
    binds: Sequence[str] = (),
    allow_weaker: bool = False,
) -> SandboxResult:
    """Write ``files`` into a fresh temp dir, run ``command`` there contained, and clean up.

    ``max_open_files`` bounds each process's open files (``RLIMIT_NOFILE``).
    ``network=True`` skips the network namespace (the other layers stay). ``disk_mb`` bounds the
    tmpfs work dir in the bwrap and namespace layers. ``binds``: host paths the minimal root also
    shows, read-only (another interpreter, its packages); on a root host bwrap runs as the
    sandbox's own uid, so they must be readable by other users. ``allow_weaker``: run in a weaker
    layer when the strongest cannot run the command (:func:`isolation_for`) instead of raising.
    Raises :class:`CodrlError` for a bad file name or command.
    """
    if not command:
        raise CodrlError("sandbox command: must not be empty")
    for b in binds:
        if not os.path.isabs(b) or not os.path.exists(b):
            raise CodrlError(f"sandbox binds: {b!r} must be an existing absolute path")
    mode = isolation_for(command, binds, allow_weaker)
    uid = _pick_uid() if mode != "rlimits" else None
    workdir = Path(tempfile.mkdtemp(prefix=f"codrl-sandbox-{os.getpid()}-"))  # named by its supervisor, as its cgroups
    try:
        _write_files(workdir, files, uid)
        seccomp = _seccomp_fd() if mode == "bwrap" else None
        argv, cwd, home = _build_argv(mode, list(command), workdir, uid, disk_mb, network, binds, seccomp)
        env = dict(BASE_ENV, HOME=home)
        limits = _Limits(cpu_s, memory_mb, max_procs, max_file_mb, max_open_files, count_own=uid is None)
        run_as = uid if mode == "uid" and not _SETPRIV else None
        cgroup = RunCgroup.create(memory_mb, disk_mb, max_procs) if mode != "rlimits" and run_as is None else None
        if cgroup is not None:
            argv = [*cgroup.enter_argv(), *argv]
        try:
            res = _supervise(
                argv,
                cwd,
                env,
                limits,
                run_as,
                uid,
                timeout_s,
                max_output_bytes,
                shell_status=mode in ("namespaces", "bwrap"),
                pass_fds=() if seccomp is None else (seccomp,),
            )
            if cgroup is not None and not res.timed_out and res.returncode != 0 and cgroup.memory_exceeded():
                res = dataclasses.replace(res, killed_reason=f"memory limit of the whole run exceeded "
                                          f"({memory_mb} MiB + {disk_mb} MiB work dir, cgroup)")
            return res
        finally:
            if seccomp is not None:
                os.close(seccomp)
            if cgroup is not None:
                cgroup.remove()
    finally:
        if uid is not None:
            _kill_uid(uid)
        shutil.rmtree(workdir, ignore_errors=True)


def _write_files(workdir: Path, files: Mapping[str, str | bytes], uid: int | None) -> None:
    """Write each file (text as UTF-8, bytes as they are) under ``workdir``, refusing names that could escape it."""
    for name, text in files.items():
        rel = PurePosixPath(name)
        if rel.is_absolute() or ".." in rel.parts or not rel.parts:
            raise CodrlError(f"sandbox file name: {name!r} must be a relative path without '..'")
        path = workdir / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        if isinstance(text, bytes):
            path.write_bytes(text)
        else:
            path.write_text(text, encoding="utf-8")
    if uid is not None:
        for path in [workdir, *workdir.rglob("*")]:
            os.chown(path, uid, uid, follow_symlinks=False)


def _build_argv(
    mode: str,
    command: list[str],
    workdir: Path,
    uid: int | None,
    disk_mb: int,
    network: bool,
    binds: Sequence[str] = (),
    seccomp_fd: int | None = None,
) -> tuple[list[str], str, str]:
    """Return (argv, cwd, HOME) for the chosen isolation mode."""
    if mode == "bwrap":
        argv = [*_bwrap_prefix(uid, network, binds, disk_mb, workdir, seccomp_fd), "/bin/sh", "-c", _BW_START,
                _BW_SRC, *command]
        return argv, str(workdir), _BW_WORK
    if mode == "uid" and _SETPRIV and uid is not None:
        return [*_setpriv_argv(uid), *command], str(workdir), str(workdir)
    if mode != "namespaces":
        return command, str(workdir), str(workdir)
    flags = ["--pid", "--fork", "--mount", "--mount-proc", "--kill-child"]
    if not network:
        flags.append("--net")
    argv = [
        "unshare",
        *flags,
        "sh",
        "-c",
        _NS_SCRIPT,
        "sandbox",
        str(workdir),
        str(uid),
        str(disk_mb),
        *command,
    ]
    return argv, str(workdir), "/tmp"


_SETPRIV = shutil.which("setpriv") is not None


def _bwrap_prefix(uid: int | None, network: bool, binds: Sequence[str], disk_mb: int = 1,
                  workdir: Path | None = None, seccomp_fd: int | None = None) -> list[str]:
    """bwrap (run as ``uid`` on a root host) with the minimal root, up to the command."""
    argv = _setpriv_argv(uid) if uid is not None else []
    argv += ["bwrap", "--unshare-all", "--unshare-user", "--disable-userns", "--die-with-parent", "--new-session",
             "--cap-drop", "ALL"]
    if network:
        argv.append("--share-net")
    argv += ["--ro-bind", "/usr", "/usr"]
    for d in _ROOT_DIRS:
        path = "/" + d
        if os.path.islink(path):
            argv += ["--symlink", os.readlink(path), path]
        elif os.path.isdir(path):
            argv += ["--ro-bind", path, path]
    argv += ["--dir", "/etc"]
    for f in _ETC:
        if os.path.exists(f):
            argv += ["--ro-bind", f, f]
    argv += ["--proc", "/proc", "--dev", "/dev", "--size", str(disk_mb * 1024 * 1024), "--tmpfs", _BW_WORK]
    if workdir is not None:
        argv += ["--ro-bind", str(workdir), _BW_SRC]
    for b in binds:  # after the tmpfs, which would hide a bind under /tmp
        argv += ["--ro-bind", b, b]
    if seccomp_fd is not None:
        argv += ["--seccomp", str(seccomp_fd)]
    return [*argv, "--remount-ro", "/", "--chdir", _BW_WORK, "--setenv", "HOME", _BW_WORK]


def _setpriv_argv(uid: int) -> list[str]:
    """Drop to ``uid`` with no groups, no capabilities and ``no_new_privs`` (util-linux)."""
    return [
        "setpriv",
        f"--reuid={uid}",
        f"--regid={uid}",
        "--clear-groups",
        "--no-new-privs",
        "--inh-caps=-all",
        "--bounding-set=-all",
        "--",
    ]


#: Processes the run's own wrappers (the cgroup shell, setpriv, bwrap and its init) may add.
_WRAPPER_PROCS = 4
#: Enters the cgroups given first (their count, then their folders), then runs the command.
_CG_ENTER = 'n=$1; shift; while [ "$n" -gt 0 ]; do echo $$ > "$1/cgroup.procs" || exit 125; shift; n=$((n-1)); done; exec "$@"'


def _cgroup_v1_dir(controller: str) -> Path | None:
    """This process's cgroup v1 folder of ``controller`` (mounted at /sys/fs/cgroup/<name>), or None."""
    try:
        lines = Path("/proc/self/cgroup").read_text().splitlines()
    except OSError:
        return None
    for line in lines:
        _, names, path = line.split(":", 2)
        if controller in names.split(","):
            mount = Path("/sys/fs/cgroup") / names
            if not mount.is_dir():
                mount = Path("/sys/fs/cgroup") / controller
            folder = mount / path.lstrip("/")
            return folder if folder.is_dir() else None
    return None


class RunCgroup:
    """Whole-run limits in cgroup v1 (a root host where the memory, pids and cpu hierarchies are
    writable): the run's processes together may hold ``memory_mb`` + ``disk_mb`` MiB (the work
    dir's tmpfs pages count too), run ``max_procs`` tasks, and use one CPU. Where a controller is
    missing or not writable, its limit stays per process (rlimits)."""

    def __init__(self, folders: dict[str, Path]) -> None:
        self.folders = folders

    @classmethod
    def create(cls, memory_mb: int, disk_mb: int, max_procs: int) -> RunCgroup | None:
        if os.getuid() != 0:
            return None
        name = f"codrl-sandbox-{os.getpid()}-{random.getrandbits(40):010x}"
        settings = {"memory": {"memory.limit_in_bytes": (memory_mb + disk_mb) * 1024 * 1024},
                    "pids": {"pids.max": max_procs + _WRAPPER_PROCS},
                    "cpu": {"cpu.cfs_period_us": 100_000, "cpu.cfs_quota_us": 100_000}}
        made = cls({})
        for controller, values in settings.items():
            base = _cgroup_v1_dir(controller)
            if base is None:
                continue
            try:
                (base / name).mkdir()
                made.folders[controller] = base / name
                for f, v in values.items():
                    (base / name / f).write_text(str(v))
            except OSError:
                made.folders.pop(controller, None)
                with contextlib.suppress(OSError):
                    (base / name).rmdir()
        return made if made.folders else None

    def enter_argv(self) -> list[str]:
        """A prefix that moves the command's first process into the cgroups, then runs it."""
        return ["sh", "-c", _CG_ENTER, "cgroup", str(len(self.folders)), *map(str, self.folders.values())]

    def memory_exceeded(self) -> bool:
        """Whether the run hit its whole-run memory limit (the cgroup counted a failure or an OOM kill)."""
        folder = self.folders.get("memory")
        if folder is None:
            return False
        try:
            oom = dict(line.split() for line in (folder / "memory.oom_control").read_text().splitlines())
            return int(oom.get("oom_kill", 0)) > 0 or int((folder / "memory.failcnt").read_text()) > 0
        except (OSError, ValueError):
            return False

    def remove(self) -> None:
        """Kill what is left in the cgroups and delete them."""
        for folder in self.folders.values():
            for _ in range(50):
                try:
                    pids = [int(x) for x in (folder / "cgroup.procs").read_text().split()]
                except OSError:
                    break
                if not pids:
                    break
                for pid in pids:
                    with contextlib.suppress(ProcessLookupError, PermissionError):
                        os.kill(pid, signal.SIGKILL)
                time.sleep(0.01)
            for _ in range(50):
                try:
                    folder.rmdir()
                    break
                except FileNotFoundError:
                    break
                except OSError:  # busy until the killed processes are reaped
                    time.sleep(0.01)


@dataclass(frozen=True)
class _Limits:
    """The rlimits applied in the child before exec."""

    cpu_s: int
    memory_mb: int
    max_procs: int
    max_file_mb: int
    max_open_files: int
    count_own: bool  # RLIMIT_NPROC is per uid: without a private uid, add the user's processes

    def preexec(self) -> Callable[[], None]:
        """Build the function run in the forked child; it only calls async-signal-safe setters."""
        nproc = self.max_procs + (_count_uid_procs(os.getuid()) if self.count_own else 0)
        mem = self.memory_mb * 1024 * 1024
        fsize = self.max_file_mb * 1024 * 1024

        def apply() -> None:
            resource.setrlimit(resource.RLIMIT_CPU, (self.cpu_s, self.cpu_s + 1))
            resource.setrlimit(resource.RLIMIT_AS, (mem, mem))
            resource.setrlimit(resource.RLIMIT_NPROC, (nproc, nproc))
            resource.setrlimit(resource.RLIMIT_FSIZE, (fsize, fsize))
            resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
            resource.setrlimit(resource.RLIMIT_NOFILE, (self.max_open_files, self.max_open_files))

        return apply


class _Capture:
    """Reads both pipes without deadlock, keeping at most ``cap`` bytes of each."""

    def __init__(self, proc: subprocess.Popen[bytes], cap: int) -> None:
        self.cap = cap
        self.data: dict[int, bytearray] = {}
        self.truncated = False
        self.sel = selectors.DefaultSelector()
        for pipe in (proc.stdout, proc.stderr):
            assert pipe is not None
            os.set_blocking(pipe.fileno(), False)
            self.data[pipe.fileno()] = bytearray()
            self.sel.register(pipe.fileno(), selectors.EVENT_READ)

    def pump(self, wait_s: float) -> None:
        """Read what is ready within ``wait_s``; set ``truncated`` when a stream passes the cap."""
        for key, _ in self.sel.select(max(wait_s, 0.0)):
            fd = int(key.fd)
            try:
                chunk = os.read(fd, _READ_CHUNK)
            except BlockingIOError:
                continue
            if not chunk:
                self.sel.unregister(fd)
                continue
            buf = self.data[fd]
            if len(buf) + len(chunk) > self.cap:
                self.truncated = True
            buf += chunk[: max(self.cap - len(buf), 0)]

    @property
    def open(self) -> bool:
        """True while a pipe has not reached EOF."""
        return bool(self.sel.get_map())

    def text(self, fd: int) -> str:
        """Decode a stream leniently, with the marker when the run was cut for output."""
        out = bytes(self.data[fd]).decode("utf-8", errors="replace")
        return out + TRUNCATION_MARKER if self.truncated and len(self.data[fd]) >= self.cap else out


def _supervise(
    argv: list[str],
    cwd: str,
    env: dict[str, str],
    limits: _Limits,
    run_as: int | None,
    kill_uid: int | None,
    timeout_s: float,
    max_output_bytes: int,
    shell_status: bool,
    pass_fds: tuple[int, ...] = (),
) -> SandboxResult:
    """Start the child in a new session, pump its output, and kill its group on every exit."""
    start = time.monotonic()
    deadline = start + timeout_s
    proc = subprocess.Popen(
        argv,
        cwd=cwd,
        env=env,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        start_new_session=True,
        # Only setrlimit calls run there (no locks, no imports), the accepted safe use with threads.
        preexec_fn=limits.preexec(),  # noqa: PLW1509
        user=run_as,
        group=run_as,
        extra_groups=[] if run_as is not None else None,
        close_fds=True,
        pass_fds=pass_fds,
    )
    assert proc.stdout is not None and proc.stderr is not None
    cap = _Capture(proc, max_output_bytes)
    reason: str | None = None
    timed_out = False
    try:
        while cap.open or proc.poll() is None:
            now = time.monotonic()
            if now >= deadline:
                timed_out, reason = True, f"wall-clock timeout after {timeout_s:g}s"
                break
            if cap.truncated:
                reason = f"output exceeded {max_output_bytes} bytes"
                break
            if proc.poll() is not None:
                _kill_group(proc.pid, kill_uid)  # leftovers may hold the pipes open
                deadline = min(deadline, now + 0.5)
            cap.pump(min(deadline - now, 0.1))
    finally:
        _kill_group(proc.pid, kill_uid)
        returncode = proc.wait()
        if shell_status and returncode > 128 and (returncode - 128) in _SIGNALS:
            returncode = 128 - returncode
        cap.sel.close()
        proc.stdout.close()
        proc.stderr.close()
    stderr = _text(cap, "stderr")
    return SandboxResult(
        returncode=returncode,
        stdout=_text(cap, "stdout"),
        stderr=stderr,
        timed_out=timed_out,
        killed_reason=reason or _exit_reason(returncode, stderr),
        duration_s=time.monotonic() - start,
    )


def _text(cap: _Capture, which: str) -> str:
    """Decoded text of one stream; its fd number is fixed at registration."""
    fds = sorted(cap.data)  # stdout pipe is created first, so it has the lower fd
    return cap.text(fds[0] if which == "stdout" else fds[1])


def _exit_reason(returncode: int, stderr: str) -> str | None:
    """Name the limit behind an exit, when the exit shows one."""
    by_signal = {
        signal.SIGXCPU: "CPU time limit exceeded (SIGXCPU)",
        signal.SIGXFSZ: "file size limit exceeded (SIGXFSZ)",
        signal.SIGKILL: "killed by SIGKILL (CPU hard limit or memory)",
        signal.SIGSEGV: "crashed with SIGSEGV (possibly the memory limit)",
    }
    if returncode < 0:
        try:
            sig = signal.Signals(-returncode)
        except ValueError:  # a real-time or otherwise unnamed signal: reported by number
            return f"terminated by signal {-returncode}"
        return by_signal.get(sig, f"terminated by signal {sig.name}")
    if returncode != 0 and "MemoryError" in stderr[-2000:]:
        return "memory limit exceeded (MemoryError)"
    if returncode != 0 and "BlockingIOError" in stderr[-2000:] and "fork" in stderr[-2000:]:
        return "process limit exceeded (fork failed)"
    return None


def _kill_group(pid: int, uid: int | None) -> None:
    """SIGKILL the child's process group (its session leader's group) and, if set, its uid."""
    try:
        os.killpg(pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass
    if uid is not None:
        _kill_uid(uid)


def _uid_pids(uid: int) -> list[int]:
    """Live (non-zombie) PIDs whose real uid is ``uid``.

    Reads ``/proc/PID/status`` rather than the directory owner, which a process can turn into
    root by clearing its dumpable flag.
    """
    pids = []
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            status = Path(entry.path, "status").read_text()
        except OSError:
            continue
        fields = dict(line.split(":", 1) for line in status.splitlines() if ":" in line)
        if int(fields.get("Uid", "-1").split()[0]) == uid and "Z" not in fields.get("State", ""):
            pids.append(int(entry.name))
    return pids


def _count_uid_procs(uid: int) -> int:
    """How many processes ``uid`` already runs (RLIMIT_NPROC counts them all)."""
    return len(_uid_pids(uid))


def _kill_uid(uid: int) -> None:
    """SIGKILL every process of ``uid`` until none is left (a fork race needs a few rounds)."""
    for _ in range(50):
        pids = _uid_pids(uid)
        if not pids:
            return
        for pid in pids:
            try:
                os.kill(pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass
        time.sleep(0.01)


def _pick_uid() -> int:
    """A random uid in :data:`_UID_RANGE` that owns no process now."""
    while True:
        uid = random.randint(*_UID_RANGE)
        if not _uid_pids(uid):
            return uid
