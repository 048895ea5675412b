"""Model sources: a user's factory (`path/to/file.py:make_model`, `package.module:factory`) -> nn.Module.

A model named `hf:NAME` (a `transformers` model built from its config) is actstat/hf.py's.

The spec format
---------------
`LOCATION:NAME`, split at the *last* colon (so a Windows path such as `C:\\models\\net.py:make`
keeps its drive letter):

- LOCATION is a **file** when it ends in `.py` or contains a path separator (`/`, or `\\` on
  Windows) or is not a dotted Python name; `~` is expanded, and a relative path is relative to
  `base_dir` (the YAML file's directory when the spec comes from a config, otherwise the current
  directory). Otherwise it is a **module** name (`package.module`), imported normally with
  `base_dir` searched first for the duration of the import, as `python -m` searches the current
  directory (the `actstat` console script does not have it on `sys.path`).
- NAME is a function or class in that file or module (dotted for a nested attribute:
  `Net.from_config`). Calling it with the config's keyword arguments must return an `nn.Module`.

A file is imported under a unique module name (`actstat_factory_<n>_<stem>`) each time it is
loaded, so the same file loaded twice gives two independent modules. Its directory is at the front
of `sys.path` while it is imported and while the factory runs, so it can import its sibling
modules (`import layers`) at the top or inside the factory; afterwards `sys.path` is restored
exactly, and the siblings found through that entry are taken out of `sys.modules` again (the
factory's module keeps its references to them), so another factory file with its own `layers.py`
next to it gets its own. The factory's module itself stays registered under its unique name: that
is what `importlib` needs for `inspect.getsource` (TorchScript), `typing.get_type_hints`,
dataclasses and pickling of the classes it defines.

A model with no parameters and no submodules is accepted here: whether a model has anything to
measure is the probe's decision, made on the forward it runs (a parameter-free module can still
be worth measuring, and a module with parameters can run none of them).

Errors
------
Each is one line, a `ModelSourceError` (an `ActstatError`: exit 2 at the CLI):

- a spec with no `:`, or nothing before or after it, or a NAME that is not a Python name;
- a file that does not exist (with the absolute path looked at), a directory, or not a `.py` file;
- a file or module that raises on import: the exception's type and message, and where (the file
  and line in the user's code: a `SyntaxError`'s own line, otherwise the innermost frame outside
  the standard library, the installed packages and actstat);
- a module that cannot be found (the closest name among its package's modules, if any);
- a NAME the file or module does not define: the closest match, and the functions and classes it
  defines (not those it imports);
- a NAME that is not callable, or that is an `nn.Module` instance rather than a factory;
- keyword arguments the factory does not accept, or required ones the config does not give: the
  factory's parameters from its signature (with defaults), and the closest match for a typo;
- the factory raising: type, message and where, as for an import;
- the factory returning something other than an `nn.Module`: what it returned.
"""

from __future__ import annotations

import contextlib
import importlib
import importlib.util
import inspect
import itertools
import keyword
import os
import pkgutil
import re
import sys
import sysconfig
import traceback
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from actstat import hf
from actstat.errors import ModelSourceError
from actstat.registry import closest

if TYPE_CHECKING:
    from torch import nn

FORMAT = "path/to/file.py:make_model or package.module:make_model"

# One number per load, so that loading a file twice gives two modules rather than the first again.
_LOAD_COUNT = itertools.count(1)


@dataclass(frozen=True)
class FactorySpec:
    """A parsed `LOCATION:NAME`: exactly one of `path` (a file, as written, `~` expanded) and
    `module` (a dotted module name) is set; `attribute` is NAME (dotted for a nested attribute)."""

    text: str
    path: Path | None
    module: str | None
    attribute: str

    def __str__(self) -> str:
        return self.text


def _is_dotted_name(text: str) -> bool:
    parts = text.split(".")
    return all(part.isidentifier() and not keyword.iskeyword(part) for part in parts)


def parse(spec: str) -> FactorySpec:
    """`LOCATION:NAME` -> FactorySpec (see the module docstring); a ModelSourceError otherwise."""
    if not isinstance(spec, str):
        raise ModelSourceError(f"a model factory is written as text ({FORMAT}), not {type(spec).__name__}")
    text = spec.strip()
    location, colon, attribute = text.rpartition(":")
    location, attribute = location.strip(), attribute.strip()
    if not colon:
        raise ModelSourceError(f"model factory '{text}' has no ':' before the function's name; "
                               f"write {FORMAT}")
    if not location:
        raise ModelSourceError(f"model factory '{text}' names no file or module before ':'; write {FORMAT}")
    if not attribute:
        raise ModelSourceError(f"model factory '{text}' names no function after ':'; write {FORMAT}")
    if not _is_dotted_name(attribute):
        raise ModelSourceError(f"model factory '{text}': '{attribute}' is not a Python name; "
                               f"write {FORMAT}")
    separators = {"/", os.sep, *([os.altsep] if os.altsep else [])}
    if location.endswith(".py") or any(s in location for s in separators) or not _is_dotted_name(location):
        return FactorySpec(text, Path(location).expanduser(), None, attribute)
    return FactorySpec(text, None, location, attribute)


