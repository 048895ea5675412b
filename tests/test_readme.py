"""The README and docs/ stay true: CI runs the README's test command, every name is documented,
every link resolves, and every `$ actstat ...` example runs and prints what the page shows, to
what is stable across machines (see DEVELOPERS.md, "Examples in the docs")."""

from __future__ import annotations

import math
import re
import shlex
import shutil
from pathlib import Path
from unittest import mock

import pytest
from rich.cells import cell_len
from typer.testing import CliRunner

from actstat import cli
from actstat.activations import ACTIVATIONS
from actstat.inits import BIAS_INITS, DATA_INITS, INITS, RESIDUAL_INITS
from actstat.records import FLAGS
from actstat.render import FORMATS, NOISE
from conftest import ROOT

README = ROOT / "README.md"
PAGES = [README, *sorted((ROOT / "docs").glob("*.md"))]


def _text(path: Path) -> str:
    return path.read_text(encoding="utf-8")


def test_ci_runs_the_readmes_test_command():
    ci = (ROOT / ".ci" / "run").read_text(encoding="utf-8")
    command = [line for line in ci.splitlines() if line.strip() and not line.startswith("#")][-1]
    assert command.startswith("pip install -e '.[test]'")
    quick_start = _text(README).split("## Quick start", 1)[1].split("```bash", 1)[1]
    lines = quick_start.split("```", 1)[0].strip().splitlines()
    assert len(lines) == 2, "the README opens with exactly two set-up commands"
    assert lines[1] == command
    assert "actstat run" in lines[0]


def test_the_readme_reads_in_two_minutes():
    assert len(_text(README).encode("utf-8")) <= 15_000, "move reference material into docs/"


@pytest.mark.parametrize("name", [*INITS, *RESIDUAL_INITS, *DATA_INITS, *ACTIVATIONS,
                                  *BIAS_INITS, *FLAGS, *FORMATS])
def test_every_name_is_documented(name):
    assert any(f"`{name}`" in _text(page) for page in PAGES)


def test_exit_codes_are_documented():
    section = _text(README).split("## Exit codes", 1)[1].split("\n## ", 1)[0]
    for code in ("0", "1", "2", "3"):
        assert f"| {code} |" in section
    assert "--debug" in section


# ---- links -------------------------------------------------------------------------------------

LINK = re.compile(r"!?\[[^\]]*\]\(([^)\s]+)\)")
FENCE = re.compile(r"^```.*?^```", flags=re.S | re.M)


def _anchors(path: Path) -> set[str]:
    """GitHub's heading anchors: lower case, punctuation dropped, spaces to hyphens, repeats
    numbered."""
    anchors: set[str] = set()
    for heading in re.findall(r"^#{1,6} (.+)$", FENCE.sub("", _text(path)), flags=re.M):
        slug = re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")
        candidate, n = slug, 0
        while candidate in anchors:
            n += 1
            candidate = f"{slug}-{n}"
        anchors.add(candidate)
    return anchors


def _links(page: Path) -> list[str]:
    return [target for target in LINK.findall(FENCE.sub("", _text(page)))
            if not re.match(r"[a-z]+:", target)]


@pytest.mark.parametrize("page", PAGES, ids=[p.name for p in PAGES])
def test_every_relative_link_resolves(page):
    for target in _links(page):
        file, _, anchor = target.partition("#")
        path = (page.parent / file).resolve() if file else page
        assert path.exists(), f"{page.name}: link to missing {target}"
        if anchor:
            assert path.suffix == ".md", f"{page.name}: anchor into a non-Markdown file: {target}"
            assert anchor in _anchors(path), f"{page.name}: no heading #{anchor} in {path.name}"


def test_the_link_check_sees_links_and_headings():
    assert "../README.md#exit-codes" in _links(ROOT / "docs" / "commands.md")
    assert {"exit-codes", "quick-start"} <= _anchors(README)
    assert "actstat-run" in _anchors(ROOT / "docs" / "commands.md")


# ---- examples ----------------------------------------------------------------------------------

EXAMPLE = re.compile(r"```console\n\$ (actstat [^\n]*)\n(.*?)```", flags=re.S)
EXAMPLES = [(page, command, shown) for page in PAGES
            for command, shown in EXAMPLE.findall(_text(page))]

