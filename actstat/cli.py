"""Command line: parse options, call the pipeline, print, choose the exit code.

Only this module prints or exits. The options are declared in actstat/options.py, and what each
command writes in each format in actstat/outputs.py; here a command parses, measures, delivers.
Importing it must not import torch (`--help` stays instant): every import of the pipeline
happens inside a command.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Annotated, Any, NamedTuple

import typer
from typer.core import TyperCommand, TyperGroup

from actstat import __version__
from actstat import options as opt  # torch-free, like everything imported here
from actstat.allocator import tune_malloc
from actstat.errors import ActstatError

EXIT_OK, EXIT_FLAGGED, EXIT_USAGE, EXIT_CRASH = 0, 1, 2, 3
DEBUG_ENV = "ACTSTAT_DEBUG"  # =1: a crash shows its traceback, as --debug does
_debug = False  # set by --debug for the command now running


class _PlainHelpFlag:
    """Flags (--help, --quiet, --install-completion...) without the `<bool>` value placeholder
    that Typer shows in --help for every flag, as if it took a value."""

    def get_params(self, ctx: Any) -> Any:
        params = super().get_params(ctx)  # type: ignore[misc]
        for param in params:
            if getattr(param, "is_flag", False) and param.metavar is None:
                param.metavar = ""
        return params


class _PlainUsage:
    """A required argument named in the usage line as Click names it (`actstat plot [OPTIONS]
    REPORT`), not in the braces Typer adds (`{REPORT}`), which read as a placeholder to type."""

    def collect_usage_pieces(self, ctx: Any) -> list[str]:
        pieces = super().collect_usage_pieces(ctx)  # type: ignore[misc]
        return [piece[1:-1] if piece.startswith("{") and piece.endswith("}") else piece
                for piece in pieces]


class _FittedHelp:
    """--help drawn by actstat/helpview.py: fitted to the terminal, options in panels."""

    def format_help(self, ctx: Any, formatter: Any) -> None:
        from rich.console import Console

        from actstat.helpview import help_renderables

        console = Console(highlight=False, soft_wrap=False)
        for renderable in help_renderables(self, ctx, console.width):
            console.print(renderable)


class _Command(_FittedHelp, _PlainUsage, _PlainHelpFlag, TyperCommand):
    pass


class _OneLineErrors(_FittedHelp, _PlainHelpFlag, TyperGroup):
    """Typer's group, with usage errors (unknown option, missing value) as one line on stderr."""

    def main(self, args: Any = None, prog_name: str | None = None, complete_var: str | None = None,
             standalone_mode: bool = True, **extra: Any) -> Any:
        tune_malloc()  # first thing: loading a config imports torch, which starts threads
        global _debug
        _debug = os.environ.get(DEBUG_ENV, "") not in ("", "0")
        try:
            code = super().main(args, prog_name, complete_var, standalone_mode=False, **extra)
        except ActstatError as err:  # a user's mistake that no command caught: still one line
            _say(f"actstat: error: {err}")
            code = EXIT_USAGE
        except typer.TyperException as err:  # Typer's usage errors: bad option, missing value
            ctx = getattr(err, "ctx", None)
            if type(err).__name__ == "NoArgsIsHelpError" and ctx is not None:
                typer.echo(ctx.get_help())
                code = EXIT_OK
            else:
                path = ctx.command_path if ctx is not None else "actstat"
                _say(f"{path}: error: {_usage_message(err)} (see '{path} --help')")
                code = getattr(err, "exit_code", EXIT_USAGE)
        except typer.Abort:
            code = 130
        except Exception as err:  # a bug: exit 3, so CI can tell a crash from a regression (1)
            code = _crashed(err)
        if code == 130:  # Ctrl-C: Typer turns KeyboardInterrupt into exit code 130
            _say("actstat: interrupted; no output was written (an existing file is as it was)")
        if not standalone_mode:
            return code
        sys.exit(code if isinstance(code, int) else EXIT_OK)

    def _main_shell_completion(self, ctx_args: Any, prog_name: str,
                               complete_var: str | None = None) -> None:
        """bash as actstat's own script asks (`completion.BASH_SCRIPT`: the command line itself,
        not bash's COMP_WORDS, which splits `'general_relu(su` and `--act=gen` at `(` and `=`);
        every other shell, and a bash script installed by an earlier actstat, as Typer answers."""
        var = complete_var or f"_{prog_name}_COMPLETE".replace("-", "_").upper()
        instruction = os.environ.get(var, "")
        if instruction == "source_bash":
            from typer._completion_shared import get_completion_script

            typer.echo(get_completion_script(prog_name=prog_name, complete_var=var,
                                             shell="bash"))
            sys.exit(0)
        if instruction == "complete_bash" and "COMP_LINE" in os.environ:
            for reply in _bash_completions(self, ctx_args, prog_name, var):
                typer.echo(reply)
            sys.exit(0)
        super()._main_shell_completion(ctx_args, prog_name, complete_var)  # type: ignore[misc]


