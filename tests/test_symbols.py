"""Output on a stdout that cannot encode actstat's symbols (a cp1252 or ASCII redirect)."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from actstat.symbols import STAND_INS, for_encoding, needs_stand_ins
from conftest import SMALL


def test_utf8_is_left_alone():
    text = "post std 0.87 → 0.33; χ₁ = 1.004 ▁▂▃█"
    assert for_encoding(text, "utf-8") == text


def test_cp1252_keeps_what_it_has_and_replaces_the_rest():
    text = "a — b × c → d; χ₁ = 1 ▁▂▃▄▅▆▇█ ░▒▓ ✅ ☃"
    out = for_encoding(text, "cp1252")
    out.encode("cp1252")  # encodes now
    assert out == "a — b × c -> d; chi1 = 1 _.:-=+*# .:% [ok] ?"  # — and × exist in cp1252


def test_every_stand_in_is_ascii_and_distinct_per_family():
    assert all(value.isascii() for value in STAND_INS.values())
    sparks = [STAND_INS[c] for c in "▁▂▃▄▅▆▇█"]
    assert len(set(sparks)) == len(sparks), "sparkline heights must stay distinguishable"


class _Stream:
    def __init__(self, encoding):
        self.encoding = encoding


@pytest.mark.parametrize("encoding, needs", [("utf-8", False), ("UTF-8", False),
                                             ("cp1252", True), ("ascii", True),
                                             (None, False), ("no-such-codec", False)])
def test_which_streams_need_stand_ins(encoding, needs):
    assert needs_stand_ins(_Stream(encoding)) is needs


@pytest.mark.slow
@pytest.mark.parametrize("encoding", ["cp1252", "ascii"])
@pytest.mark.parametrize("args", [["compare", *SMALL], ["run", *SMALL, "-f", "markdown"],
                                  ["run", *SMALL, "--hist"]], ids=["compare", "markdown", "hist"])
def test_commands_write_to_a_narrow_encoding(encoding, args):
    env = {**os.environ, "PYTHONIOENCODING": encoding}
    done = subprocess.run([sys.executable, "-m", "actstat", *args], capture_output=True, env=env,
                          timeout=300)
    assert done.returncode == 0, done.stderr.decode(encoding, errors="replace")
    out, err = done.stdout.decode(encoding), done.stderr.decode(encoding)  # both decode
    assert "->" in out + err  # post std 1 -> L, or the verdict line's "0.87 -> 0.33"
    assert "Traceback" not in err
    if "--hist" in args:
        assert "|" in out and "post-activation histograms" in out
