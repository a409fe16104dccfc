"""An emulated aarch64 machine for tests and benchmarks: the cached arm64 Debian root
(scripts/arm64-root, run under qemu-user), the project installed into it by the phone install
script (scripts/phone-install, the steps docs/ANDROID.md gives a phone user), and processes
started inside it on this machine's network (127.0.0.1).

Emulated ARM is several times slower than this machine and says nothing about a phone's speed:
it checks that the code, its wheels and its numbers hold on aarch64.
"""

from __future__ import annotations

import fcntl
import hashlib
import os
import queue
import shutil
import subprocess
import tempfile
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import IO

REPO = Path(__file__).resolve().parents[1]
ROOT_SCRIPT = REPO / "scripts" / "arm64-root"
# Inside the root, one per checkout (the root is shared by every checkout on this machine, and
# one checkout's install must not swap the code under another's running test): where the phone
# install script puts the node, and the copy of this repository it installs from.
_CHECKOUT = hashlib.sha256(str(REPO).encode()).hexdigest()[:10]
VENV = f"/opt/swarm-venv-{_CHECKOUT}"
SOURCE = f"/tmp/swarm-src-{_CHECKOUT}"
BUILD_TIMEOUT_S = 900  # debootstrap of a minimal arm64 root: ~2.5 min on a quiet machine
INSTALL_TIMEOUT_S = 900  # every dependency from aarch64 wheels, under emulation: ~1-2 min


def unavailable() -> str | None:
    """Why this machine cannot run an arm64 root, or None when it can."""
    if os.geteuid() != 0:
        return "an arm64 root needs root (debootstrap, chroot, mounts; scripts/arm64-root)"
    if shutil.which("apt-get") is None and shutil.which("debootstrap") is None:
        return "an arm64 root needs debootstrap and qemu-user-static (no apt-get here to install them)"
    return None


def _tail(text: str, lines: int = 30) -> str:
    return "\n".join(text.splitlines()[-lines:])


def build_root() -> Path:
    """The cached arm64 root, built first when missing (scripts/arm64-root build)."""
    done = subprocess.run([str(ROOT_SCRIPT), "build"], capture_output=True, text=True, timeout=BUILD_TIMEOUT_S)
    if done.returncode != 0:
        raise RuntimeError(f"scripts/arm64-root build failed ({done.returncode}):\n{_tail(done.stderr)}")
    return Path(done.stdout.strip().splitlines()[-1])


def source_files() -> list[str]:
    """This checkout's files as git sees them: tracked, and new ones not ignored (no .venv, no builds)."""
    listed = subprocess.run(["git", "ls-files", "--cached", "--others", "--exclude-standard", "-z"], cwd=REPO,
                            capture_output=True, check=True).stdout.decode()  # fmt: skip
    return [name for name in listed.split("\0") if name and (REPO / name).is_file()]