def load_factory(spec: str | FactorySpec, *, base_dir: str | os.PathLike[str] | None = None
                 ) -> Callable[..., Any]:
    """The callable `spec` names, its file or module imported (see the module docstring).

    Note: a factory that imports its sibling modules only when called needs its directory on
    `sys.path` then too; `build_model` provides that, calling it here does not."""
    with _loaded(spec, base_dir) as (factory, _):
        return factory


def build_model(spec: str | FactorySpec, kwargs: Mapping[str, Any] | None = None, *,
                base_dir: str | os.PathLike[str] | None = None) -> nn.Module:
    """The nn.Module that `spec`'s factory returns when called with `kwargs` as keyword arguments.

    The factory draws its initial weights from torch's global generator: seed it first for a
    reproducible model."""
    from torch import nn

    kwargs = dict(kwargs or {})
    if hf.is_hf(spec):  # a transformers model by name: built from its config (actstat/hf.py)
        return hf.build(str(spec), kwargs)
    with _loaded(spec, base_dir) as (factory, parsed):
        label = f"model factory '{parsed}'"
        _check_arguments(factory, kwargs, label)
        try:
            model = factory(**kwargs)
        except Exception as error:
            where = _where(error, _user_roots(parsed, base_dir))
            raise ModelSourceError(f"{label} raised {_describe(error)}{where}") from error
    if not isinstance(model, nn.Module):
        hint = " (does it end with `return model`?)" if model is None else ""
        raise ModelSourceError(f"{label} returned {_what(model)}, not a torch.nn.Module{hint}")
    return model


@contextlib.contextmanager
def _loaded(spec: str | FactorySpec, base_dir: str | os.PathLike[str] | None
            ) -> Iterator[tuple[Callable[..., Any], FactorySpec]]:
    """The factory, with its file's directory (or `base_dir`, for a module) importable while the
    block runs."""
    parsed = spec if isinstance(spec, FactorySpec) else parse(spec)
    base = Path(base_dir) if base_dir is not None else Path.cwd()
    if parsed.path is not None:
        path = parsed.path if parsed.path.is_absolute() else base / parsed.path
        _check_file(parsed, path)
        directory = path.resolve().parent
        stem = re.sub(r"\W", "_", path.stem)
        name = f"actstat_factory_{next(_LOAD_COUNT)}_{stem}"
        with _importable(directory, forget_found=True, keep={name}):
            module = _import_file(parsed, path, name, directory)
            yield _attribute(parsed, module), parsed
    else:
        with _importable(base.resolve(), forget_found=False, keep=set()):
            module = _import_module(parsed, base)
            yield _attribute(parsed, module), parsed


@contextlib.contextmanager
def _importable(directory: Path, *, forget_found: bool, keep: set[str]) -> Iterator[None]:
    """`directory` first on sys.path for the block; sys.path restored exactly afterwards. With
    `forget_found`, modules the block imported from `directory` leave sys.modules again (all but
    `keep`), so the next file from elsewhere with a sibling of the same name imports its own."""
    saved_path = list(sys.path)
    before = set(sys.modules)
    sys.path.insert(0, str(directory))
    try:
        yield
    finally:
        sys.path[:] = saved_path
        if forget_found:
            # decided before any is removed: a submodule is judged by its top-level package
            found = [name for name in set(sys.modules) - before - keep if _found_in(name, directory)]
            for name in found:
                del sys.modules[name]


def _found_in(name: str, directory: Path) -> bool:
    """Whether module `name`'s top-level package was found in `directory` (a sibling module or
    package), rather than elsewhere on sys.path (torch, numpy: even under a venv in `directory`)."""
    top = sys.modules.get(name.split(".")[0])
    file = getattr(top, "__file__", None)
    if file is not None:
        location = Path(file).resolve()
        if location.name == "__init__.py":
            location = location.parent
        return location.parent == directory
    # a namespace package: no __file__, its directories in __path__
    return any(Path(entry).resolve().parent == directory for entry in getattr(top, "__path__", ()))