def _bash_completions(command: Any, ctx_args: Any, prog_name: str, var: str) -> list[str]:
    """What bash's TAB offers for the word at COMP_POINT of COMP_LINE, as readline takes it."""
    from typer._completion_classes import BashComplete  # Typer's Click completion, bash's class

    from actstat.completion import BASH_BREAKS, bash_replies, bash_word

    line = os.environ.get("COMP_LINE", "")
    point = os.environ.get("COMP_POINT", "")
    word = bash_word(line[:int(point)] if point.isdigit() else line,
                     os.environ.get("COMP_WORDBREAKS") or BASH_BREAKS)
    args, incomplete, head = word.args, word.word, ""
    if incomplete.startswith("-") and "=" in incomplete:  # --act=gen: the value completes
        name, _, incomplete = incomplete.partition("=")
        args, head = [*args, name], name + "="
    items = BashComplete(command, ctx_args, prog_name, var).get_completions(args, incomplete)
    # a file or a directory: no answer, and bash completes it itself (`complete -o default`)
    return bash_replies(word, [head + str(item.value) for item in items if item.type == "plain"])


def _own_bash_script() -> None:
    """--install-completion and --show-completion write actstat's bash script (Typer keeps its
    scripts in one table, read when either runs; tests/test_completion.py runs what they print)."""
    from typer import _completion_shared

    from actstat.completion import BASH_SCRIPT

    _completion_shared._completion_scripts["bash"] = BASH_SCRIPT


_own_bash_script()

app = typer.Typer(
    name="actstat",
    cls=_OneLineErrors,
    help="Per-layer activation statistics of a neural network (the built-in MLP or your own "
    "PyTorch model): does your init keep the signal alive?",
    rich_markup_mode="rich",
    context_settings={"help_option_names": ["-h", "--help"]},
    no_args_is_help=True,
)


def _usage_message(err: Any) -> str:
    """Click's message, but an unknown option suggests the one option it most looks like (not
    Click's three loosest matches: `--dept` is `--depth`, not `--plot` or `--wide`)."""
    name = getattr(err, "option_name", None)
    if type(err).__name__ != "NoSuchOption" or not name:
        return err.format_message()
    from actstat.registry import closest

    ctx = getattr(err, "ctx", None)
    known = [option for param in (ctx.command.get_params(ctx) if ctx is not None else [])
             for option in (*param.opts, *param.secondary_opts) if option.startswith("--")]
    group = ctx.parent.command if ctx is not None and ctx.parent is not None else None
    elsewhere = [command for command, cmd in getattr(group, "commands", {}).items()
                 if any(name in (*param.opts, *param.secondary_opts)
                        for param in cmd.params)] if ctx is not None else []
    if elsewhere:
        return (f"{ctx.info_name} has no option {name} (it is an option of "
                f"{', '.join(elsewhere)})")
    guess = closest(name, known)
    return f"no such option {name}" + (f" (did you mean {guess}?)" if guess else "")


def _say(message: str) -> None:
    """A message on stderr; on a terminal, wrapped at word boundaries to its width (the terminal
    would break it inside a number or a name); in a pipe or a CI log, as it is."""
    columns = _terminal_columns(sys.stderr)
    if columns is not None:
        from actstat.layout import wrap_message

        message = wrap_message(message, columns)
    typer.echo(message, err=True)


def _terminal_columns(stream: Any) -> int | None:
    """How many columns wide the terminal `stream` writes to is (COLUMNS first, as Rich reads
    it), or None when it writes to a pipe, a file or a CI log. The one place the CLI asks: tables
    are fitted to it, messages wrapped at it, and a progress bar shows only on a terminal; the
    docs check makes it answer 80 for every stream (tests/test_readme.py)."""
    try:
        if not stream.isatty():
            return None
    except (AttributeError, ValueError):  # a closed or replaced stream
        return None
    columns = os.environ.get("COLUMNS", "")
    if columns.isdigit() and int(columns) > 0:
        return int(columns)
    try:
        return os.get_terminal_size(stream.fileno()).columns
    except (OSError, ValueError, AttributeError):
        return 80