def install_project(root: Path) -> str:
    """Copy this checkout into the root and run the phone install script there, unmodified, as
    a phone user does (`sh scripts/phone-install`); returns what it printed.

    One install at a time (a lock: scripts/test starts one in the background while the other
    checks run); when the root's node was already installed from exactly these files, that
    install's output is returned instead of installing again."""
    files = source_files()
    digest = hashlib.sha256()
    for name in files:
        digest.update(name.encode() + b"\0" + (REPO / name).read_bytes() + b"\0")
    stamp, log = root / VENV.lstrip("/") / ".swarm-source", root / VENV.lstrip("/") / ".swarm-install.log"
    with open(root / ".swarm-install.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if stamp.is_file() and stamp.read_text() == digest.hexdigest() and log.is_file():
            return log.read_text()
        stamp.unlink(missing_ok=True)
        dest = root / SOURCE.lstrip("/")
        shutil.rmtree(dest, ignore_errors=True)
        for name in files:
            (dest / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(REPO / name, dest / name)
        done = subprocess.run(command("env", f"SWARM_VENV={VENV}", "sh", f"{SOURCE}/scripts/phone-install"),
                              capture_output=True, text=True, timeout=INSTALL_TIMEOUT_S)  # fmt: skip
        output = done.stdout + done.stderr
        if done.returncode != 0:
            raise RuntimeError(f"scripts/phone-install failed in the arm64 root ({done.returncode}):\n{_tail(output)}")
        _add_multicast_if_stand_in(root)
        log.write_text(output)
        stamp.write_text(digest.hexdigest())
    return output


def _add_multicast_if_stand_in(root: Path) -> None:
    """qemu-user lacks IP_MULTICAST_IF, which zeroconf sets (tests/qemu_multicast_if.py says
    how it is stood in for); a .pth file loads the stand-in in every Python of the node's venv."""
    [site] = (root / VENV.lstrip("/") / "lib").glob("python3.*/site-packages")
    shutil.copy(Path(__file__).with_name("qemu_multicast_if.py"), site / "_swarm_qemu_multicast_if.py")
    (site / "_swarm_qemu_multicast_if.pth").write_text("import _swarm_qemu_multicast_if\n")


def command(*args: str, binds: Iterable[str] = ()) -> list[str]:
    """`args` as run inside the root (chroot; /proc and /dev mounted, and `binds`, SRC:DST[:ro])."""
    options = [part for bind in binds for part in ("--bind", bind)]
    return [str(ROOT_SCRIPT), "run", *options, "--", *args]


def venv(program: str) -> str:
    """A program of the installed node's virtual environment, as a path inside the root."""
    return f"{VENV}/bin/{program}"


class Lines:
    """The lines a process prints on stdout, read on a thread so that waits have deadlines."""

    def __init__(self, proc: subprocess.Popen[str]) -> None:
        self.proc = proc
        self.seen: list[str] = []
        self._lines: queue.Queue[str | None] = queue.Queue()
        assert proc.stdout is not None
        threading.Thread(target=self._read, args=(proc.stdout,), daemon=True).start()

    def _read(self, stream: IO[str]) -> None:
        for line in stream:
            self._lines.put(line.rstrip("\n"))
        self._lines.put(None)

    def wait_for(self, wanted: Callable[[str], bool], timeout_s: float, what: str) -> str:
        deadline = time.monotonic() + timeout_s
        while (left := deadline - time.monotonic()) > 0:
            try:
                line = self._lines.get(timeout=left)
            except queue.Empty:
                break
            if line is None:
                raise AssertionError(f"the process ended ({self.proc.wait()}) before {what}; it printed "
                                     f"{self.seen}; its stderr ends:\n{stderr_tail(self.proc)}")
            self.seen.append(line)
            if wanted(line):
                return line
        raise AssertionError(f"no {what} within {timeout_s}s; it printed {self.seen}; its stderr ends:\n"
                             f"{stderr_tail(self.proc)}")


def start(args: Sequence[str], binds: Iterable[str] = ()) -> subprocess.Popen[str]:
    """A process inside the root, its stdout piped (read it with `Lines`), its stderr kept in a
    temporary file that `Lines` shows when the process fails a wait."""
    log = tempfile.TemporaryFile("w+")  # noqa: SIM115  # closed when collected
    proc = subprocess.Popen(command(*args, binds=binds), stdout=subprocess.PIPE, stderr=log, text=True,
                            start_new_session=True)  # fmt: skip
    proc.log = log  # type: ignore[attr-defined]
    return proc


def stderr_tail(proc: subprocess.Popen[str], lines: int = 20) -> str:
    log = getattr(proc, "log", None)
    if log is None:
        return ""
    log.seek(0)
    kept = [line for line in log.read().splitlines() if "cpuinfo" not in line]  # qemu-user without /sys
    return "\n".join(kept[-lines:])


def stop(proc: subprocess.Popen[str], timeout_s: float = 30) -> int:
    """SIGTERM, then SIGKILL if it is still there after `timeout_s`; its exit code."""
    if proc.poll() is None:
        proc.terminate()
        try:
            return proc.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            proc.kill()
    return proc.wait()


if __name__ == "__main__":  # scripts/test: build the root and install into it ahead of the tests
    reason = unavailable()
    if reason:
        raise SystemExit(f"tests/arm64.py: {reason}")
    print(install_project(build_root())[-2000:])
