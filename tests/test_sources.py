"""Model sources: a user's factory file or module -> nn.Module, and the one-line error for each mistake."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from torch import nn

from actstat import sources
from actstat.errors import ActstatError, ModelSourceError

FACTORY = """
    import torch
    from torch import nn


    class Net(nn.Module):
        def __init__(self, width=8):
            super().__init__()
            self.fc = nn.Linear(4, width)


    def make_model(width: int = 8, depth: int = 2):
        layers = [nn.Linear(4, width)]
        for _ in range(depth - 1):
            layers += [nn.ReLU(), nn.Linear(width, width)]
        return nn.Sequential(*layers)


    def make_vocab_model(vocab, *, dim=4):
        return nn.Embedding(vocab, dim)


    def make_anything(**options):
        return nn.Linear(options["fan_in"], 2)


    def make_positional(vocab, /):
        return nn.Embedding(vocab, 2)


    def make_nothing():
        return nn.Module()


    def make_broken():
        return nn.Linear(4, -1)


    def make_none():
        nn.Linear(2, 2)


    def make_tuple():
        return nn.Linear(2, 2), nn.Linear(2, 2)


    def make_dict():
        return {"model": nn.Linear(2, 2), "optimiser": None}


    model = nn.Linear(2, 2)
    SIZES = [1, 2, 3]
    _private = lambda: None  # noqa: E731
"""


def write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(textwrap.dedent(text), encoding="utf-8")
    return path


def message(excinfo: pytest.ExceptionInfo[ModelSourceError]) -> str:
    """The error's text, checked to be one line (the CLI prints it as is)."""
    text = str(excinfo.value)
    assert "\n" not in text, text
    assert isinstance(excinfo.value, ActstatError)
    return text


def loaded_from(path: Path) -> list[str]:
    """The names in sys.modules of modules imported from `path`."""
    return [name for name, module in list(sys.modules.items())
            if getattr(module, "__file__", None) == str(path)]


@pytest.fixture
def factory_dir(tmp_path: Path) -> Path:
    write(tmp_path / "models" / "net.py", FACTORY)
    return tmp_path


# -- parse --------------------------------------------------------------------------------------


@pytest.mark.parametrize(("spec", "path", "module", "attribute"), [
    ("net.py:make_model", "net.py", None, "make_model"),
    ("models/net.py:make_model", "models/net.py", None, "make_model"),
    ("/abs/dir/net.py:Net.from_config", "/abs/dir/net.py", None, "Net.from_config"),
    ("models/net:make", "models/net", None, "make"),  # a separator makes it a path: told "not a .py file"
    ("my-model.txt:make", "my-model.txt", None, "make"),  # not a dotted name: a path
    ("mypkg.models:make_model", None, "mypkg.models", "make_model"),
    ("mypkg:make_model", None, "mypkg", "make_model"),
    (" mypkg.models : make_model ", None, "mypkg.models", "make_model"),
])
def test_parse_tells_files_from_modules(spec, path, module, attribute):
    parsed = sources.parse(spec)
    assert parsed.path == (Path(path) if path else None)
    assert parsed.module == module
    assert parsed.attribute == attribute
    assert str(parsed) == spec.strip()


def test_parse_expands_the_home_directory(monkeypatch, tmp_path):
    monkeypatch.setenv("HOME", str(tmp_path))
    assert sources.parse("~/net.py:make").path == tmp_path / "net.py"


def test_parse_result_is_frozen():
    parsed = sources.parse("net.py:make")
    with pytest.raises(AttributeError):
        parsed.attribute = "other"  # type: ignore[misc]


@pytest.mark.parametrize(("spec", "expected"), [
    ("net.py", "model factory 'net.py' has no ':' before the function's name; write "
               "path/to/file.py:make_model or package.module:make_model"),
    (":make_model", "model factory ':make_model' names no file or module before ':'"),
    ("net.py:", "model factory 'net.py:' names no function after ':'"),
    ("  ", "has no ':'"),
    ("net.py:make-model", "model factory 'net.py:make-model': 'make-model' is not a Python name"),
    ("net.py:class", "'class' is not a Python name"),
])
def test_parse_errors(spec, expected):
    with pytest.raises(ModelSourceError) as excinfo:
        sources.parse(spec)
    assert expected in message(excinfo)


# -- loading a file -----------------------------------------------------------------------------