def _check_file(parsed: FactorySpec, path: Path) -> None:
    shown = f"'{parsed.path}'" + ("" if parsed.path is None or parsed.path.is_absolute()
                                  else f" ({path.resolve()})")
    if not path.exists():
        raise ModelSourceError(f"model factory file {shown} does not exist")
    if path.is_dir():
        raise ModelSourceError(f"model factory file {shown} is a directory, not a .py file")
    if path.suffix != ".py":
        raise ModelSourceError(f"model factory file {shown} is not a .py file")


def _import_file(parsed: FactorySpec, path: Path, name: str, directory: Path) -> Any:
    module_spec = importlib.util.spec_from_file_location(name, path)
    if module_spec is None or module_spec.loader is None:  # only for suffixes importlib does not know
        raise ModelSourceError(f"model factory file '{parsed.path}' cannot be imported")
    module = importlib.util.module_from_spec(module_spec)
    # registered before it runs, as `import` does: dataclasses and get_type_hints look their
    # module up in sys.modules while the file executes
    sys.modules[name] = module
    try:
        module_spec.loader.exec_module(module)
    except Exception as error:
        del sys.modules[name]
        hint = (" (a file in a package is imported by its module name: package.module:function)"
                if isinstance(error, ImportError) and "relative import" in str(error) else "")
        raise ModelSourceError(f"importing model factory file '{parsed.path}' raised "
                               f"{_describe(error)}{_where(error, [directory])}{hint}") from error
    return module


def _import_module(parsed: FactorySpec, base: Path) -> Any:
    assert parsed.module is not None
    try:
        return importlib.import_module(parsed.module)
    except ModuleNotFoundError as error:
        # only a missing spec'd module (or one of its parents) is "not found"; a module that exists
        # and imports a missing dependency raised on import
        missing = error.name or ""
        if parsed.module == missing or parsed.module.startswith(missing + "."):
            raise ModelSourceError(_not_found(parsed, missing, base)) from error
        raise _import_raised(parsed, error, base) from error
    except Exception as error:
        raise _import_raised(parsed, error, base) from error


def _import_raised(parsed: FactorySpec, error: BaseException, base: Path) -> ModelSourceError:
    return ModelSourceError(f"importing model factory module '{parsed.module}' raised "
                            f"{_describe(error)}{_where(error, _user_roots(parsed, base))}")


def _not_found(parsed: FactorySpec, missing: str, base: Path) -> str:
    parent, _, leaf = missing.rpartition(".")
    if parent:
        package = sys.modules.get(parent)
        names = [info.name for info in pkgutil.iter_modules(getattr(package, "__path__", []))]
    else:
        names = [info.name for info in pkgutil.iter_modules([str(base)])]
    guess = closest(leaf, names)
    hint = f" (did you mean '{parent + '.' if parent else ''}{guess}'?)" if guess else ""
    return (f"model factory module '{missing}' not found{hint}; a module is looked for in {base} "
            f"and on sys.path (a file is written path/to/file.py)")


def _attribute(parsed: FactorySpec, module: Any) -> Callable[..., Any]:
    from torch import nn

    where = f"'{parsed.path}'" if parsed.path is not None else f"module '{parsed.module}'"
    value, walked = module, []
    for part in parsed.attribute.split("."):
        if not hasattr(value, part):
            owner = module if not walked else value
            defined = _defined_callables(owner, module.__name__)
            owner_text = where if not walked else f"{where}'s {'.'.join(walked)}"
            guess = closest(part, defined)
            hint = f" (did you mean '{guess}'?)" if guess else ""
            listing = (f"; it defines: {', '.join(defined)}" if defined
                       else "; it defines no functions or classes")
            raise ModelSourceError(f"{owner_text} has no '{part}'{hint}{listing}")
        value = getattr(value, part)
        walked.append(part)
    if isinstance(value, nn.Module):
        raise ModelSourceError(f"model factory '{parsed}' is an nn.Module instance ({type(value).__name__}), "
                               f"not a factory; name a function or class that returns the model")
    if not callable(value):
        raise ModelSourceError(f"model factory '{parsed}' is {_what(value)}, not a function or class")
    return value


def _defined_callables(owner: Any, module_name: str) -> list[str]:
    """The public functions and classes `owner` defines itself (not those a module imports)."""
    names = []
    for name, value in vars(owner).items():
        if name.startswith("_") or not callable(value):
            continue
        if inspect.ismodule(owner) and getattr(value, "__module__", None) != module_name:
            continue
        names.append(name)
    return sorted(names)