def _crashed(err: Exception) -> int:
    """One line naming the error (the traceback with --debug); the crash exit code."""
    if _debug:
        import traceback

        traceback.print_exception(err)
    message = str(err).strip().splitlines()
    _say(f"actstat: internal error: {type(err).__name__}"
         f"{': ' + message[0] if message else ''}"
         + ("" if _debug else " (run again with --debug for the traceback)"))
    return EXIT_CRASH


def _show_version(value: bool) -> None:
    if value:
        typer.echo(f"actstat {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: Annotated[bool, typer.Option("--version", callback=_show_version, is_eager=True,
                                          help="Print the version and exit.")] = False,
    debug: Annotated[bool, typer.Option(
        "--debug", envvar=DEBUG_ENV, show_envvar=False,
        help=f"Show the full traceback of an internal error (exit 3); or set {DEBUG_ENV}=1.")
    ] = False,
) -> None:
    """actstat: per-layer activation statistics of neural networks, before training."""
    global _debug
    _debug = _debug or debug
    from actstat.symbols import StandIns, needs_stand_ins

    # a stdout that cannot encode → or ▁ (a cp1252 redirect on Windows) gets ASCII stand-ins
    for name in ("stdout", "stderr"):
        stream = getattr(sys, name)
        if needs_stand_ins(stream) and not isinstance(stream, StandIns):
            setattr(sys, name, StandIns(stream))


def _fail(message: str) -> typer.Exit:
    _say(f"actstat: error: {message}")
    return typer.Exit(EXIT_USAGE)


class Display(NamedTuple):
    """How tables reach a terminal: fitted to its width or at full width; in colour or not."""

    wide: bool = False
    no_color: bool = False


@app.command(cls=_Command)
@opt.run_options()
def run(
    ctx: typer.Context,
    config: opt.ConfigArg = None,
    hist: opt.HistOpt = None,
    plot: opt.PlotOpt = None,
    steps: opt.StepsOpt = None,
    lr: opt.LrOpt = None,
    format: opt.FormatOpt = "table",
    output: opt.OutputOpt = None,
    fail_on: opt.FailOnOpt = None,
    force: opt.ForceOpt = False,
    quiet: opt.QuietOpt = False,
    wide: opt.WideOpt = False,
    no_color: opt.NoColorOpt = False,
) -> None:
    """Measure every hidden layer's pre- and post-activation statistics for each init × act.

    Exit codes: 0 ran; 1 a layer carries a --fail-on flag; 2 a usage or input error.
    """
    failing = _check_output_options(format, fail_on)
    report = _profile(config, _overrides(ctx, plot), quiet=quiet, force=force, outputs=(output,),
                      figure=plot, no_color=no_color)
    _guarded(_emit, report, format, output, quiet, Display(wide, no_color))
    _figure(report, plot, quiet)
    _exit_on_flags(report, failing, quiet)


@app.command(cls=_Command)
@opt.run_options()
def compare(
    ctx: typer.Context,
    config: opt.ConfigArg = None,
    hist: opt.HistOpt = None,
    plot: opt.PlotOpt = None,
    steps: opt.StepsOpt = None,
    lr: opt.LrOpt = None,
    sort: opt.SortOpt = "verdict",
    detail: opt.DetailOpt = False,
    format: opt.FormatOpt = "table",
    output: opt.OutputOpt = None,
    fail_on: opt.FailOnOpt = None,
    force: opt.ForceOpt = False,
    quiet: opt.QuietOpt = False,
    wide: opt.WideOpt = False,
    no_color: opt.NoColorOpt = False,
) -> None:
    """Run many schemes on the same batch and seed, one row each: which keeps the signal alive?

    Schemes: the --init × --act grid, the config's init × activation grid and its compare: list;
    with none of them, the lesson's schemes (docs/commands.md). JSON is the same Report as `run` writes.
    Exit codes as `run`.
    """
    from actstat.config import LESSON_SCHEMES
    from actstat.render import SORTS

    failing = _check_output_options(format, fail_on)
    if sort not in SORTS:
        raise _fail(f"--sort: unknown order '{sort}'; choose from: {', '.join(SORTS)}")
    report = _profile(config, _overrides(ctx, plot), quiet=quiet, force=force,
                      default_schemes=LESSON_SCHEMES, outputs=(output,), figure=plot,
                      no_color=no_color)
    _guarded(_emit_compare, report, format, output, quiet, sort, detail,
             Display(wide, no_color))
    _figure(report, plot, quiet)
    _exit_on_flags(report, failing, quiet)


