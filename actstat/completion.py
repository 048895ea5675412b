"""Shell completion of option values: names (with their parameters' syntax), choices, flags,
metrics. Torch-free, so a TAB answers at once: the registries' names and parameters are spelled
out here, and tests/test_completion.py keeps them equal to the registries themselves.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import NamedTuple

from actstat.records import FLAGS, WIDTH_FLAGS

# registry name -> its parameters, in signature order (actstat/inits.py, actstat/activations.py)
INIT_PARAMETERS: dict[str, tuple[str, ...]] = {
    "randn": (), "zeros": (), "constant": ("value",), "uniform": ("low", "high"),
    "normal": ("std", "mean"), "lecun": ("distribution",), "xavier": ("distribution", "gain"),
    "kaiming": ("distribution", "mode", "gain"), "orthogonal": ("gain",), "default": (),
    "trunc_normal": ("std", "cutoff"), "fixup": (), "rezero": (), "gpt2": ("std",),
    "bert": ("std",), "lsuv": ("tolerance", "max_iterations"),
    "keep": (),  # a --model's own init (actstat/config.py's KEEP)
}
ACTIVATION_PARAMETERS: dict[str, tuple[str, ...]] = {
    "relu": (), "leaky_relu": ("negative_slope",), "general_relu": ("leak", "subtract", "clamp_max"),
    "tanh": (), "sigmoid": (), "gelu": ("approximate",), "silu": (), "selu": (), "elu": ("alpha",),
    "softplus": ("beta",), "mish": (), "identity": (),
}
NORMS = ("none", "batchnorm", "layernorm", "rmsnorm")
BLOCKS = ("plain", "residual")
NORM_POSITIONS = ("pre", "post")
DEVICES = ("auto", "cpu", "cuda", "cuda:0", "cuda:1")
DTYPES = ("float32", "float64", "float16", "bfloat16")
DATA_SOURCES = ("mnist", "gaussian", "tokens")
DATA_SUFFIXES = (".npy", ".npz", ".pt")
OPTIMIZERS = ("sgd", "adam")
PARAMETRISATIONS = ("sp", "mup")  # coord-check --param
WIDTHS = (64, 128, 256, 512, 1024)  # coord-check's default --widths (actstat/config.py)
RAY_ADDRESSES = ("local",)
SORTS = ("verdict", "gain", "name")
METRICS = ("pre_std", "post_std", "grad_std", "pre_mean", "post_mean", "grad_mean", "loss",
           "train_std", "train_mean", "train_grad_std", "train_near_zero", "train_dead")
FORMATS = ("table", "json", "csv", "markdown")
CHECK_FORMATS = ("table", "json", "markdown")
TRAIN_FORMATS = ("table", "json")

Completer = Callable[[str], list[tuple[str, str]]]


def _listed(incomplete: str, choices: dict[str, str]) -> list[tuple[str, str]]:
    """Completions of the last item of a comma-separated list (`relu,ta` -> `relu,tanh`)."""
    from actstat.registry import split_top_level

    *done, last = split_top_level(incomplete)
    head = ",".join(done) + ("," if done else "")
    return [(head + name, about) for name, about in choices.items() if name.startswith(last)]


def _labelled(parameters: dict[str, tuple[str, ...]]) -> Completer:
    """Names, then inside `name(` the parameters as `key=` (`general_relu(sub` ->
    `general_relu(subtract=`)."""

    def complete(incomplete: str) -> list[tuple[str, str]]:
        from actstat.registry import split_top_level

        last = split_top_level(incomplete)[-1]
        if "(" in last and not last.rstrip().endswith(")"):
            name, _, inside = last.partition("(")
            given = inside.rsplit(",", 1)
            typed = given[-1].lstrip()
            start = incomplete[:len(incomplete) - len(typed)]
            keys = parameters.get(name.strip(), ())
            return [(f"{start}{key}=", f"a parameter of {name.strip()}") for key in keys
                    if key.startswith(typed) and "=" not in typed]
        return _listed(incomplete, {
            name: f"parameters: {name}({', '.join(f'{key}=...' for key in keys)})" if keys
            else "" for name, keys in parameters.items()})

    return complete


def _choices(values: Iterable[str], listed: bool = False) -> Completer:
    values = tuple(values)

    def complete(incomplete: str) -> list[tuple[str, str]]:
        if listed:
            return _listed(incomplete, dict.fromkeys(values, ""))
        return [(value, "") for value in values if value.startswith(incomplete)]

    return complete


def data_sources(incomplete: str) -> list[tuple[str, str]]:
    """The named sources, and the files and directories a path could be."""
    named = [(name, "data source") for name in DATA_SOURCES if name.startswith(incomplete)]
    folder, _, stem = incomplete.rpartition("/")
    base = Path(folder or ".").expanduser()
    try:
        entries = sorted(base.iterdir())
    except OSError:
        return named
    paths = [(f"{folder}/" if folder else "") + entry.name + ("/" if entry.is_dir() else "")
             for entry in entries if entry.name.startswith(stem) and not entry.name.startswith(".")
             and (entry.is_dir() or entry.suffix in DATA_SUFFIXES)]
    return named + [(path, "") for path in paths]


def widths(incomplete: str) -> list[tuple[str, str]]:
    """coord-check's --widths: the default list, or after `64,128,` the next doubling."""
    if not incomplete:
        return [(",".join(map(str, WIDTHS)), "the default widths")]
    *done, last = incomplete.split(",")
    if done and not last and done[-1].isdigit():
        return [(f"{incomplete}{2 * int(done[-1])}", "twice the last width")]
    return []