def _check_arguments(factory: Callable[..., Any], kwargs: dict[str, Any], label: str) -> None:
    """Keyword arguments the factory cannot take, named before it runs: a TypeError from inside
    the factory would be indistinguishable from a bug in it."""
    for key in kwargs:
        if not isinstance(key, str) or not key.isidentifier():
            raise ModelSourceError(f"{label}: keyword argument {key!r} is not a Python name")
    try:
        signature = inspect.signature(factory)
    except (TypeError, ValueError):  # a builtin or C extension without a signature: let it decide
        return
    parameters = signature.parameters.values()
    accepts_any = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in parameters)
    by_keyword = {p.name: p for p in parameters
                  if p.kind in (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY)}
    accepted = ", ".join(p.name + ("" if p.default is p.empty else f"={p.default!r}")
                         for p in by_keyword.values()) or "no keyword arguments"
    for parameter in parameters:
        if parameter.kind is inspect.Parameter.POSITIONAL_ONLY and parameter.default is parameter.empty:
            raise ModelSourceError(f"{label} needs positional-only argument '{parameter.name}', which "
                                   f"keyword arguments cannot give; give it a default or make it a keyword")
    if not accepts_any:
        for key in kwargs:
            if key not in by_keyword:
                guess = closest(key, by_keyword)
                hint = f" (did you mean '{guess}'?)" if guess else ""
                raise ModelSourceError(f"{label} takes no keyword argument '{key}'{hint}; "
                                       f"it accepts: {accepted}")
    required = [p for p in by_keyword.values() if p.default is p.empty]
    for parameter in required:
        if parameter.name not in kwargs:
            raise ModelSourceError(f"{label} needs keyword argument '{parameter.name}'; "
                                   f"it accepts: {accepted}")


def _describe(error: BaseException) -> str:
    """`ValueError: bad width`: the exception's type and its message's first line."""
    if isinstance(error, SyntaxError):
        message = error.msg
    else:
        message = str(error).strip().splitlines()[0] if str(error).strip() else ""
    return type(error).__name__ + (f": {message}" if message else "")


def _user_roots(parsed: FactorySpec, base_dir: str | os.PathLike[str] | None) -> list[Path]:
    """Directories whose files count as the user's code for `_where`."""
    base = (Path(base_dir) if base_dir is not None else Path.cwd()).resolve()
    if parsed.path is not None:
        path = parsed.path if parsed.path.is_absolute() else base / parsed.path
        return [path.resolve().parent]
    return [base]


def _library_roots() -> list[Path]:
    paths = sysconfig.get_paths()
    roots = {Path(paths[key]).resolve() for key in ("stdlib", "platstdlib", "purelib", "platlib")
             if key in paths}
    return sorted(roots)


def _where(error: BaseException, user_roots: list[Path]) -> str:
    """` (net.py, line 7)`: the line of the user's code the error came from, or ''. A frame under
    one of `user_roots` wins; otherwise the innermost one outside the standard library, the
    installed packages and actstat (a factory installed as a package falls back to its own
    innermost frame), so an error raised inside torch points at the user's call of torch."""
    if isinstance(error, SyntaxError) and error.filename and error.lineno:
        return f" ({_shown(Path(error.filename), user_roots)}, line {error.lineno})"
    frames = [frame for frame in traceback.extract_tb(error.__traceback__)
              if not frame.filename.startswith("<")]
    actstat_dir = Path(__file__).resolve().parent
    resolved = [(frame, Path(frame.filename).resolve()) for frame in frames]
    not_ours = [(f, p) for f, p in resolved if not p.is_relative_to(actstat_dir)]
    # a virtual environment (or actstat's checkout) may lie inside the user's directory
    libraries = _library_roots()
    outside = [(f, p) for f, p in not_ours if not any(p.is_relative_to(root) for root in libraries)]
    in_user = [(f, p) for f, p in outside if any(p.is_relative_to(root) for root in user_roots)]
    candidates = in_user or outside or not_ours
    if not candidates:  # raised by the call itself (Python's own argument check): no user line
        return ""
    chosen = candidates[-1][0]
    return f" ({_shown(Path(chosen.filename), user_roots)}, line {chosen.lineno})"


def _shown(path: Path, roots: list[Path]) -> str:
    """A path as a user recognises it: relative to the factory's directory (or base dir) when
    inside it, otherwise as it is."""
    resolved = path.resolve()
    for root in roots:
        if resolved.is_relative_to(root):
            return str(resolved.relative_to(root))
    return str(path)


def _what(value: Any) -> str:
    """`None`, `a tuple`, `an int (3)`: what a factory returned, briefly."""
    if value is None:
        return "None"
    name = type(value).__name__
    article = "an" if name[:1].lower() in "aeiou" else "a"
    text = repr(value)
    if len(text) <= 40 and "\n" not in text:
        return f"{article} {name} ({text})"
    return f"{article} {name}"