@app.command(cls=_Command)
@opt.run_options()
def baseline(
    ctx: typer.Context,
    config: opt.ConfigArg = None,
    output: opt.BaselineOutOpt = Path("actstat-baseline.json"),
    force: opt.ForceOpt = False,
    quiet: opt.QuietOpt = False,
) -> None:
    """Measure and save a baseline Report (JSON) for `actstat check` to compare against.

    The file holds the full resolved config, versions, device and every per-layer value; a JSON
    report from `run` or `compare` serves as a baseline too, and one from `actstat train -f json`
    is a training baseline (check trains again and compares every recorded step).
    """
    from actstat.atomic import write_atomic
    from actstat.render import to_json, verdict_line

    report = _profile(config, _overrides(ctx), quiet=quiet, force=force, outputs=(output,))
    _guarded(write_atomic, output, to_json(report))
    if not quiet:
        for scheme in report.runs:
            _say(verdict_line(scheme, report))
        layers = sum(len(run.layers) for run in report.runs)
        _say(f"wrote {output} ({len(report.runs)} scheme(s), {layers} layers)")


@app.command(cls=_Command)
@opt.run_options()
def check(
    ctx: typer.Context,
    target: opt.TargetArg = None,
    config: opt.CheckConfigOpt = None,
    lr: opt.TrainLrOpt = None,
    rtol: opt.RtolOpt = None,
    atol: opt.AtolOpt = None,
    metrics: opt.MetricsOpt = None,
    max_drift: opt.MaxDriftOpt = None,
    fail_on: opt.FailOnOpt = None,
    stored_config: opt.StoredConfigOpt = False,
    update: opt.UpdateOpt = False,
    format: opt.CheckFormatOpt = "table",
    output: opt.OutputOpt = None,
    junit_xml: opt.JunitOpt = None,
    force: opt.ForceOpt = False,
    quiet: opt.QuietOpt = False,
    wide: opt.WideOpt = False,
    no_color: opt.NoColorOpt = False,
) -> None:
    """Re-run a baseline's config file and fail on per-layer std drift; or bound the drift alone.

    The config is the file the baseline was made from, re-read (so an edited config is checked,
    its differences listed), or the copy stored in the baseline when that file is gone or with
    --stored-config. A baseline written by `actstat train -f json` is trained again, and its
    loss and per-layer statistics compared at every recorded step; the first step that drifted
    is named. Exit codes: 0 passed (or --update rewrote the baseline); 1 drift, a --max-drift
    breach or a --fail-on flag; 2 unusable input (nothing is written then); 130 Ctrl-C.
    """
    from actstat import gate as checking
    from actstat.outputs import CHECK_FORMATS

    if format not in CHECK_FORMATS:
        raise _fail(f"--format: check writes {', '.join(CHECK_FORMATS)}, not '{format}'")
    plan = _guarded(checking.plan, checking.CheckRequest(
        target=target, config=config, stored_config=stored_config, overrides=_overrides(ctx),
        max_drift=(_guarded(opt.at_least, "--max-drift", max_drift, 1.0)
                   if max_drift is not None else None),
        fail_on=frozenset(_guarded(opt.fail_on, fail_on)), update=update))
    _preflight(plan.config, (output, junit_xml, target if update else None),
               data_from=_data_from(plan.request.overrides, plan.config_path or target))
    report = _measured_for_check(plan, quiet=quiet, force=force, no_color=no_color)
    result = checking.evaluate(plan, report)
    _guarded(_emit_check, result, format, output, junit_xml, Display(wide, no_color))
    for note in () if quiet else plan.notes:  # after the table, where the README shows them
        _say(note)
    _check_verdict(plan, result, report, quiet)


