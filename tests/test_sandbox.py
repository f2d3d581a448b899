"""Hostile programs run through :func:`codrl.sandbox.run_sandboxed`.

Every hostile case checks two things: the run ends with a non-success result that says why, and
the host is unchanged afterwards (files, processes, memory). Tests marked with the ``mode``
fixture also run with the namespaces switched off (uid + rlimits only), the fallback a host
without ``unshare`` gets.
"""

from __future__ import annotations

import json
import os
import resource
import shutil
import sys
import tempfile
import textwrap
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from codrl import sandbox
from codrl.errors import CodrlError
from codrl.sandbox import TRUNCATION_MARKER, run_sandboxed

sys.path.insert(0, str(Path(__file__).parent))
from host_checks import pids_with  # noqa: E402

PY = sandbox.python()
ROOT = os.getuid() == 0
NETWORK_ISOLATED = ("bwrap", "namespaces")


@pytest.fixture(params=["auto", "namespaces", "uid"])
def mode(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    """Run the test with the best isolation here, then with each weaker root layer (root only)."""
    if request.param != "auto":
        if request.param not in sandbox._layers():
            pytest.skip(f"the {request.param} layer does not work here")
        if request.param == sandbox.isolation():
            pytest.skip(f"the {request.param} layer is this machine's best: run as 'auto'")
        monkeypatch.setattr(sandbox, "isolation", lambda: request.param)
    yield request.param


def _run(code: str, *args: str, **kw: object) -> sandbox.SandboxResult:
    """Run one Python file ``main.py`` holding ``code`` in the sandbox."""
    return run_sandboxed({"main.py": textwrap.dedent(code)}, [PY, "main.py", *args], **kw)  # type: ignore[arg-type]


def _sandbox_dirs() -> set[str]:
    return {p.name for p in Path(tempfile.gettempdir()).glob(f"codrl-sandbox-{os.getpid()}-*")}  # this process's runs


def test_sandbox_normal_program_passes_and_cleans_up() -> None:
    before = _sandbox_dirs()
    files = {
        "main.py": "from lib.util import f\nprint(f(20))\n",
        "lib/util.py": "def f(x):\n    return x + 22\n",
        "lib/__init__.py": "",
    }
    res = run_sandboxed(files, [PY, "main.py"], timeout_s=5)
    assert res.ok and res.returncode == 0 and res.stdout == "42\n"
    assert res.killed_reason is None and not res.timed_out and res.duration_s < 5
    assert _sandbox_dirs() == before  # the temp dir is gone


def test_sandbox_rejects_escaping_file_names() -> None:
    for bad in ("../evil.py", "/etc/evil.py", "a/../../evil.py"):
        with pytest.raises(CodrlError, match="relative path"):
            run_sandboxed({bad: "print(1)"}, [PY, "-c", "pass"])
    with pytest.raises(CodrlError, match="empty"):
        run_sandboxed({}, [])


def test_sandbox_infinite_loop_times_out(mode: str) -> None:
    res = _run("while True:\n    pass\n", timeout_s=1)
    assert res.timed_out and res.returncode != 0
    assert res.killed_reason is not None and "timeout" in res.killed_reason
    assert res.duration_s < 3


def test_sandbox_cpu_limit_kills() -> None:
    res = _run("while True:\n    pass\n", timeout_s=5, cpu_s=1)
    assert not res.timed_out and res.returncode != 0
    assert res.killed_reason is not None and "CPU" in res.killed_reason


def test_sandbox_fork_bomb_is_contained(mode: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """Every process of the bomb is gone after the run: those carrying its token and, on a root host,
    every process of the run's own uid (other tests' processes do not count)."""
    token = f"bomb-{uuid.uuid4().hex}"
    uids: list[int] = []
    pick = sandbox._pick_uid
    monkeypatch.setattr(sandbox, "_pick_uid", lambda: uids.append(pick()) or uids[-1])
    code = """
        import os
        while True:
            try:
                os.fork()
            except OSError:
                pass
    """
    res = _run(code, token, timeout_s=1.5, max_procs=16)
    assert not res.ok and res.killed_reason is not None
    for _ in range(40):  # killed orphans are reaped by the host's init shortly after
        if not pids_with(token) and not any(sandbox._uid_pids(u) for u in uids):
            break
        time.sleep(0.05)
    assert pids_with(token) == [] and [p for u in uids for p in sandbox._uid_pids(u)] == []


def test_sandbox_memory_bomb_hits_memory_limit() -> None:
    code = """
        chunks = []
        while True:
            chunks.append(bytearray(16 * 1024 * 1024))
    """
    res = _run(code, timeout_s=3, memory_mb=256)
    assert not res.ok and not res.timed_out
    assert res.killed_reason is not None and "memory" in res.killed_reason.lower()
    assert "MemoryError" in res.stderr


def test_sandbox_cannot_write_outside(mode: str, tmp_path: Path) -> None:
    host_file = tmp_path / "host.txt"
    host_file.write_text("original")
    host_file.chmod(0o644)
    etc_probe = Path("/etc") / f"codrl-sandbox-{uuid.uuid4().hex}"
    code = f"""
        import sys
        errors = 0
        for path in ({str(host_file)!r}, {str(etc_probe)!r}, "/codrl-sandbox-probe"):
            try:
                with open(path, "w") as f:
                    f.write("pwned")
            except OSError as e:
                errors += 1
                print("denied:", path, type(e).__name__, file=sys.stderr)
        sys.exit(3 if errors == 3 else 0)
    """
    res = _run(code, timeout_s=3)
    assert res.returncode == 3 and "denied:" in res.stderr
    assert host_file.read_text() == "original"
    assert not etc_probe.exists() and not Path("/codrl-sandbox-probe").exists()


def test_sandbox_cannot_read_hidden_tests(mode: str, tmp_path: Path) -> None:
    hidden_dir = tmp_path / "hidden"
    hidden_dir.mkdir(mode=0o700)
    hidden = hidden_dir / "test_hidden.py"
    hidden.write_text("SECRET_EXPECTED = 1234\n")
    hidden.chmod(0o644)  # even a readable file is protected by its 0700 root-owned dir
    code = f"""
        try:
            print(open({str(hidden)!r}).read())
        except OSError as e:
            raise SystemExit(f"cannot read hidden file: {{type(e).__name__}}")
    """
    res = _run(code, timeout_s=3)
    assert res.returncode != 0 and "cannot read hidden file" in res.stderr
    assert "SECRET_EXPECTED" not in res.stdout
    assert hidden.read_text() == "SECRET_EXPECTED = 1234\n"


def test_sandbox_cannot_delete_host_files(mode: str, tmp_path: Path) -> None:
    victim_dir = tmp_path / "victim"
    victim_dir.mkdir()
    victim_dir.chmod(0o755)
    tmp_path.chmod(0o755)
    sentinel = victim_dir / "sentinel.txt"
    sentinel.write_text("keep me")
    code = f"""
        import os, shutil, sys
        failures = []
        for attempt in (lambda: os.remove({str(sentinel)!r}),
                        lambda: shutil.rmtree({str(victim_dir)!r}),
                        lambda: os.rename({str(sentinel)!r}, "stolen.txt")):
            try:
                attempt()
            except OSError as e:
                failures.append(type(e).__name__)
        print("delete failed:", failures, file=sys.stderr)
        sys.exit(4 if len(failures) == 3 else 0)
    """
    res = _run(code, timeout_s=3)
    assert res.returncode == 4 and "delete failed" in res.stderr
    assert sentinel.read_text() == "keep me"


def test_sandbox_network_socket_fails() -> None:
    code = """
        import socket
        try:
            socket.create_connection(("1.1.1.1", 53), timeout=1)
        except OSError as e:
            raise SystemExit(f"network blocked: {e}")
        print("connected")
    """
    res = _run(code, timeout_s=3)
    if sandbox.isolation_for([PY]) not in NETWORK_ISOLATED:
        pytest.skip("no network namespace here; network is NOT blocked (see docs/sandbox.md)")
    assert res.returncode != 0 and "network blocked" in res.stderr
    assert "connected" not in res.stdout


def test_sandbox_output_flood_is_capped(mode: str) -> None:
    rss_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    code = """
        import sys
        while True:
            sys.stdout.write("x" * 65536)
    """
    res = _run(code, timeout_s=3, max_output_bytes=100_000)
    assert res.killed_reason is not None and "output exceeded" in res.killed_reason
    assert not res.timed_out and res.duration_s < 3
    assert res.stdout.endswith(TRUNCATION_MARKER)
    assert len(res.stdout) <= 100_000 + len(TRUNCATION_MARKER)
    grown_kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - rss_before
    assert grown_kib < 50 * 1024  # memory stayed bounded


def test_sandbox_detached_child_does_not_outlive_run(mode: str) -> None:
    token = f"detach-{uuid.uuid4().hex}"
    marker_dir = Path(tempfile.mkdtemp(prefix="codrl-marker-"))
    marker_dir.chmod(0o777)  # writable by the sandbox uid, should the child survive
    marker = marker_dir / "alive.txt"
    code = f"""
        import os, time
        if os.fork() == 0:
            os.setsid()
            if os.fork() == 0:
                time.sleep(1.0)
                open({str(marker)!r}, "w").write("escaped")
                os._exit(0)
            os._exit(0)
        print("parent done")
    """
    try:
        res = _run(code, token, timeout_s=3)
        assert res.returncode == 0 and "parent done" in res.stdout
        assert pids_with(token) == []
        time.sleep(1.5)
        assert not marker.exists()
        assert pids_with(token) == []
    finally:
        for p in marker_dir.iterdir():
            p.unlink()
        marker_dir.rmdir()


def test_sandbox_non_utf8_output_is_replaced() -> None:
    code = """
        import sys
        sys.stdout.buffer.write(b"ok \\xff\\xfe end\\n")
        sys.stderr.buffer.write(b"\\xc3(\\n")
    """
    res = _run(code, timeout_s=3)
    assert res.returncode == 0
    assert res.stdout == "ok \ufffd\ufffd end\n"
    assert "\ufffd" in res.stderr


def test_sandbox_environment_is_stripped(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CODRL_FAKE_SECRET", "hunter2-token")
    code = """
        import json, os
        print(json.dumps(dict(os.environ)))
    """
    res = _run(code, timeout_s=3)
    assert res.returncode == 0
    assert "hunter2" not in res.stdout and "CODRL_FAKE_SECRET" not in res.stdout
    env = json.loads(res.stdout)
    allowed = {
        "PATH",
        "HOME",
        "LANG",
        "PYTHONDONTWRITEBYTECODE",
        "PYTHONHASHSEED",
        "PWD",
    }
    assert set(env) <= allowed


def test_sandbox_unknown_signal_is_reported_by_number(mode: str) -> None:
    """A program killed by a signal with no name (a real-time one) is a reported failure, not a crash."""
    res = _run("import os\nos.kill(os.getpid(), 40)\n", timeout_s=10)
    assert not res.ok
    if res.returncode < 0:  # the uid layer sees the signal itself (a namespace's init exits 128 + 40)
        assert res.returncode == -40 and res.killed_reason == "terminated by signal 40"
    else:
        assert res.returncode == 128 + 40


# -- the minimal root (bwrap): nothing of the host is reachable --------------------------------------
needs_bwrap = pytest.mark.skipif("bwrap" not in sandbox._layers(),
                                 reason="bubblewrap (bwrap) is not installed or may not create namespaces here "
                                        "(scripts/install.sh installs it on Debian/Ubuntu as root)")


@needs_bwrap
def test_sandbox_minimal_root_shows_no_host_files() -> None:
    """No project source, no site-packages, no home, no /run, /var or host /tmp: nothing to read."""
    import codrl

    secrets = [str(Path(codrl.__file__).resolve().parent), str(Path.home()), "/run", "/var", "/work", "/srv",
               str(Path(pytest.__file__).resolve().parent), str(Path(__file__).resolve())]
    code = f"""
        import json, os
        print(json.dumps({{"seen": [p for p in {secrets!r} if os.path.exists(p)], "root": sorted(os.listdir("/"))}}))
    """
    res = _run(code, timeout_s=5)
    assert res.ok, res.stderr
    out = json.loads(res.stdout)
    assert out["seen"] == []
    assert set(out["root"]) <= {"bin", "dev", "etc", "lib", "lib32", "lib64", "libx32", "proc", "sandbox-src", "sbin",
                                "tmp", "usr"}


@needs_bwrap
def test_sandbox_sees_no_host_processes() -> None:
    res = _run("import os\nprint(len([p for p in os.listdir('/proc') if p.isdigit()]))\n", timeout_s=5)
    assert res.ok, res.stderr
    assert int(res.stdout) <= 4  # its own few processes (bwrap's init, the shell's exec, python)


@needs_bwrap
def test_sandbox_cannot_create_user_namespaces() -> None:
    """``unshare -r`` (a user namespace, the start of most kernel attacks) fails inside."""
    code = """
        import subprocess
        r = subprocess.run(["unshare", "-r", "true"], capture_output=True, text=True)
        print("unshare rc", r.returncode)
    """
    res = _run(code, timeout_s=5)
    assert res.ok, res.stderr
    assert "unshare rc 0" not in res.stdout and "unshare rc" in res.stdout


@needs_bwrap
def test_sandbox_reaches_no_host_sockets(tmp_path: Path) -> None:
    """A host TCP listener on 127.0.0.1, an abstract unix socket and a path unix socket: none reachable."""
    import socket

    tcp = socket.socket()
    tcp.bind(("127.0.0.1", 0))
    tcp.listen()
    abstract = socket.socket(socket.AF_UNIX)
    name = f"codrl-test-{os.getpid()}"
    abstract.bind("\0" + name)
    abstract.listen()
    path = tmp_path / "host.sock"
    unix = socket.socket(socket.AF_UNIX)
    unix.bind(str(path))
    unix.listen()
    os.chmod(tmp_path, 0o755)
    os.chmod(path, 0o777)
    code = f"""
        import socket
        def attempt(family, addr):
            s = socket.socket(family)
            s.settimeout(1)
            try:
                s.connect(addr)
                return "reached"
            except OSError as e:
                return "blocked"
        print(attempt(socket.AF_INET, ("127.0.0.1", {tcp.getsockname()[1]})),
              attempt(socket.AF_UNIX, "\\0{name}"), attempt(socket.AF_UNIX, {str(path)!r}))
    """
    try:
        res = _run(code, timeout_s=5)
    finally:
        for s in (tcp, abstract, unix):
            s.close()
    assert res.ok, res.stderr
    assert res.stdout.split() == ["blocked", "blocked", "blocked"]


@needs_bwrap
def test_sandbox_leaves_no_files_in_shared_dirs() -> None:
    token = f"leftover-{uuid.uuid4().hex}"
    code = f"""
        import os
        for d in ("/tmp", "/var/tmp", "/dev/shm"):
            try:
                with open(os.path.join(d, "{token}"), "w") as f:
                    f.write("x")
            except OSError:
                pass
    """
    res = _run(code, timeout_s=5)
    assert res.returncode == 0, res.stderr
    assert not [d for d in ("/tmp", "/var/tmp", "/dev/shm") if os.path.exists(os.path.join(d, token))]


@needs_bwrap
def test_sandbox_weaker_layer_is_never_silent() -> None:
    """A program the minimal root cannot run is an error naming why, unless the caller allows a
    weaker layer; then it runs in the next one. A read-only bind makes it runnable there."""
    folder = Path(tempfile.mkdtemp(prefix="codrl-bind-"))  # readable by the sandbox's own uid
    try:
        folder.chmod(0o755)
        outside = folder / "tool"
        outside.write_text("#!/bin/sh\necho ran\n")
        outside.chmod(0o755)
        with pytest.raises(CodrlError, match="not inside the minimal root"):
            run_sandboxed({}, [str(outside)], timeout_s=5)
        assert sandbox.isolation_for([str(outside)], allow_weaker=True) in ("namespaces", "uid", "rlimits")
        assert sandbox.isolation_for([str(outside)], binds=[str(folder)]) == "bwrap"
        res = run_sandboxed({}, [str(outside)], timeout_s=5, binds=[str(folder)])
        assert res.ok and res.stdout == "ran\n", res.stderr
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def test_sandbox_disk_is_bounded(mode: str) -> None:
    """Many files, each under the per-file cap: the work dir's tmpfs (``disk_mb``) stops them."""
    if sandbox.isolation_for([PY]) not in NETWORK_ISOLATED:
        pytest.skip("only the bwrap and namespace layers bound the total (docs/sandbox.md)")
    code = """
        import sys
        written = 0
        try:
            for i in range(64):
                with open(f"f{i}.bin", "wb") as f:
                    f.write(b"x" * 1024 * 1024)
                written += 1
        except OSError as e:
            print("stopped after", written, type(e).__name__)
            sys.exit(0)
        print("wrote", written)
    """
    res = _run(code, timeout_s=10, disk_mb=8, max_file_mb=4)
    assert res.ok, res.stderr
    assert res.stdout.startswith("stopped after") and int(res.stdout.split()[2]) < 9


@needs_bwrap
@pytest.mark.skipif(sandbox.seccomp_filter() is None, reason="libseccomp is not available (no seccomp filter)")
@pytest.mark.skipif(os.uname().machine != "x86_64", reason="the probe uses x86_64 system call numbers")
def test_sandbox_seccomp_denies_kernel_attack_surface() -> None:
    """ptrace, io_uring, unshare, keyring, eBPF, userfaultfd and mount fail with EPERM; ordinary
    process creation still works."""
    code = """
        import ctypes, errno, subprocess
        libc = ctypes.CDLL(None, use_errno=True)
        def call(nr, *args):
            return "ok" if libc.syscall(nr, *args) >= 0 else errno.errorcode[ctypes.get_errno()]
        calls = {"ptrace": (101, 0, 0, 0, 0), "io_uring_setup": (425, 1, 0), "unshare": (272, 0x00020000),
                 "keyctl": (250, 0), "bpf": (321, 0, 0, 0), "userfaultfd": (323, 0), "mount": (165, 0, 0, 0, 0, 0)}
        print(" ".join(f"{k}={call(*v)}" for k, v in calls.items()))
        print("child", subprocess.run(["true"]).returncode)
    """
    res = _run(code, timeout_s=5)
    assert res.ok, res.stderr
    got = dict(x.split("=") for x in res.stdout.splitlines()[0].split())
    assert got == {k: "EPERM" for k in got}
    assert "child 0" in res.stdout


def test_sandbox_open_files_are_capped(mode: str) -> None:
    code = """
        files = []
        try:
            for _ in range(5000):
                files.append(open("/dev/null"))
        except OSError as e:
            print("stopped at", len(files), e.errno)
    """
    res = _run(code, timeout_s=5, max_open_files=64)
    assert res.ok, res.stderr
    assert res.stdout.startswith("stopped at") and int(res.stdout.split()[2]) < 64


def _whole_run_cgroup() -> bool:
    cg = sandbox.RunCgroup.create(64, 0, 4)
    if cg is None:
        return False
    ok = "memory" in cg.folders
    cg.remove()
    return ok


@pytest.mark.skipif(not _whole_run_cgroup(), reason="no writable cgroup v1 memory hierarchy here (root needed): "
                                                    "memory stays limited per process (RLIMIT_AS)")
def test_sandbox_memory_is_limited_for_the_whole_run(mode: str) -> None:
    """Four processes of 150 MiB each, every one under the per-process limit of 256 MiB: together
    they pass the run's limit (256 + 64 MiB), and some are killed. No cgroup is left behind."""
    code = """
        import os
        kids = []
        for _ in range(4):
            pid = os.fork()
            if pid == 0:
                block = bytearray(150 * 1024 * 1024)
                for i in range(0, len(block), 4096):
                    block[i] = 1
                os._exit(0)
            kids.append(pid)
        print(sorted(os.waitstatus_to_exitcode(os.waitpid(k, 0)[1]) for k in kids))
    """
    res = _run(code, timeout_s=20, memory_mb=256, disk_mb=64)
    assert res.returncode == 0, res.stderr
    assert "-9" in res.stdout  # SIGKILLed by the cgroup's out-of-memory killer
    assert not list(Path("/sys/fs/cgroup").glob(f"*/**/codrl-sandbox-{os.getpid()}-*"))  # this process's runs