# A number: a sign only where no word or number precedes it, thousands separators, a decimal part,
# an exponent, a percent sign; never the digits inside a word (float32, lesson8.json, cuda:0). Or a
# mean that is float noise, which the tables print as `≈0` (actstat/render.py, mean_text).
NUMBER = (rf"{NOISE}(?![\w.])"
          r"|(?<![\w.])-?(?:\d{1,3}(?:,\d{3})+|\d+)(?:\.\d+)?(?:e[-+]?\d+)?%?(?![\w])")
SPARK = "▁▂▃▄▅▆▇█"
SHADES = " ░▒▓█"
BARS = r"[▁▂▃▄▅▆▇]+[▁▂▃▄▅▆▇█]*|█[▁▂▃▄▅▆▇█]*(?=\s|$)|│[ ░▒▓█]*│"
TOKEN = re.compile(rf"(?P<bar>{BARS})|(?P<number>{NUMBER})|(?P<rule>─+)|(?P<space>\s+)|(?P<text>.)",
                   flags=re.M)

RTOL = 0.05    # stable numbers: BLAS and thread counts move them by 1e-6 relative, a wrong one by more
# Below this, a value is float noise (constant+relu's grad std 3.8e-13 should be 0). Means that are
# noise print as `≈0` and never reach it; it stays tight because a vanishing network's real numbers
# are small too (default+relu's post std 1.11e-08 must not pass for 2.11e-08).
ATOL = 1e-9
# From here up a number is a product of per-layer factors (an exploding std, a gradient ratio), and
# a chaotic scheme multiplies rounding by chi1 per layer: randn + tanh's layer-1/layer-20 gradient
# ratio read 9.40e+06 with AVX2 kernels and 4.74e+06 with ATEN_CPU_CAPABILITY=default on the same
# machine. Such a number is checked to its order of magnitude, the figure a reader takes from it.
LARGE = 1e4


def tokens(output: str) -> list[tuple[str, str]]:
    """(kind, text) with runs of spaces and of table rule characters collapsed: a column one digit
    wider moves the others but changes nothing a reader compares."""
    out: list[tuple[str, str]] = []
    for match in TOKEN.finditer(output.strip()):
        kind = match.lastgroup
        if kind == "space":
            out.append(("text", "\n" if "\n" in match.group() else " "))
        elif kind == "rule":
            out.append(("text", "─"))
        else:
            out.append((kind, match.group()))
    # merge neighbouring text, dropping spaces at line ends (a shorter last column leaves none)
    merged: list[tuple[str, str]] = []
    for kind, text in out:
        if kind == "text" and merged and merged[-1][0] == "text":
            merged[-1] = ("text", merged[-1][1] + text)
        else:
            merged.append((kind, text))
    return [(k, re.sub(r" ?\n ?", "\n", t) if k == "text" else t) for k, t in merged]


def _value(number: str) -> float:
    return float(number.rstrip("%").replace(",", ""))


def _is_count(number: str) -> bool:
    return re.fullmatch(r"\d+", number.replace(",", "")) is not None


def numbers_agree(shown: str, printed: str) -> bool:
    """Whole numbers that both print as such (layers, units, counts) must be equal; any other pair
    within RTOL of the larger, or both within ATOL of zero; two beyond LARGE within a factor of 10.
    A mean printed as float noise (`≈0`) agrees only with `≈0`: which side of the noise rule a mean
    falls on does not depend on the machine (its noise sits far below the rule's threshold)."""
    if NOISE in (shown, printed):
        return shown == printed
    if _is_count(shown) and _is_count(printed):
        return shown == printed
    if shown.endswith("%") != printed.endswith("%"):
        return False
    a, b = _value(shown), _value(printed)
    if min(abs(a), abs(b)) >= LARGE and (a > 0) == (b > 0):
        return abs(math.log10(abs(a) / abs(b))) <= 1
    return abs(a - b) <= max(RTOL * max(abs(a), abs(b)), ATOL)


def bars_agree(shown: str, printed: str) -> bool:
    """Sparklines and histogram rows: same length, each cell within one shade (a value on the edge
    of a level, or one sample on the edge of a bin, moves it by one)."""
    if len(shown) != len(printed):
        return False
    for s, p in zip(shown, printed):
        ramp = SHADES if "│" in shown or s in "░▒▓" or p in "░▒▓" else SPARK
        if s != p and (s not in ramp or p not in ramp or abs(ramp.index(s) - ramp.index(p)) > 1):
            return False
    return True