# train draws its own mini-batches (--train-batch) and always takes gradients; --layers selects
# a user's model's rows in run, compare and check alone
@app.command(cls=_Command)
@opt.run_options(without=("layers", "batch_size", "grad", "theory"))
def train(
    ctx: typer.Context,
    config: opt.ConfigArg = None,
    hist: opt.HistOpt = None,
    steps: opt.TrainStepsOpt = None,
    every: opt.EveryOpt = None,
    lr: opt.TrainLrOpt = None,
    optimizer: opt.OptimizerOpt = None,
    momentum: opt.MomentumOpt = None,
    warmup: opt.WarmupOpt = None,
    train_batch: opt.TrainBatchOpt = None,
    heatmap: opt.HeatOpt = None,
    plot: opt.PlotOpt = None,
    tensorboard: opt.TensorBoardOpt = None,
    format: opt.TrainFormatOpt = "table",
    output: opt.OutputOpt = None,
    force: opt.ForceOpt = False,
    quiet: opt.QuietOpt = False,
    wide: opt.WideOpt = False,
    no_color: opt.NoColorOpt = False,
) -> None:
    """Train each init × act for some steps and watch every layer's statistics on the way.

    Mini-batches come from all of the data source's samples (the bundled MNIST sample's
    5,000); every --every steps each layer's mean, std, near-zero and dead fraction and
    gradient std are recorded (with --hist, a histogram: the colorful dimension), and the
    scheme is judged: did the loss fall, and what happened first (a layer dying, a std running
    away, a non-finite loss). Ctrl-C stops early and keeps what was recorded.

    Exit codes: 0 trained or not (the verdict says); 2 a usage or input error; 130 Ctrl-C
    (with -o, what was recorded is written first).
    """
    from actstat.outputs import TRAIN_FORMATS
    from actstat.report import located

    if format not in TRAIN_FORMATS:
        raise _fail(f"--format: train writes {' or '.join(TRAIN_FORMATS)}, not {format!r}")
    resolved = _resolved(config, _overrides(ctx, plot), (output,), plot)
    heat = _guarded(opt.names, "--heatmap", heatmap) if heatmap else None
    if heat and not resolved.hist:  # before training: a refusal costs no run
        raise _fail("--heatmap draws histograms: add --hist (or --plot), or leave --heatmap out")
    report = located(_trained(resolved, tensorboard, quiet=quiet, force=force,
                              no_color=no_color), config, output)
    _guarded(_emit_training, report, format, output, quiet, Display(wide, no_color), heat)
    _figure(report, plot, quiet)
    if _interrupted(report):
        _say("actstat: interrupted; the steps recorded before are shown"
             + (f" and written to {output}" if output is not None else ""))
        raise typer.Exit(130)


# coord-check sets the width itself (--widths), draws its own mini-batches (--train-batch) and
# has its own default depth
@app.command(name="coord-check", cls=_Command)
@opt.run_options(without=("layers", "width", "batch_size", "grad", "theory"),
                 own={"depth": opt.CoordDepthOpt})
def coord_check(
    ctx: typer.Context,
    config: opt.ConfigArg = None,
    widths: opt.WidthsOpt = None,
    seeds: opt.SeedsOpt = None,
    param: opt.ParamOpt = None,
    base_width: opt.BaseWidthOpt = None,
    width_arg: opt.WidthArgOpt = None,
    coord_steps: opt.CoordStepsOpt = None,
    coord_optimizer: opt.CoordOptimizerOpt = None,
    coord_lr: opt.CoordLrOpt = None,
    coord_batch: opt.CoordBatchOpt = None,
    ray: opt.RayOpt = None,
    plot: opt.CoordPlotOpt = None,
    format: opt.FormatOpt = "table",
    output: opt.OutputOpt = None,
    quiet: opt.QuietOpt = False,
    wide: opt.WideOpt = False,
    no_color: opt.NoColorOpt = False,
    max_slope: opt.SlopeOpt = None,
    fail_on: opt.WidthFailOnOpt = None,
) -> None:
    """Train copies of the model at several widths and follow each layer's mean |x|: does its
    scale stay put as the network gets wider (μP's coordinate check)?

    Per layer and step, the slope of ln mean|x| against ln width (0: width-stable; 1: it
    doubles with the width), flags grows_with_width / shrinks_with_width past --max-slope, and
    a log-log picture of the layer that moves most. Step 0 is the init alone. The built-in MLP
    defaults to depth 2 here. Exit codes: 0 ran; 1 a layer carries a --fail-on flag; 2 a usage
    or input error, a width the model rejects, or a run whose loss diverged (nothing written).
    """
    from actstat.config import COORD_CHECK_DEPTH
    from actstat.outputs import COORD_FORMATS
    from actstat.report import located

    if format not in COORD_FORMATS:
        raise _fail(f"--format: unknown format '{format}'; choose from: "
                    f"{', '.join(COORD_FORMATS)}")
    failing = _guarded(opt.width_fail_on, fail_on)
    resolved = _resolved(config, _overrides(ctx), (output,), plot,
                         defaults={"model.depth": COORD_CHECK_DEPTH})
    report = located(_coord_checked(resolved, ray, quiet=quiet, no_color=no_color), config,
                     output)
    _guarded(_emit_coord, report, format, output, quiet, Display(wide, no_color))
    _figure(report, plot, quiet)
    _exit_on_width_flags(report, failing, quiet)


