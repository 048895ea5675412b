"""The CI recipe (docs/ci.md) works as written: its actstat commands, run in a fresh shell in an empty
directory, pass on the committed config and fail (exit 1) once the config is edited."""

from __future__ import annotations

import os
import re
import subprocess
import sys

import pytest
import yaml

from conftest import ROOT

pytestmark = pytest.mark.slow  # runs actstat in fresh shells

SECTION = (ROOT / "docs" / "ci.md").read_text(encoding="utf-8")
BLOCKS = re.findall(r"```(\w+)\n(.*?)```", SECTION, flags=re.S)
CONFIG = next(body for kind, body in BLOCKS if kind == "yaml" and "jobs:" not in body)
WORKFLOW = yaml.safe_load(next(body for kind, body in BLOCKS if "jobs:" in body))
RUNS = [step["run"].strip() for job in WORKFLOW["jobs"].values() for step in job["steps"]
        if "run" in step]
SETUP = [line.split("#")[0].strip() for kind, body in BLOCKS if kind == "bash"
         for line in body.splitlines() if line.startswith("actstat ")]
CHECKS = [run for run in RUNS if run.startswith("actstat ")]


def shell(command: str, cwd) -> subprocess.CompletedProcess:
    """`command` in a fresh bash with only this environment's actstat on PATH."""
    env = {"PATH": f"{os.path.dirname(sys.executable)}:/usr/bin:/bin", "HOME": str(cwd),
           "LANG": "C.UTF-8"}
    return subprocess.run(["bash", "-c", command], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=300)


def test_the_recipe_installs_cpu_torch_then_actstat_from_its_repository():
    installs = [run for run in RUNS if run.startswith("pip install")]
    assert len(installs) == 2, installs
    torch_first, actstat = installs
    assert torch_first.startswith("pip install torch") and "whl/cpu" in torch_first
    assert "git+" in actstat and not re.search(r"pip install actstat\b", SECTION)


def test_the_recipe_passes_then_fails_on_an_edited_config(tmp_path):
    assert "init: kaiming" in CONFIG and SETUP and CHECKS
    (tmp_path / "actstat.yaml").write_text(CONFIG)
    for command in SETUP:
        done = shell(command, tmp_path)
        assert done.returncode == 0, f"{command}\n{done.stderr}"
    for command in CHECKS:
        done = shell(command, tmp_path)
        assert done.returncode == 0, f"{command}\n{done.stdout}{done.stderr}"

    config = tmp_path / "actstat.yaml"
    config.write_text(config.read_text().replace("init: kaiming", "init: xavier"))
    for command in CHECKS:
        done = shell(command, tmp_path)
        assert done.returncode == 1, f"{command}\n{done.stdout}{done.stderr}"
        assert "actstat: check FAILED: " in done.stderr
    summary = (tmp_path / "actstat-summary.md").read_text()
    assert "❌ failed" in summary and "`init[0].name: 'kaiming' → 'xavier'`" in summary
    junit = (tmp_path / "actstat-junit.xml").read_text()
    assert re.search(r'<testsuite [^>]*failures="[1-9]', junit), junit