def differences(shown: str, printed: str) -> list[str]:
    """What a reader would see differ between an example's shown output and a fresh run; [] when
    they agree to what is stable across machines."""
    a, b = tokens(shown), tokens(printed)
    problems = []
    if [k for k, _ in a] != [k for k, _ in b]:
        return ["the output's shape differs (a line, a number or a bar appeared or went)"]
    for (kind, s), (_, p) in zip(a, b):
        if kind == "text" and s != p:
            problems.append(f"text {s!r} is now {p!r}")
        elif kind == "number" and not numbers_agree(s, p):
            problems.append(f"number {s} is now {p}")
        elif kind == "bar" and not bars_agree(s, p):
            problems.append(f"bar {s} is now {p}")
    return problems


@pytest.mark.parametrize("shown, printed", [
    ("post std 0.8738 → 0.3289", "post std 0.8739 → 0.329"),           # rounding of the last digit
    ("gain 1.01e+16", "gain 1.0100001e+16"),
    ("grad 3.80e-13", "grad 0"),                                       # float noise around zero
    ("mean ≈0 std 1", "mean ≈0 std 1.0000001"),                        # a noise mean (BatchNorm)
    ("χ₁ ≈ 1.2, ≈0", "χ₁ ≈ 1.19, ≈0"),
    ("grad 1/L 9.40e+06", "grad 1/L 4.74e+06"),                        # a chaotic product
    ("a   0.88   b\n ────\n", "a   0.8801   b\n ──────\n"),            # a wider column
    ("█▇▆▅▄▃▂▁", "█▇▆▅▅▃▂▁"), ("│█▓▒░ │", "│█▓▓░ │"),
])
def test_examples_agree_despite_rounding(shown, printed):
    assert differences(shown, printed) == []


@pytest.mark.parametrize("shown, printed", [
    ("post std 0.8738 → 0.3289", "post std 0.8738 → 0.3589"),          # 9 % off
    ("healthy — no flags", "vanishing — no flags"),                    # a verdict
    ("20 of 20 layers", "19 of 20 layers"),                            # a count
    ("dead 3.0%", "dead 3.0"), ("grad 1.11e-08", "grad 2.11e-08"),
    ("mean ≈0", "mean 4.61e-09"), ("mean 1.86e-09", "mean ≈0"),        # noise shown as a number
    ("mean ≈0", "mean 0.02"), ("mean ≈0", "mean 0"), ("mean ≈0", "mean ≈0.5"),
    ("grad 1/L 1.01e+16", "grad 1/L 9.9e+14"), ("std 1.2e+04", "std -1.2e+04"),
    ("a 1\nb 2", "a 1"),                                               # a missing line
    ("█▇▆▅▄▃▂▁", "█▇▆▅▂▃▂▁"), ("█▇▆▅▄▃▂▁", "█▇▆▅▄▃▂"), ("│█▓▒░ │", "│█▓▒░█│"),
    ("lesson8.json", "lesson9.json"),                                  # digits inside a word
])
def test_examples_catch_a_wrong_output(shown, printed):
    assert differences(shown, printed) != []


@pytest.fixture(scope="module")
def example_dirs(tmp_path_factory):
    """One directory per page, its examples run in order there: later ones (check) read what
    earlier ones (baseline) wrote, as a reader following the page would."""
    directories = {}
    for page in PAGES:
        directory = tmp_path_factory.mktemp(page.stem)
        (directory / "configs").symlink_to(ROOT / "configs")
        # a copy: importing a factory writes __pycache__ beside it, here and not in the repository
        shutil.copytree(ROOT / "examples", directory / "examples",
                        ignore=shutil.ignore_patterns("__pycache__"))
        directories[page] = directory
    return directories


OUTPUT_OPTIONS = ("-o", "--output", "--plot", "--junit-xml", "--tensorboard")
COMMAND = re.compile(r"(?:^\$ |`)(actstat [^`\n]*)", flags=re.M)


@pytest.mark.parametrize("page", PAGES, ids=[p.name for p in PAGES])
def test_examples_write_only_into_the_directory_they_run_in(page):
    """A reader following a page in a clone of the repository, as the docs check does in its
    scratch directory, writes no tracked file and nothing outside the working directory."""
    for command in COMMAND.findall(_text(page)):
        words = shlex.split(command.split("#")[0].replace("...", ""))
        for option, value in zip(words, words[1:]):
            if option in OUTPUT_OPTIONS:
                assert "/" not in value and not value.startswith(("~", "..")), (
                    f"{page.name}: `{command}` writes {value} outside its working directory")


def test_the_pages_have_examples():
    assert sum(page == README for page, _, _ in EXAMPLES) >= 3
    assert len(EXAMPLES) >= 10