inits = _labelled(INIT_PARAMETERS)
activations = _labelled(ACTIVATION_PARAMETERS)
norms = _choices(NORMS)
blocks = _choices(BLOCKS)
norm_positions = _choices(NORM_POSITIONS)
devices = _choices(DEVICES)
dtypes = _choices(DTYPES)
optimizers = _choices(OPTIMIZERS)
sorts = _choices(SORTS)
formats = _choices(FORMATS)
check_formats = _choices(CHECK_FORMATS)
train_formats = _choices(TRAIN_FORMATS)
parametrisations = _choices(PARAMETRISATIONS)
ray_addresses = _choices(RAY_ADDRESSES)
fail_on_flags = _choices((*FLAGS, "any"), listed=True)
width_fail_on_flags = _choices((*WIDTH_FLAGS, "any"), listed=True)
metrics = _choices(METRICS, listed=True)


# ----------------------------------------------------------------------------------------------
# bash: the word under the cursor as the shell reads it. bash's COMP_WORDS splits a word at every
# COMP_WORDBREAKS character (`--act=gen` is `--act`, `=`, `gen`; `cuda:` is `cuda`, `:`), and
# readline replaces only the text after the last of them, or after an open quote; what it
# inserts is taken as typed, so a `(` outside quotes must come escaped. The script below sends
# the command line itself; `bash_word` reads it, `bash_replies` answers for readline.

BASH_SCRIPT = r"""
%(complete_func)s() {
    local IFS=$'\n'
    COMPREPLY=( $( env COMP_LINE="$COMP_LINE" COMP_POINT="$COMP_POINT" \
                   COMP_WORDBREAKS="$COMP_WORDBREAKS" \
                   %(autocomplete_var)s=complete_bash "$1" ) )
    # a name's `(`, a parameter's `=`, a list's `,`, a directory's `/`: the word goes on
    if [[ ${#COMPREPLY[@]} -eq 1 && ${COMPREPLY[0]} == *[\(=,/] ]]; then
        compopt -o nospace
    fi
    return 0
}

complete -o default -F %(complete_func)s %(prog_name)s
"""
BASH_BREAKS = " \t\n\"'><=;|&(:"  # bash's COMP_WORDBREAKS when the script is not given one
# characters that stand for themselves in a shell word; any other is escaped with a backslash
_SHELL_PLAIN = re.compile(r"[\w@%+=:,./-]")


class BashWord(NamedTuple):
    """The word being completed at the end of a bash command line, and what readline replaces."""

    args: list[str]  # the words before it, unquoted, less the program's name
    word: str  # the whole word, unquoted (through any `=`, `(` and `:`)
    replaced: int  # how many of `word`'s characters lie before readline's own start
    quote: str  # the quote open at the cursor ("'", '"'), or ""


def bash_word(line: str, breaks: str = BASH_BREAKS) -> BashWord:
    """`line` (COMP_LINE up to COMP_POINT) read into words as the shell reads it: quotes and
    backslashes taken off, only blanks between words. Readline's own word starts after a quote
    still open at the cursor, else after the last COMP_WORDBREAKS character that no quote or
    backslash protects (a closed quote is no break: `'relu',ta` is replaced whole)."""
    words: list[str] = []
    word: str | None = None
    quote, quote_at, after_break, at = "", 0, 0, 0
    while at < len(line):
        char = line[at]
        if quote:
            if char == quote:
                quote = ""
            elif quote == '"' and char == "\\" and line[at + 1:at + 2] in ('"', "\\", "$", "`"):
                at += 1
                word = (word or "") + line[at]
            else:
                word = (word or "") + char
        elif char in " \t\n":
            if word is not None:
                words.append(word)
            word, after_break = None, 0
        else:
            word = word or ""
            if char in "'\"":
                quote, quote_at = char, len(word)
            elif char == "\\":
                at += 1
                word += line[at:at + 1]
            else:
                word += char
                if char in breaks:
                    after_break = len(word)
        at += 1
    return BashWord(words[1:], word or "", quote_at if quote else after_break, quote)


def bash_replies(word: BashWord, candidates: Iterable[str]) -> list[str]:
    """Each candidate for the whole word as readline puts it in place of its own word: from
    readline's start on, quoted as the word is (inside quotes as it is, else every character
    the shell would read otherwise escaped: `general_relu\\(subtract=`). A candidate that does
    not go on from what is typed before readline's start cannot be offered."""
    typed = word.word[:word.replaced]
    replies = []
    for candidate in candidates:
        if not candidate.startswith(typed):
            continue
        rest = candidate[word.replaced:]
        if word.quote == "'":
            if "'" in rest:
                continue
        elif word.quote == '"':
            rest = re.sub(r'(["\\$`])', r"\\\1", rest)
        else:
            rest = "".join(char if _SHELL_PLAIN.match(char) else "\\" + char for char in rest)
        replies.append(rest)
    return replies
