"""Shell completion of option values: the torch-free tables equal the registries, and what a
TAB offers for each option (through the shell's own protocol, as bash asks)."""

from __future__ import annotations

import os
import pty
import re
import select
import shlex
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import typer.main
from typer.testing import CliRunner

from actstat import activations, completion, config, inits, render
from actstat.cli import app
from actstat.outputs import CHECK_FORMATS, COORD_FORMATS, TRAIN_FORMATS
from actstat.records import FLAGS, WIDTH_FLAGS
from actstat.registry import parameters_model


def test_the_tables_are_the_registries():
    assert {
        **{name: tuple(parameters_model(factory).model_fields)
           for name, factory in inits.ALL_INITS.items()}, config.KEEP: ()} == completion.INIT_PARAMETERS
    assert {
        name: tuple(parameters_model(factory).model_fields)
        for name, factory in activations.ACTIVATIONS.items()} == completion.ACTIVATION_PARAMETERS
    assert completion.METRICS == config.METRIC_NAMES
    assert completion.DTYPES == config.DTYPES and completion.DATA_SOURCES == config.DATA_SOURCES
    assert completion.FORMATS == render.FORMATS and tuple(render.SORTS) == completion.SORTS
    assert (completion.CHECK_FORMATS, completion.TRAIN_FORMATS) == (CHECK_FORMATS, TRAIN_FORMATS)
    assert set(completion.NORMS) == set(config.ModelConfig.model_fields["norm"].annotation.__args__)
    assert all(config.DEVICE_PATTERN.match(device) for device in completion.DEVICES)
    coord = config.CoordCheckConfig.model_fields
    assert coord["param"].annotation.__args__ == completion.PARAMETRISATIONS
    assert set(completion.OPTIMIZERS) == set(coord["optimizer"].annotation.__args__)
    assert list(completion.WIDTHS) == config.DEFAULT_WIDTHS
    assert COORD_FORMATS == completion.FORMATS


def offered(words: str) -> list[str]:
    """What bash's completion function gets for the last word of `words`, typed after an open
    quote (so that readline's word is all of it, and the answers are the values themselves)."""
    head, _, last = words.rpartition(" ")
    line = f"{head} '{last}"
    done = CliRunner().invoke(app, [], prog_name="actstat", env={
        "_ACTSTAT_COMPLETE": "complete_bash", "COMP_LINE": line, "COMP_POINT": str(len(line))})
    assert done.exit_code == 0, done.output
    return done.stdout.splitlines()


@pytest.mark.parametrize("words, expected", [
    ("actstat run --init kai", ["kaiming"]),
    ("actstat run --init kaiming(m", ["kaiming(mode="]),
    ("actstat run --act gen", ["general_relu"]),
    ("actstat run --act general_relu(leak=0.1,sub", ["general_relu(leak=0.1,subtract="]),
    ("actstat run --act relu,ta", ["relu,tanh"]),
    ("actstat compare --init le", ["lecun"]),
    ("actstat run --norm ", ["none", "batchnorm", "layernorm", "rmsnorm"]),
    ("actstat run --block r", ["residual"]),
    ("actstat run --device c", ["cpu", "cuda", "cuda:0", "cuda:1"]),
    ("actstat run --dtype b", ["bfloat16"]),
    ("actstat run -f ", ["table", "json", "csv", "markdown"]),
    ("actstat check -f ", ["table", "json", "markdown"]),
    ("actstat train -f ", ["table", "json"]),
    ("actstat run --fail-on dead,grad_v", ["dead,grad_vanishing"]),
    ("actstat run --fail-on a", ["any"]),
    ("actstat check --metrics pre_std,train_g", ["pre_std,train_grad_std"]),
    ("actstat compare --sort g", ["gain"]),
    ("actstat train --optimizer a", ["adam"]),
    # coord-check's own options, and the run options it shares
    ("actstat coord-check --param ", ["sp", "mup"]),
    ("actstat coord-check --param m", ["mup"]),
    ("actstat coord-check --optimizer s", ["sgd"]),
    ("actstat coord-check --fail-on ", [*WIDTH_FLAGS, "any"]),
    ("actstat coord-check --fail-on grows_with_width,s", ["grows_with_width,shrinks_with_width"]),
    ("actstat coord-check -f ", ["table", "json", "csv", "markdown"]),
    ("actstat coord-check --device cu", ["cuda", "cuda:0", "cuda:1"]),
    ("actstat coord-check --init kaiming(m", ["kaiming(mode="]),
    ("actstat coord-check --act gel", ["gelu"]),
    ("actstat coord-check --widths ", ["64,128,256,512,1024"]),
    ("actstat coord-check --widths 32,64,", ["32,64,128"]),
    ("actstat coord-check --widths 32,6", []),
    ("actstat coord-check --ray ", ["local"]),
])
def test_values_complete(words, expected):
    assert offered(words) == expected