# The terminal every page shows: STYLE.md's reader's, 80 columns wide.
COLUMNS = 80


def too_wide(shown: str) -> list[str]:
    """The lines of an example's output that an 80-column terminal could not show: every line
    longer than 80 cells but one word that nothing may break (a message's file path stands on
    its own line; a table folds a longer cell)."""
    return [line for line in shown.splitlines()
            if cell_len(line) > COLUMNS and " " in line.strip()]


def test_the_check_of_widths_sees_a_long_line():
    assert too_wide("a b\n" + "x " * 41) == ["x " * 41]
    assert too_wide("/" + "p" * 90) == []  # one word: wrapping cannot shorten it


@pytest.mark.parametrize("page", PAGES, ids=[p.name for p in PAGES])
def test_every_example_shows_an_80_column_terminal(page):
    """What the pages show is what a reader's 80-column terminal shows (`_run`): tables fitted,
    their left-out columns named, messages wrapped; not a pipe's full width."""
    for _, command, shown in [example for example in EXAMPLES if example[0] == page]:
        assert not too_wide(shown), (
            f"{page.name}: `{command}` shows lines wider than {COLUMNS} columns; run pytest "
            "--update-golden:\n" + "\n".join(too_wide(shown)))


def _run(command: str) -> str:
    """What `$ actstat ...` shows in an 80-column terminal without colour: tables fitted to 80
    columns, messages on stderr wrapped at 80, stdout and stderr in the order they came, no space
    at a line's end; its exit code checked: N for a command ending in `# exit N`, else 0. The CLI
    asks one function whether a stream is a terminal and how wide (`cli._terminal_columns`);
    here every stream answers 80 (tests/test_width.py runs the examples on real ones)."""
    args = shlex.split(command.split("#")[0])[1:]
    match = re.search(r"# exit (\d+)", command)
    expected_code = int(match.group(1)) if match else 0
    with mock.patch.object(cli, "_terminal_columns", lambda stream: COLUMNS):
        result = CliRunner().invoke(cli.app, args, env={"NO_COLOR": "1"})
    assert result.exit_code == expected_code, result.output
    return "\n".join(line.rstrip() for line in result.output.splitlines())


@pytest.mark.slow
@pytest.mark.parametrize("page, command, shown", EXAMPLES,
                         ids=[f"{p.relative_to(ROOT)}: {c}" for p, c, _ in EXAMPLES])
def test_examples_print_what_the_page_shows(page, command, shown, example_dirs, monkeypatch,
                                            request):
    monkeypatch.chdir(example_dirs[page])
    printed = _run(command)
    if request.config.getoption("--update-golden"):
        text = _text(page)
        old = f"```console\n$ {command}\n{shown}```"
        assert old in text
        page.write_text(text.replace(old, f"```console\n$ {command}\n{printed.rstrip()}\n```"),
                        encoding="utf-8")
        return
    problems = differences(shown, printed)
    assert not problems, (
        f"{page.relative_to(ROOT)}: the example's output is stale: run pytest --update-golden and "
        "review the diff\n" + "\n".join(problems[:10]))



# The examples that show a mean as float noise: the numbers that differ most between machines, run
# again as far from the default as one process goes (one thread, the torch reductions instead of
# the C kernel). A fresh directory each: these read no file an earlier example wrote.
NOISY = [(page, command, shown) for page, command, shown in EXAMPLES if NOISE in shown]


def test_some_examples_show_a_noise_mean():
    # LayerNorms' means: the residual MLP's (docs/commands.md) and GPT-2's (docs/transformers.md)
    assert len(NOISY) >= 2


@pytest.mark.slow
@pytest.mark.parametrize("page, command, shown", NOISY,
                         ids=[f"{p.relative_to(ROOT)}: {c}" for p, c, _ in NOISY])
def test_noise_means_print_alike_on_one_thread_without_the_kernel(page, command, shown, tmp_path,
                                                                  monkeypatch, request):
    import torch

    import actstat.fused

    if request.config.getoption("--update-golden"):
        pytest.skip("compares with the page as it was read, which --update-golden rewrites")
    for link in ("configs", "examples"):
        (tmp_path / link).symlink_to(ROOT / link)
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(actstat.fused, "ENABLED", False)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        printed = _run(command)
    finally:
        torch.set_num_threads(threads)
    problems = differences(shown, printed)
    assert not problems, f"{page.relative_to(ROOT)}, one thread, no kernel:\n" + "\n".join(
        problems[:10])