def test_file_relative_to_base_dir(factory_dir):
    factory = sources.load_factory("models/net.py:make_model", base_dir=factory_dir)
    assert factory.__name__ == "make_model"
    model = factory(width=5, depth=3)
    assert [type(m) for m in model] == [nn.Linear, nn.ReLU, nn.Linear, nn.ReLU, nn.Linear]


def test_file_relative_to_the_current_directory(factory_dir, monkeypatch):
    monkeypatch.chdir(factory_dir / "models")
    assert sources.load_factory("net.py:make_model").__name__ == "make_model"


def test_absolute_file_ignores_base_dir(factory_dir, tmp_path_factory):
    elsewhere = tmp_path_factory.mktemp("elsewhere")
    path = factory_dir / "models" / "net.py"
    assert sources.load_factory(f"{path}:Net", base_dir=elsewhere).__name__ == "Net"


def test_nested_attribute(tmp_path):
    write(tmp_path / "net.py", """
        from torch import nn

        class Builder:
            @staticmethod
            def tiny():
                return nn.Linear(2, 3)
    """)
    model = sources.build_model("net.py:Builder.tiny", base_dir=tmp_path)
    assert isinstance(model, nn.Linear) and model.out_features == 3


def test_same_file_twice_gives_independent_modules(factory_dir):
    first = sources.load_factory("models/net.py:make_model", base_dir=factory_dir)
    second = sources.load_factory("models/net.py:make_model", base_dir=factory_dir)
    assert first is not second
    assert first.__module__ != second.__module__
    assert first.__globals__ is not second.__globals__
    # a module-level state change in one load is not seen by the other
    first.__globals__["SIZES"].append(4)
    assert second.__globals__["SIZES"] == [1, 2, 3]


def test_factory_module_stays_importable_by_its_unique_name(factory_dir):
    # inspect.getsource (TorchScript), get_type_hints and pickling look a class's module up there
    net = sources.load_factory("models/net.py:Net", base_dir=factory_dir)
    assert sys.modules[net.__module__].Net is net
    assert "class Net(nn.Module)" in __import__("inspect").getsource(net)


def test_sibling_import_and_sys_path_restored(tmp_path):
    write(tmp_path / "a" / "helper.py", "WIDTH = 3\n")
    write(tmp_path / "a" / "net.py", """
        import helper
        from torch import nn

        def make():
            return nn.Linear(2, helper.WIDTH)
    """)
    # the same sibling name beside another factory: it must get its own, not a cached one
    write(tmp_path / "b" / "helper.py", "WIDTH = 7\n")
    write(tmp_path / "b" / "net.py", """
        import helper
        from torch import nn

        def make():
            return nn.Linear(2, helper.WIDTH)
    """)
    path_before = list(sys.path)
    modules_before = set(sys.modules)
    a = sources.build_model("a/net.py:make", base_dir=tmp_path)
    b = sources.build_model("b/net.py:make", base_dir=tmp_path)
    assert (a.out_features, b.out_features) == (3, 7)
    assert sys.path == path_before
    assert "helper" not in sys.modules
    added = set(sys.modules) - modules_before
    assert all(name.startswith("actstat_factory_") for name in added), added


def test_sibling_imported_inside_the_factory(tmp_path):
    write(tmp_path / "layers.py", "from torch import nn\n\ndef block():\n    return nn.Linear(2, 5)\n")
    write(tmp_path / "net.py", """
        def make():
            import layers  # only when called: the directory must still be importable then

            return layers.block()
    """)
    path_before = list(sys.path)
    assert sources.build_model("net.py:make", base_dir=tmp_path).out_features == 5
    assert sys.path == path_before
    assert "layers" not in sys.modules


def test_sys_path_restored_after_a_failed_import(tmp_path):
    write(tmp_path / "net.py", "import sys\nsys.path.append('/somewhere')\nraise RuntimeError('no')\n")
    path_before = list(sys.path)
    with pytest.raises(ModelSourceError):
        sources.load_factory("net.py:make", base_dir=tmp_path)
    assert sys.path == path_before
    assert not loaded_from(tmp_path / "net.py")


# -- loading a module by name -------------------------------------------------------------------


@pytest.fixture
def package(tmp_path, monkeypatch):
    write(tmp_path / "site" / "mypkg" / "__init__.py", "")
    write(tmp_path / "site" / "mypkg" / "models.py", """
        from torch import nn

        def make_model(width=4):
            return nn.Linear(2, width)
    """)
    write(tmp_path / "site" / "mypkg" / "broken.py", "import mypkg.models\nimport not_installed_dependency\n")
    monkeypatch.syspath_prepend(str(tmp_path / "site"))
    # the test imports mypkg: forget it afterwards so that other tests' packages do not see it
    yield tmp_path
    for name in [name for name in sys.modules if name == "mypkg" or name.startswith("mypkg.")]:
        del sys.modules[name]