def test_every_flag_completes_for_fail_on():
    assert offered("actstat run --fail-on ") == [*FLAGS, "any"]


def test_data_completes_sources_and_data_files(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    np.save(tmp_path / "acts.npy", np.zeros((2, 2)))
    (tmp_path / "notes.txt").write_text("")
    (tmp_path / "idx").mkdir()
    assert offered("actstat run --data ") == ["mnist", "gaussian", "tokens", "acts.npy", "idx/"]
    assert offered("actstat run --data to") == ["tokens"]


COMMAND = typer.main.get_command(app)
# values no list can hold: numbers, and names only the user's model knows; files and
# directories are the shell's to complete
NUMBERS = ("INT", "FLOAT", "F", "INT[,INT...]")
PATHS = ("FILE", "DIR")
FREE_TEXT = {"--model", "--model-arg", "--layers", "--heatmap", "--width-arg"}


@pytest.mark.parametrize("name", list(COMMAND.commands))  # type: ignore[attr-defined]
def test_every_option_with_named_values_completes_them(name):
    """Every option that takes a value completes it, whatever the command (a file: the shell's
    own completion), unless the value is a number or a name from the user's own model."""
    command = COMMAND.commands[name]  # type: ignore[attr-defined]
    missing = []
    for param in command.params:
        if param.param_type_name != "option" or param.is_flag or param.metavar in PATHS:
            continue
        option = max(param.opts, key=len)
        if param.metavar in NUMBERS or option in FREE_TEXT:
            continue
        if not offered(f"actstat {name} {option} "):
            missing.append(option)
    assert missing == [], f"{name}: no values complete for {missing}"


# ----------------------------------------------------------------------------------------------
# bash itself: the script --show-completion prints, its function called by a real bash as
# readline calls it (COMP_WORDS split at COMP_WORDBREAKS, as bash splits them), and a real
# interactive bash given a TAB

BASH = shutil.which("bash")
PROGRAM = Path(sys.executable).with_name("actstat")  # the console script `pip install` made
WORDBREAKS = " \t\n\"'@><=;|&(:"  # bash's own default


@pytest.fixture
def bash_script(monkeypatch) -> str:
    """What `actstat --show-completion bash` prints (the shell named, not detected)."""
    monkeypatch.setenv("_TYPER_COMPLETE_TEST_DISABLE_SHELL_DETECTION", "1")
    done = CliRunner().invoke(app, ["--show-completion", "bash"], prog_name="actstat")
    assert done.exit_code == 0, done.output
    return done.stdout


def test_the_bash_script_sends_the_command_line(bash_script):
    script = bash_script
    assert 'COMP_LINE="$COMP_LINE"' in script and 'COMP_POINT="$COMP_POINT"' in script
    assert "complete -o default -F _actstat_completion actstat" in script
    sourced = CliRunner().invoke(app, [], prog_name="actstat",
                                 env={"_ACTSTAT_COMPLETE": "source_bash"})
    assert sourced.stdout.strip() == script.strip()


# (the line as typed, COMP_WORDS as bash splits it, COMPREPLY, whether the word goes on)
BASH_CASES = [
    ("actstat ru", ["actstat", "ru"], ["run"], False),
    ("actstat run --act 'general_relu(su", ["actstat", "run", "--act", "'general_relu(su"],
     ["general_relu(subtract="], True),
    ("actstat run --act general_relu\\(su", ["actstat", "run", "--act", "general_relu\\(su"],
     ["general_relu\\(subtract="], True),
    ("actstat run --init kaiming\\(mo", ["actstat", "run", "--init", "kaiming\\(mo"],
     ["kaiming\\(mode="], True),
    ('actstat run --act "general_relu(leak=0.1, sub',
     ["actstat", "run", "--act", '"general_relu(leak=0.1, sub'],
     ["general_relu(leak=0.1, subtract="], True),
    ("actstat run --act=gen", ["actstat", "run", "--act", "=", "gen"], ["general_relu"], False),
    ("actstat run --act='general_relu(le", ["actstat", "run", "--act", "=", "'general_relu(le"],
     ["general_relu(leak="], True),
    ("actstat run --act=general_relu\\(le", ["actstat", "run", "--act", "=", "general_relu\\(le"],
     ["general_relu\\(leak="], True),
    ("actstat run --device cuda:", ["actstat", "run", "--device", "cuda", ":"], ["0", "1"],
     False),
    ("actstat coord-check --fail-on grows_with_width,s",
     ["actstat", "coord-check", "--fail-on", "grows_with_width,s"],
     ["grows_with_width,shrinks_with_width"], False),
    ("actstat run --act relu,ta", ["actstat", "run", "--act", "relu,ta"], ["relu,tanh"], False),
    ("actstat run -o ou", ["actstat", "run", "-o", "ou"], [], False),  # a file: bash's own
]


@pytest.mark.slow
@pytest.mark.skipif(BASH is None, reason="no bash here")
@pytest.mark.parametrize("line, words, replies, goes_on", BASH_CASES,
                         ids=[case[0] for case in BASH_CASES])
def test_bash_completes_inside_a_name_and_after_a_break(tmp_path, bash_script, line, words,
                                                        replies, goes_on):
    assert PROGRAM.exists(), f"{PROGRAM}: the console script is missing (pip install -e .)"
    script = tmp_path / "actstat.bash"
    script.write_text(bash_script)
    quoted = " ".join(shlex.quote(word) for word in words)
    driver = f"""
        source {shlex.quote(str(script))}
        compopt() {{ local IFS=' '; echo "compopt $*" >&2; }}  # the builtin needs readline
        COMP_WORDBREAKS={shlex.quote(WORDBREAKS)}
        COMP_LINE={shlex.quote(line)}
        COMP_POINT={len(line)}
        COMP_WORDS=({quoted})
        COMP_CWORD={len(words) - 1}
        _actstat_completion {shlex.quote(str(PROGRAM))} {shlex.quote(words[-1])} \
            {shlex.quote(words[-2])}
        printf '%s\\n' "${{COMPREPLY[@]}}"
    """
    done = subprocess.run([BASH, "--norc", "--noprofile", "-c", driver], capture_output=True,
                          text=True, timeout=120, cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert [reply for reply in done.stdout.splitlines() if reply] == replies, done.stderr
    assert ("compopt -o nospace" in done.stderr) == goes_on, done.stderr


# (what is typed before TAB, the words the shell then reads from the completed line)
READLINE_CASES = [
    ("actstat run --act general_relu\\(su", ["actstat", "run", "--act", "general_relu(subtract="]),
    ("actstat run --act 'general_relu(su", ["actstat", "run", "--act", "general_relu(subtract="]),
    ("actstat run --act=general_relu\\(le", ["actstat", "run", "--act=general_relu(leak="]),
    ("actstat run --init kaiming\\(mode=fan_in,gai", ["actstat", "run", "--init",
                                                       "kaiming(mode=fan_in,gain="]),
]


@pytest.mark.slow
@pytest.mark.skipif(BASH is None, reason="no bash here")
@pytest.mark.parametrize("typed, words", READLINE_CASES, ids=[case[0] for case in READLINE_CASES])
def test_a_tab_in_an_interactive_bash_completes_the_line(tmp_path, bash_script, typed, words):
    """A real bash on a pseudo-terminal, readline and all: the line typed, TAB, then the
    completed line printed word by word (printf put in front of it, Enter)."""
    assert PROGRAM.exists(), f"{PROGRAM}: the console script is missing (pip install -e .)"
    script = tmp_path / "actstat.bash"
    script.write_text(bash_script)
    env = {**os.environ, "PATH": f"{PROGRAM.parent}{os.pathsep}{os.environ['PATH']}",
           "INPUTRC": "/dev/null", "TERM": "dumb", "PS1": "$ "}
    master, slave = pty.openpty()
    shell = subprocess.Popen([BASH, "--norc", "--noprofile", "-i"], stdin=slave, stdout=slave,
                             stderr=slave, cwd=tmp_path, env=env, start_new_session=True)
    os.close(slave)
    try:
        keys = (f"source {shlex.quote(str(script))}\r{typed}\t\x01printf '<%s>' \r" + "exit\r")
        os.write(master, keys.encode())
        output = b""
        deadline = time.monotonic() + 60
        while b"\n<" not in output.replace(b"\r", b"") or b">" not in output.rsplit(b"<", 1)[-1]:
            ready, _, _ = select.select([master], [], [], max(0.0, deadline - time.monotonic()))
            if not ready:
                break
            try:
                output += os.read(master, 4096)
            except OSError:
                break
    finally:
        shell.kill()
        shell.wait()
        os.close(master)
    printed = re.findall(r"^((?:<[^<>\r\n]*>)+)", output.decode(errors="replace"), re.MULTILINE)
    assert printed, output.decode(errors="replace")
    assert re.findall(r"<([^<>]*)>", printed[-1]) == words
