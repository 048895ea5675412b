"""`python -m actstat` on a pseudo-terminal: colour and the progress bar appear only there."""

from __future__ import annotations

import fcntl
import os
import pty
import re
import select
import signal
import struct
import subprocess
import sys
import termios
import time

from conftest import ROOT

# an SGR sequence (ESC [ params m); its colour parameters are 30-39, 40-49, 90-97 and 100-107
SGR = re.compile(rb"\x1b\[([0-9;:]*)m")
COLOUR = re.compile(r"^(3[0-9]|4[0-9]|9[0-7]|10[0-7])$")


def colour_codes(output: bytes) -> list[str]:
    """Every SGR parameter in `output` that sets a foreground or background colour (bold, dim
    and reset are not colour: NO_COLOR leaves them)."""
    return [param for match in SGR.finditer(output)
            for param in match.group(1).decode().replace(":", ";").split(";")
            if COLOUR.match(param)]


def _default_ctrl_c() -> None:
    # as a shell starts a program in the foreground; a pytest started in the background
    # (`pytest &` without job control) would otherwise hand its ignored SIGINT down
    signal.signal(signal.SIGINT, signal.SIG_DFL)


class Terminal:
    """`python -m actstat *args` with stdout and stderr on one pseudo-terminal (`columns` wide),
    run in `cwd`, read as the process writes (stdin is closed, so nothing waits for a key)."""

    def __init__(self, *args: str, env: dict[str, str | None] | None = None, columns: int = 120,
                 cwd: object = ROOT):
        base = {k: v for k, v in os.environ.items()
                if k not in ("NO_COLOR", "FORCE_COLOR", "COLUMNS", "LINES", "TERM")}
        merged = {**base, "TERM": "xterm-256color", **(env or {})}
        master, slave = pty.openpty()
        fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 40, columns, 0, 0))
        self.process = subprocess.Popen(
            [sys.executable, "-m", "actstat", *args], cwd=cwd, stdin=subprocess.DEVNULL,
            stdout=slave, stderr=slave, env={k: v for k, v in merged.items() if v is not None},
            preexec_fn=_default_ctrl_c)
        os.close(slave)
        self.master: int | None = master
        self.output = b""

    def __enter__(self) -> Terminal:
        return self

    def __exit__(self, *exc: object) -> None:
        # a failed assertion must not leave the process running
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait()
        if self.master is not None:
            os.close(self.master)
            self.master = None

    def read_until(self, text: bytes, timeout: float) -> bool:
        """Read until `text` has appeared; False when the process closed the terminal first or
        `timeout` seconds passed."""
        deadline = time.monotonic() + timeout
        while text not in self.output:
            left = deadline - time.monotonic()
            if left <= 0 or not self._read(left):
                return text in self.output
        return True

    def finish(self, timeout: float = 120) -> int:
        """Read everything until the process closes the terminal; its exit code."""
        deadline = time.monotonic() + timeout
        try:
            while time.monotonic() < deadline and self._read(deadline - time.monotonic()):
                pass
            return self.process.wait(timeout=max(deadline - time.monotonic(), 1))
        finally:
            self.__exit__()

    def _read(self, timeout: float) -> bool:
        ready, _, _ = select.select([self.master], [], [], timeout)
        if not ready:
            return True  # nothing yet; the caller's deadline decides
        try:
            chunk = os.read(self.master, 65536)
        except OSError:  # EIO: every writer has closed the terminal (Linux)
            return False
        self.output += chunk
        return bool(chunk)


def run_on_a_terminal(*args: str, env: dict[str, str | None] | None = None) -> tuple[int, bytes]:
    """(exit code, everything printed) of `python -m actstat *args` on a terminal."""
    with Terminal(*args, env=env) as terminal:
        return terminal.finish(), terminal.output