def test_dotted_module(package):
    model = sources.build_model("mypkg.models:make_model", {"width": 6})
    assert isinstance(model, nn.Linear) and model.out_features == 6
    assert sys.modules["mypkg.models"].make_model.__module__ == "mypkg.models"


def test_dotted_module_found_in_base_dir(tmp_path):
    # the console script has no current directory on sys.path; base_dir stands in for it
    write(tmp_path / "localpkg_for_sources" / "__init__.py", "")
    write(tmp_path / "localpkg_for_sources" / "nets.py",
          "from torch import nn\n\ndef make():\n    return nn.Linear(2, 9)\n")
    path_before = list(sys.path)
    try:
        model = sources.build_model("localpkg_for_sources.nets:make", base_dir=tmp_path)
        assert model.out_features == 9
        assert sys.path == path_before
    finally:
        for name in [n for n in sys.modules if n.startswith("localpkg_for_sources")]:
            del sys.modules[name]


def test_module_not_found(package):
    with pytest.raises(ModelSourceError) as excinfo:
        sources.load_factory("mypkg.modles:make_model")
    text = message(excinfo)
    assert text.startswith("model factory module 'mypkg.modles' not found (did you mean 'mypkg.models'?)")
    assert "a file is written path/to/file.py" in text


def test_top_level_module_not_found(tmp_path):
    with pytest.raises(ModelSourceError) as excinfo:
        sources.load_factory("no_such_package_anywhere.models:make", base_dir=tmp_path)
    assert message(excinfo).startswith("model factory module 'no_such_package_anywhere' not found;")


def test_module_whose_dependency_is_missing_raised_on_import(package):
    # not "not found": the module exists, and its import failed
    with pytest.raises(ModelSourceError) as excinfo:
        sources.load_factory("mypkg.broken:make")
    text = message(excinfo)
    assert text.startswith("importing model factory module 'mypkg.broken' raised ModuleNotFoundError: "
                           "No module named 'not_installed_dependency'")
    assert text.endswith(f"({package / 'site' / 'mypkg' / 'broken.py'}, line 2)")


# -- file errors --------------------------------------------------------------------------------


def test_missing_file_names_where_it_looked(tmp_path):
    with pytest.raises(ModelSourceError) as excinfo:
        sources.load_factory("models/nte.py:make_model", base_dir=tmp_path)
    looked_at = tmp_path.resolve() / "models" / "nte.py"
    assert message(excinfo) == f"model factory file 'models/nte.py' ({looked_at}) does not exist"


def test_not_a_python_file(tmp_path):
    write(tmp_path / "net.txt", "def make(): pass\n")
    with pytest.raises(ModelSourceError) as excinfo:
        sources.load_factory(f"{tmp_path / 'net.txt'}:make")
    assert message(excinfo) == f"model factory file '{tmp_path / 'net.txt'}' is not a .py file"


def test_a_directory(tmp_path):
    (tmp_path / "models.py").mkdir()
    with pytest.raises(ModelSourceError) as excinfo:
        sources.load_factory("models.py:make", base_dir=tmp_path)
    assert message(excinfo).endswith("is a directory, not a .py file")


def test_file_raising_on_import(tmp_path):
    write(tmp_path / "net.py", """
        from torch import nn

        WIDTH = 1 / 0
    """)
    with pytest.raises(ModelSourceError) as excinfo:
        sources.load_factory("net.py:make", base_dir=tmp_path)
    assert message(excinfo) == ("importing model factory file 'net.py' raised ZeroDivisionError: "
                                "division by zero (net.py, line 4)")
    assert not loaded_from(tmp_path / "net.py")


def test_error_in_a_sibling_points_at_the_sibling(tmp_path):
    write(tmp_path / "helper.py", "x = 1\nraise ValueError('bad helper')\n")
    write(tmp_path / "net.py", "import helper\n")
    with pytest.raises(ModelSourceError) as excinfo:
        sources.load_factory("net.py:make", base_dir=tmp_path)
    assert message(excinfo).endswith("raised ValueError: bad helper (helper.py, line 2)")
    assert "helper" not in sys.modules


