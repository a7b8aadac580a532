"""Process liveness (`utils.alive`), which three watchers share: a cell's watch of its coordinator, a loader
worker's watch of its cell, and the store's test for a dead local owner of a claim."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time

from sweepdae.store import dead_local_owner
from sweepdae.utils import alive


def _state(pid: int) -> str:
    with open(f"/proc/{pid}/stat") as f:
        return f.read().rsplit(")", 1)[1].split()[0]


def test_a_running_process_is_alive_and_an_unreaped_dead_one_is_not() -> None:
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    try:
        assert alive(child.pid) and not dead_local_owner(f"{socket.gethostname()}:{child.pid}")
        child.kill()
        deadline = time.monotonic() + 10
        while _state(child.pid) != "Z" and time.monotonic() < deadline:  # dead, and not yet reaped by us
            time.sleep(0.05)
        assert _state(child.pid) == "Z"
        # os.kill(pid, 0) still succeeds on a zombie: alive() must not stop there
        os.kill(child.pid, 0)
        assert not alive(child.pid) and dead_local_owner(f"{socket.gethostname()}:{child.pid}")
    finally:
        child.kill()
        child.wait()
    assert not alive(child.pid)
    assert alive(1)  # init: another user's process exists even where we may not signal it


def test_exit_when_gone_ends_the_watcher_with_its_code() -> None:
    owner = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    code = (f"from sweepdae.utils import exit_when_gone; import time; exit_when_gone({owner.pid}, 7, 'w'); "
            "time.sleep(30)")
    watcher = subprocess.Popen([sys.executable, "-c", code])
    try:
        time.sleep(1.5)
        assert watcher.poll() is None  # its owner still runs
        owner.kill()
        owner.wait()
        assert watcher.wait(timeout=10) == 7
    finally:
        owner.kill()
        watcher.kill()
        watcher.wait()
