"""Report: the one record every output is made from, as users hold it: it prints itself as the
CLI's tables, shows itself in Jupyter, saves to and reads from JSON files.

The record itself and the types of its rows live in actstat/records.py, below every stage that
makes or reads them; what is here reaches up to actstat/render.py, which only commands and users
need.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from actstat import records
from actstat.errors import ActstatError
from actstat.records import READABLE_VERSIONS
from actstat.render import plain_text, table_text, tables, to_html
from actstat.render_coord import coord_tables, coord_text


@dataclass(frozen=True, repr=False)
class Report(records.Report):
    """Everything one run measured. Shows itself as the CLI's tables (`print(report)`, a Rich
    console) and as HTML tables in Jupyter; `save(path)` writes the JSON file that `actstat
    check`, `plot` and `compare --from` read."""

    def __str__(self) -> str:
        # `print(report)` in a terminal: fitted to its width, as the CLI's tables are (columns
        # leave, lines wrap at words); anywhere else (a file, a log, a string): at full width
        coord = self.coord_check is not None
        width = _terminal_width()
        if width is None:
            return coord_text(self) if coord else table_text(self)
        return plain_text((coord_tables if coord else tables)(self, width), width, wrap=True)

    def __rich_console__(self, console: Any, options: Any) -> Any:
        if self.coord_check is not None:
            yield from coord_tables(self, options.max_width)
        else:
            yield from tables(self, options.max_width)

    def _repr_html_(self) -> str:
        if self.coord_check is not None:  # its table as text, whole
            import html

            return f"<pre>{html.escape(coord_text(self))}</pre>"
        return to_html(self)

    @classmethod
    def from_dict(cls, raw: Any, origin: str = "report") -> Report:
        """A Report from `to_dict`'s output, validated against the schema (actstat/schema.py);
        an ActstatError naming `origin` and the first bad key path if it is not one."""
        if not isinstance(raw, Mapping):
            kind = "a list" if isinstance(raw, list) else type(raw).__name__
            raise ActstatError(f"{origin}: not an actstat report: the top level is {kind}, not a "
                               "JSON object")
        if "schema_version" not in raw:
            keys = ", ".join(map(str, list(raw)[:3])) + (", ..." if len(raw) > 3 else "")
            raise ActstatError(f"{origin}: not an actstat report: it has no schema_version key "
                               f"(its keys: {keys or 'none'}); reports are written by run, compare "
                               "or baseline with -f json, and by train -f json")
        version = raw.get("schema_version")
        if version not in READABLE_VERSIONS or isinstance(version, bool):
            readable = ", ".join(map(str, READABLE_VERSIONS[:-1])) + f" and {READABLE_VERSIONS[-1]}"
            raise ActstatError(f"{origin}: report schema_version is {version!r}; this actstat "
                               f"reads versions {readable}")
        from actstat.schema import validate  # pydantic: loaded only when a report is read

        validate(raw, origin)
        return cls(
            schema_version=version,
            actstat_version=raw["actstat_version"],
            torch_version=raw["torch_version"],
            device=raw["device"],
            config=raw["config"],
            input=records.input_from(raw["input"]),
            runs=tuple(records.run_from(run) for run in raw["runs"]),
            config_file=raw.get("config_file"),
            reduction=raw.get("reduction"),
            coord_check=(None if raw.get("coord_check") is None
                         else records.coord_check_from(raw["coord_check"])),
        )

    def save(self, path: Path | str) -> Path:
        """Write `to_json()` to `path` (atomically: never half-written); the path written."""
        from actstat.atomic import write_atomic

        write_atomic(Path(path), self.to_json())
        return Path(path)


def _terminal_width() -> int | None:
    """The width of the terminal stdout is, or None when stdout is not one."""
    import shutil
    import sys

    try:
        if not sys.stdout.isatty():
            return None
    except (AttributeError, ValueError):
        return None
    return shutil.get_terminal_size().columns


def read_report(path: Path | str) -> Report:
    """A Report from a JSON file written by run, compare or baseline; one-line errors otherwise."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ActstatError(f"{path}: no such file") from None
    except IsADirectoryError:
        raise ActstatError(f"{path}: is a directory, not a report") from None
    except (OSError, UnicodeDecodeError) as err:
        raise ActstatError(f"{path}: cannot read ({err})") from None
    if not text.strip():
        raise ActstatError(f"{path}: is empty, not an actstat report")
    try:
        raw = json.loads(text)
    except json.JSONDecodeError as err:
        hint = " (truncated?)" if err.pos >= len(text.rstrip()) else ""
        raise ActstatError(f"{path}: not valid JSON at line {err.lineno}, column {err.colno}: "
                           f"{err.msg}{hint}") from None
    return Report.from_dict(raw, str(path))


def located(report: Report, config: Path | str | None, destination: Path | str | None) -> Report:
    """The report with the config file it was made from recorded (None: no file): relative to
    `destination`'s directory, so a baseline committed beside its config finds it again in any
    clone; absolute when there is no destination (stdout), so it resolves wherever it is saved."""
    if config is None:
        return replace(report, config_file=None)
    absolute = Path(config).resolve()
    if destination is None:
        return replace(report, config_file=str(absolute),
                       config=_relative_to(report.config, absolute.parent))
    here = Path(destination).resolve().parent
    try:
        recorded = os.path.relpath(absolute, here)
    except ValueError:  # Windows: another drive has no relative path
        recorded = str(absolute)
    return replace(report, config_file=Path(recorded).as_posix(),
                   config=_relative_to(report.config, absolute.parent))


def _relative_to(config: Any, directory: Path) -> Any:
    """The config's file paths (data, a factory's file) relative to `directory`, the config
    file's, as its YAML names them: a baseline then reads the same on every machine and from any
    working directory, and `check` takes them relative to the config file again."""
    from actstat.config import with_paths  # pydantic: loaded only with a config file

    def relative(path: str) -> str:
        try:
            return Path(os.path.relpath(Path(path).resolve(), directory)).as_posix()
        except ValueError:  # Windows: another drive
            return path

    return with_paths(config, relative)


def config_file_of(report: records.Report, report_path: Path | str) -> Path | None:
    """Where the report's recorded config file is, read from the report file at `report_path`."""
    if report.config_file is None:
        return None
    # "baselines/../configs/net.yaml" reads better as "configs/net.yaml"
    return Path(os.path.normpath(Path(report_path).parent / report.config_file))