@app.command(cls=_Command)
def plot(report: opt.ReportArg, output: opt.FigureOpt, quiet: opt.QuietOpt = False) -> None:
    """Draw a saved report's figure without running anything (and without importing torch)."""
    from actstat.report import read_report

    _preflight(None, (), figure=output)
    _figure(_guarded(read_report, report), output, quiet)


# ----------------------------------------------------------------------------------------------
# parse


def _guarded(call: Any, *args: Any) -> Any:
    """`call(*args)`, a user's mistake (ActstatError) turned into one line and exit 2."""
    try:
        return call(*args)
    except ActstatError as err:
        raise _fail(str(err)) from None


def _overrides(ctx: typer.Context, plot: Path | None = None) -> dict[str, Any]:
    """The config overrides of the options a command was given (--plot implies --hist)."""
    return _guarded(opt.overrides, {**ctx.params, "hist": True} if plot else ctx.params)


def _check_output_options(format: str, fail_on: str | None) -> set[str]:
    from actstat.render import FORMATS

    if format not in FORMATS:
        raise _fail(f"--format: unknown format '{format}'; choose from: {', '.join(FORMATS)}")
    return _guarded(opt.fail_on, fail_on)


def _preflight(resolved: Any, outputs: tuple[Path | None, ...], figure: Path | None = None,
               data_from: str = "") -> None:
    from actstat.outputs import preflight

    _guarded(preflight, resolved, outputs, figure, data_from)


def _data_from(overrides: dict[str, Any], config: Path | None) -> str:
    """What set the data source, as a message names it: the option, else the config file."""
    return "--data" if "data.source" in overrides else str(config) if config is not None else ""


def _resolved(config: Path | None, overrides: dict[str, Any], outputs: tuple[Path | None, ...],
              figure: Path | None = None,
              default_schemes: list[dict[str, Any]] | None = None,
              defaults: dict[str, Any] | None = None) -> Any:
    """The config file with the overrides on top, validated; then what the command will write,
    checked (`outputs.preflight`)."""
    from actstat.config import load_config

    resolved = _guarded(lambda: load_config(config, overrides, default_schemes=default_schemes,
                                            defaults=defaults))
    _preflight(resolved, outputs, figure, _data_from(overrides, config))
    return resolved


# ----------------------------------------------------------------------------------------------
# measure, with progress on a terminal's stderr


def _profile(config: Path | None, overrides: dict[str, Any], *, quiet: bool, force: bool,
             default_schemes: list[dict[str, Any]] | None = None,
             outputs: tuple[Path | None, ...] = (), figure: Path | None = None,
             no_color: bool = False) -> Any:
    """Load the config, check what the command will write, and measure every scheme. The report
    records the config file, relative to the first output (`report.located`), for `check` to
    re-read."""
    from actstat.report import located

    resolved = _resolved(config, overrides, outputs, figure, default_schemes)
    report = _profile_resolved(resolved, quiet=quiet, force=force, no_color=no_color)
    return located(report, config, outputs[0] if outputs else None)


def _profile_resolved(resolved: Any, *, quiet: bool, force: bool, no_color: bool = False) -> Any:
    """Measure every scheme of a resolved config, then warn on stderr of any lsuv scheme that
    left layers outside its tolerance (the run goes on: those layers are measured as they are)."""
    from actstat.pipeline import profile
    from actstat.plan import schemes

    def measure() -> Any:
        if quiet or _terminal_columns(sys.stderr) is None:
            return profile(resolved, force=force)
        with _progress(no_color) as bar:
            task = bar.add_task("measuring", total=len(schemes(resolved)))
            return profile(resolved, lambda done, total, label: bar.update(
                task, completed=done, description=f"measured {label}"), force=force)

    report = _guarded(measure)  # an error's line comes after the bar has gone
    if not quiet:
        from actstat.render import lsuv_warnings

        for line in lsuv_warnings(report):
            _say(f"actstat: warning: {line}")
    return report


def _trained(resolved: Any, tensorboard: Path | None, *, quiet: bool, force: bool,
             no_color: bool) -> Any:
    """Train every scheme, each recorded step also written as TensorBoard events with
    --tensorboard DIR (its files closed however training ends: what was recorded stays
    readable)."""
    if tensorboard is None:
        return _train_resolved(resolved, quiet=quiet, force=force, no_color=no_color)
    from actstat.tensorboard_log import TensorBoardLog, check_tensorboard

    _guarded(check_tensorboard, tensorboard)
    with TensorBoardLog(tensorboard) as log:
        return _train_resolved(resolved, quiet=quiet, force=force, no_color=no_color,
                               on_record=log.scheme)