def test_syntax_error_names_its_line(tmp_path):
    write(tmp_path / "net.py", "def make():\n    return (\n\nx = = 2\n")
    with pytest.raises(ModelSourceError) as excinfo:
        sources.load_factory("net.py:make", base_dir=tmp_path)
    text = message(excinfo)
    assert text.startswith("importing model factory file 'net.py' raised SyntaxError: ")
    assert text.endswith("(net.py, line 2)") or text.endswith("(net.py, line 4)"), text


def test_relative_import_in_a_file_suggests_the_module_form(tmp_path):
    write(tmp_path / "pkg" / "__init__.py", "")
    write(tmp_path / "pkg" / "layers.py", "")
    write(tmp_path / "pkg" / "net.py", "from . import layers\n")
    with pytest.raises(ModelSourceError) as excinfo:
        sources.load_factory("pkg/net.py:make", base_dir=tmp_path)
    text = message(excinfo)
    assert "raised ImportError: attempted relative import with no known parent package" in text
    assert text.endswith("(a file in a package is imported by its module name: package.module:function)")


# -- the attribute ------------------------------------------------------------------------------


def test_missing_attribute_lists_what_the_file_defines(factory_dir):
    with pytest.raises(ModelSourceError) as excinfo:
        sources.load_factory("models/net.py:make_modle", base_dir=factory_dir)
    # the file's own functions and classes: not nn or torch (imported), not SIZES (not callable)
    assert message(excinfo) == (
        "'models/net.py' has no 'make_modle' (did you mean 'make_model'?); it defines: Net, make_anything, "
        "make_broken, make_dict, make_model, make_none, make_nothing, make_positional, make_tuple, "
        "make_vocab_model")


def test_missing_attribute_in_a_file_that_defines_nothing(tmp_path):
    write(tmp_path / "empty.py", "import torch\nWIDTH = 3\n")
    with pytest.raises(ModelSourceError) as excinfo:
        sources.load_factory("empty.py:make", base_dir=tmp_path)
    assert message(excinfo) == "'empty.py' has no 'make'; it defines no functions or classes"


def test_missing_nested_attribute(tmp_path):
    write(tmp_path / "net.py", "class Builder:\n    def tiny(self):\n        pass\n")
    with pytest.raises(ModelSourceError) as excinfo:
        sources.load_factory("net.py:Builder.tiyn", base_dir=tmp_path)
    assert message(excinfo) == "'net.py''s Builder has no 'tiyn' (did you mean 'tiny'?); it defines: tiny"


def test_missing_attribute_in_a_module(package):
    with pytest.raises(ModelSourceError) as excinfo:
        sources.load_factory("mypkg.models:make_mdel")
    assert message(excinfo) == ("module 'mypkg.models' has no 'make_mdel' (did you mean 'make_model'?); "
                                "it defines: make_model")


def test_not_callable(factory_dir):
    with pytest.raises(ModelSourceError) as excinfo:
        sources.load_factory("models/net.py:SIZES", base_dir=factory_dir)
    assert message(excinfo) == ("model factory 'models/net.py:SIZES' is a list ([1, 2, 3]), "
                                "not a function or class")


def test_module_instance_is_not_a_factory(factory_dir):
    # an nn.Module is callable: calling it would run its forward, not build a model
    with pytest.raises(ModelSourceError) as excinfo:
        sources.load_factory("models/net.py:model", base_dir=factory_dir)
    assert message(excinfo) == ("model factory 'models/net.py:model' is an nn.Module instance (Linear), "
                                "not a factory; name a function or class that returns the model")


# -- calling the factory ------------------------------------------------------------------------


def test_kwargs_passed_through(factory_dir):
    def build(name, kwargs):
        return sources.build_model(f"models/net.py:{name}", kwargs, base_dir=factory_dir)

    model = build("make_model", {"width": 11, "depth": 4})
    assert [m.out_features for m in model if isinstance(m, nn.Linear)] == [11, 11, 11, 11]
    model = build("make_vocab_model", {"vocab": 13, "dim": 3})
    assert tuple(model.weight.shape) == (13, 3)
    model = build("make_anything", {"fan_in": 6})
    assert model.in_features == 6


def test_defaults_without_kwargs(factory_dir):
    model = sources.build_model("models/net.py:make_model", base_dir=factory_dir)
    assert [m.out_features for m in model if isinstance(m, nn.Linear)] == [8, 8]


def test_a_class_is_a_factory(factory_dir):
    model = sources.build_model("models/net.py:Net", {"width": 3}, base_dir=factory_dir)
    assert type(model).__name__ == "Net" and model.fc.out_features == 3