def _train_resolved(resolved: Any, *, quiet: bool, force: bool, no_color: bool,
                    on_record: Any = None) -> Any:
    """Train every scheme of a resolved config (the progress bar shows the current loss)."""
    from actstat.training import watch_report

    def train() -> Any:
        if quiet or _terminal_columns(sys.stderr) is None:
            return watch_report(resolved, on_record=on_record, force=force)
        with _progress(no_color, loss=True) as bar:
            task = bar.add_task("measuring at init", total=None, loss="")

            def on_step(scheme: str) -> Any:
                bar.update(task, description=f"training {scheme}", completed=0)

                def step(done: int, total: int, loss: float) -> None:
                    bar.update(task, completed=done, total=total, loss=f"loss {loss:.4g}")

                return step

            return watch_report(resolved, on_step=on_step, on_record=on_record, force=force)

    return _guarded(train)


def _coord_checked(resolved: Any, ray: str | None, *, quiet: bool, no_color: bool) -> Any:
    """The coord check of a resolved config, in-process with a progress bar (width, seeds,
    step) on a terminal, or each width a Ray task with --ray; a run that diverged is the
    user's to fix (exit 2, nothing written)."""
    from actstat.coordcheck import coord_check_report
    from actstat.render_coord import event_lines

    executor = None
    if ray is not None:
        from actstat.executors import RayExecutor

        executor = RayExecutor(None if ray == "local" else ray)

    def measure() -> Any:
        if quiet or _terminal_columns(sys.stderr) is None or executor is not None:
            return coord_check_report(resolved, executor=executor)
        with _progress(no_color) as bar:
            task = bar.add_task("coord check", total=None)

            def step(width: int, seeds: Any, done: int, total: int) -> None:
                label = (f"seed {seeds[0]}" if len(seeds) == 1
                         else f"seeds {seeds[0]}-{seeds[-1]}")
                bar.update(task, completed=done, total=total,
                           description=f"width {width}, {label}, step")

            return coord_check_report(resolved, on_progress=step, executor=executor)

    report = _guarded(measure)
    lines = event_lines(report.coord_check)
    if lines:
        more = f" (and {len(lines) - 1} more)" if len(lines) > 1 else ""
        raise _fail(f"coord-check: {lines[0]}{more}; lower --lr, or drop that width: the "
                    "other widths trained, nothing was written")
    return report


def _progress(no_color: bool, loss: bool = False) -> Any:
    """A progress bar on stderr that goes when it is done (a terminal's: callers check
    `_terminal_columns`). Drawn only where Rich can move the cursor back over it: anywhere else
    (the docs check's 80-column stand-in) it would leave a blank line behind."""
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn

    columns = [TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn()]
    if loss:
        columns.append(TextColumn("{task.fields[loss]}"))
    console = Console(stderr=True, no_color=no_color or None)
    return Progress(*columns, console=console, transient=True, disable=not console.is_terminal)


def _measured_for_check(plan: Any, *, quiet: bool, force: bool, no_color: bool) -> Any:
    """The check's config measured, or trained again for a training baseline (Ctrl-C there:
    nothing is compared, exit 130)."""
    if plan.coord:
        return _coord_checked(plan.config, None, quiet=quiet, no_color=no_color)
    if not plan.training:
        return _profile_resolved(plan.config, quiet=quiet, force=force, no_color=no_color)
    report = _train_resolved(plan.config, quiet=quiet, force=force, no_color=no_color)
    if _interrupted(report):
        _say("actstat: interrupted; nothing was compared")
        raise typer.Exit(130)
    return report


def _interrupted(report: Any) -> bool:
    return any(run.trajectory is not None and run.trajectory.stopped == "interrupted"
               for run in report.runs)


# ----------------------------------------------------------------------------------------------
# deliver


def _emit(report: Any, format: str, output: Path | None, quiet: bool,
          display: Display) -> None:
    """The report in the chosen format; verdicts to stderr when stdout is not a table."""
    from actstat.outputs import report_view
    from actstat.render import precision_note, verdict_line

    _deliver(format, output, report_view(report, format), display)
    if quiet or (format == "table" and output is None):
        return
    if precision_note(report):
        _say(precision_note(report))
    for scheme in report.runs:
        _say(verdict_line(scheme, report))
    _wrote(report, format, output)


def _emit_compare(report: Any, format: str, output: Path | None, quiet: bool, sort: str,
                  detail: bool, display: Display) -> None:
    from actstat.outputs import compare_view

    _deliver(format, output, compare_view(report, format, sort, detail), display)
    if not quiet:
        _wrote(report, format, output)


def _emit_check(result: Any, format: str, output: Path | None, junit: Path | None,
                display: Display) -> None:
    from actstat.atomic import write_atomic
    from actstat.outputs import check_view
    from actstat.render_check import junit_xml

    if junit is not None:
        write_atomic(junit, junit_xml(result))
    _deliver(format, output, check_view(result, format), display)


def _emit_training(report: Any, format: str, output: Path | None, quiet: bool,
                   display: Display, heat: list[str] | None) -> None:
    from actstat.outputs import training_view
    from actstat.render_watch import summary_line

    _deliver(format, output, training_view(report, format, heat), display)
    if quiet or (format == "table" and output is None):
        return
    for run in report.runs:
        if run.trajectory is not None:
            _say(summary_line(run))
    _wrote(report, format, output)


def _emit_coord(report: Any, format: str, output: Path | None, quiet: bool,
                display: Display) -> None:
    from actstat.outputs import coord_view
    from actstat.render_coord import verdict_line

    _deliver(format, output, coord_view(report, format), display)
    if quiet or (format == "table" and output is None):
        return
    _say(verdict_line(report.coord_check))
    if output is not None:
        _say(f"wrote {output} ({format}, coord check of {len(report.coord_check.widths)} widths)")


def _wrote(report: Any, format: str, output: Path | None) -> None:
    if output is not None:
        _say(f"wrote {output} ({format}, {len(report.runs)} scheme(s))")


def _deliver(format: str, output: Path | None, view: Any, display: Display) -> None:
    """To a file (atomically), to a terminal as Rich renderables fitted to its width (tables in
    colour unless NO_COLOR or --no-color), or to a pipe as plain text at full width; nothing but
    the chosen format reaches stdout."""
    from actstat.atomic import write_atomic

    columns = _terminal_columns(sys.stdout)
    if output is not None:
        write_atomic(output, view.text())
    elif format == "table" and columns is not None:
        from rich.console import Console

        # --wide: as wide as the table; the terminal wraps what it must
        console = Console(file=sys.stdout, width=10_000 if display.wide else columns,
                          highlight=False, no_color=display.no_color or None)
        for renderable in view.renderables(None if display.wide else columns):
            console.print(renderable)
    else:
        sys.stdout.write(view.text())
        sys.stdout.flush()


def _figure(report: Any, path: Path | None, quiet: bool) -> None:
    if path is None:
        return
    from actstat.plot import draw

    _guarded(draw, report, path)
    if not quiet:
        _say(f"wrote {path} (figure)")


# ----------------------------------------------------------------------------------------------
# exit codes


def _exit_on_flags(report: Any, failing: set[str], quiet: bool) -> None:
    from actstat.outputs import flagged

    hits = flagged(report, failing)
    if not hits:
        return
    if not quiet:
        schemes = sorted({scheme for scheme, _, _ in hits})
        scheme, index, flag = hits[0]
        # two short lines, not one that an 80-column terminal breaks inside a name
        _say(f"actstat: --fail-on: {len(hits)} flagged layer(s) in {len(schemes)} "
             f"scheme(s)\n  first: {scheme}, layer {index}, {flag}")
    raise typer.Exit(EXIT_FLAGGED)


def _exit_on_width_flags(report: Any, failing: set[str], quiet: bool) -> None:
    from actstat.outputs import width_flagged

    hits = width_flagged(report, failing)
    if not hits:
        return
    if not quiet:
        layer, flag, step = hits[0]
        _say(f"actstat: --fail-on: {len(hits)} flagged layer(s)\n  first: layer {layer}, "
             f"{flag} from step {step}")
    raise typer.Exit(EXIT_FLAGGED)


def _check_verdict(plan: Any, result: Any, report: Any, quiet: bool) -> None:
    """Rewrite the baseline (--update), or say on stderr why the check failed and exit 1: a CI
    log shows the reason whatever --format and --output chose."""
    from actstat.atomic import write_atomic
    from actstat.gate import updated_baseline
    from actstat.render import to_json
    from actstat.render_check import check_failure_lines

    target = plan.request.target
    if result.updated:
        _guarded(write_atomic, target, to_json(updated_baseline(plan, report)))
        if not quiet:
            changed = (f"{len(result.drifts)} value(s) were out of tolerance" if result.drifts
                       else "all values were within tolerance")
            _say(f"actstat: updated {target} with the new values ({changed})")
        return
    if not result.passed:
        for line in check_failure_lines(result):
            _say(f"actstat: {line}" if not line.startswith(" ") else line)
        raise typer.Exit(EXIT_FLAGGED)


def main() -> None:
    """Console-script entry point."""
    app()