def test_unexpected_keyword_names_the_accepted_ones(factory_dir):
    with pytest.raises(ModelSourceError) as excinfo:
        sources.build_model("models/net.py:make_model", {"widht": 3}, base_dir=factory_dir)
    assert message(excinfo) == ("model factory 'models/net.py:make_model' takes no keyword argument 'widht' "
                                "(did you mean 'width'?); it accepts: width=8, depth=2")


def test_missing_keyword(factory_dir):
    with pytest.raises(ModelSourceError) as excinfo:
        sources.build_model("models/net.py:make_vocab_model", {"dim": 3}, base_dir=factory_dir)
    assert message(excinfo) == ("model factory 'models/net.py:make_vocab_model' needs keyword argument "
                                "'vocab'; it accepts: vocab, dim=4")


def test_positional_only_parameter(factory_dir):
    with pytest.raises(ModelSourceError) as excinfo:
        sources.build_model("models/net.py:make_positional", {"vocab": 3}, base_dir=factory_dir)
    assert "needs positional-only argument 'vocab', which keyword arguments cannot give" in message(excinfo)


def test_keyword_that_is_not_a_name(factory_dir):
    with pytest.raises(ModelSourceError) as excinfo:
        sources.build_model("models/net.py:make_anything", {1: 2}, base_dir=factory_dir)
    assert message(excinfo) == ("model factory 'models/net.py:make_anything': keyword argument 1 "
                                "is not a Python name")


def test_factory_raising_points_at_the_users_line(factory_dir):
    # the error is raised inside torch; the line shown is the user's call
    with pytest.raises(ModelSourceError) as excinfo:
        sources.build_model("models/net.py:make_broken", base_dir=factory_dir)
    text = message(excinfo)
    assert text.startswith("model factory 'models/net.py:make_broken' raised RuntimeError: ")
    line = textwrap.dedent(FACTORY).splitlines().index("    return nn.Linear(4, -1)") + 1
    assert text.endswith(f"(net.py, line {line})"), text


@pytest.mark.parametrize(("name", "returned"), [
    ("make_none", "returned None, not a torch.nn.Module (does it end with `return model`?)"),
    ("make_tuple", "returned a tuple, not a torch.nn.Module"),
    ("make_dict", "returned a dict, not a torch.nn.Module"),
])
def test_factory_returning_no_module(factory_dir, name, returned):
    with pytest.raises(ModelSourceError) as excinfo:
        sources.build_model(f"models/net.py:{name}", base_dir=factory_dir)
    assert message(excinfo) == f"model factory 'models/net.py:{name}' {returned}"


def test_short_return_values_are_shown(tmp_path):
    write(tmp_path / "net.py", "def make():\n    return 3\n")
    with pytest.raises(ModelSourceError) as excinfo:
        sources.build_model("net.py:make", base_dir=tmp_path)
    assert message(excinfo) == "model factory 'net.py:make' returned an int (3), not a torch.nn.Module"


def test_a_module_with_nothing_in_it_is_accepted(factory_dir):
    # whether there is anything to measure is the probe's decision, on the forward it runs
    model = sources.build_model("models/net.py:make_nothing", base_dir=factory_dir)
    assert type(model) is nn.Module and not list(model.parameters())


def test_a_parsed_spec_is_accepted(factory_dir):
    parsed = sources.parse("models/net.py:make_model")
    model = sources.build_model(parsed, {"width": 2}, base_dir=factory_dir)
    assert model[0].out_features == 2


def test_seeded_factories_are_reproducible(factory_dir):
    torch.manual_seed(0)
    first = sources.build_model("models/net.py:make_model", base_dir=factory_dir)
    torch.manual_seed(0)
    second = sources.build_model("models/net.py:make_model", base_dir=factory_dir)
    assert torch.equal(first[0].weight, second[0].weight)


@pytest.mark.slow
def test_importing_sources_does_not_import_torch():
    code = "import sys, actstat.sources; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_factory_without_a_signature_is_called_as_is(tmp_path):
    # a builtin has no signature to check against: the call's own TypeError, with no line of actstat's
    write(tmp_path / "net.py", "make = int\n")
    with pytest.raises(ModelSourceError) as excinfo:
        sources.build_model("net.py:make", {"x": 1}, base_dir=tmp_path)
    assert message(excinfo) == ("model factory 'net.py:make' raised TypeError: "
                                "'x' is an invalid keyword argument for int()")
