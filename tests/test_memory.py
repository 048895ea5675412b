"""Host memory on any OS (psutil) within a container's cgroup limit, v1 and v2, nested or not."""

from __future__ import annotations

import sys
from types import SimpleNamespace

import psutil
import pytest
import torch

from actstat import memory, plan
from actstat.config import load_config

GiB, MiB = 2**30, 2**20
V1_NO_LIMIT = "9223372036854771712"  # what cgroup v1 writes for "no limit"


@pytest.fixture
def system(monkeypatch):
    """system(bytes): psutil reports this much available memory (None: psutil fails)."""

    def set_available(available: int | None) -> None:
        def virtual_memory():
            if available is None:
                raise RuntimeError("not supported on this platform")
            return SimpleNamespace(available=available, total=4 * available)

        monkeypatch.setattr(psutil, "virtual_memory", virtual_memory)

    set_available(64 * GiB)
    return set_available


def _write(directory, files: dict[str, str]) -> None:
    directory.mkdir(parents=True, exist_ok=True)
    for name, text in files.items():
        (directory / name).write_text(text + "\n", encoding="ascii")


def v2(directory, limit: str, current: int, inactive: int = 0) -> None:
    _write(directory, {"memory.max": limit, "memory.current": str(current),
                       "memory.stat": f"anon {current - inactive}\nfile {inactive}\n"
                                      f"inactive_anon 0\ninactive_file {inactive}"})


def v1(directory, limit: str, usage: int, inactive: int = 0) -> None:
    # memory.stat has both the level's own inactive_file and the hierarchy's total_: v1's usage
    # counts the whole subtree, so the total is the one to subtract
    _write(directory, {"memory.limit_in_bytes": limit, "memory.usage_in_bytes": str(usage),
                       "memory.stat": f"cache {inactive}\ninactive_file 1\n"
                                      f"total_inactive_file {inactive}"})


def available(tmp_path, proc: str = "0::/\n"):
    proc_cgroup = tmp_path / "proc-self-cgroup"
    proc_cgroup.write_text(proc, encoding="ascii")
    return memory.available_memory(tmp_path / "cgroup", proc_cgroup)


def test_outside_any_container_it_is_psutils_available_memory(tmp_path, system):
    (tmp_path / "cgroup").mkdir()
    assert available(tmp_path) == 64 * GiB


def test_cgroup_v2_limit_minus_working_set(tmp_path, system):
    v2(tmp_path / "cgroup", str(4 * GiB), current=GiB, inactive=256 * MiB)
    assert available(tmp_path) == 4 * GiB - (GiB - 256 * MiB)


def test_the_host_wins_when_it_has_less_than_the_container(tmp_path, system):
    v2(tmp_path / "cgroup", str(4 * GiB), current=GiB)
    system(2 * GiB)
    assert available(tmp_path) == 2 * GiB


def test_cgroup_v2_without_a_limit(tmp_path, system):
    v2(tmp_path / "cgroup", "max", current=GiB)
    assert available(tmp_path) == 64 * GiB


def test_cgroup_v1_limit_minus_working_set(tmp_path, system):
    v1(tmp_path / "cgroup" / "memory", str(2 * GiB), usage=512 * MiB, inactive=128 * MiB)
    assert available(tmp_path, "4:memory:/\n") == 2 * GiB - 384 * MiB


def test_cgroup_v1_without_a_limit(tmp_path, system):
    v1(tmp_path / "cgroup" / "memory", V1_NO_LIMIT, usage=512 * MiB)
    assert available(tmp_path, "4:memory:/\n") == 64 * GiB


def test_a_nested_v2_group_limits_below_an_unlimited_root(tmp_path, system):
    root = tmp_path / "cgroup"
    v2(root, "max", current=8 * GiB)
    v2(root / "user.slice", str(6 * GiB), current=GiB)
    v2(root / "user.slice" / "app.scope", str(3 * GiB), current=GiB)
    assert available(tmp_path, "0::/user.slice/app.scope\n") == 2 * GiB
    # the tightest level wins, wherever it is on the path
    v2(root / "user.slice", str(2 * GiB), current=int(1.5 * GiB))
    assert available(tmp_path, "0::/user.slice/app.scope\n") == GiB // 2


def test_a_nested_v1_memory_group_as_on_this_kind_of_host(tmp_path, system):
    root = tmp_path / "cgroup" / "memory"
    v1(root, V1_NO_LIMIT, usage=6 * GiB)
    v1(root / "process_api" / "abc", str(3 * GiB), usage=2 * GiB, inactive=GiB)
    proc = "9:name=systemd:/\n4:memory:/process_api/abc\n1:cpu:/\n0::/\n"
    assert available(tmp_path, proc) == 2 * GiB


def test_a_path_of_the_hosts_namespace_that_the_container_does_not_mount_is_skipped(tmp_path,
                                                                                      system):
    v2(tmp_path / "cgroup", str(3 * GiB), current=GiB)  # the container's own group, at the root
    assert available(tmp_path, "0::/docker/0123abcd\n") == 2 * GiB


def test_both_hierarchies_the_smaller_room_wins(tmp_path, system):
    root = tmp_path / "cgroup"
    v2(root, str(5 * GiB), current=GiB)
    v1(root / "memory", str(3 * GiB), usage=GiB)
    assert available(tmp_path, "4:memory:/\n0::/\n") == 2 * GiB


def test_usage_above_the_limit_leaves_nothing(tmp_path, system):
    v2(tmp_path / "cgroup", str(GiB), current=2 * GiB)
    assert available(tmp_path) == 0


def test_unreadable_or_garbled_files_are_ignored(tmp_path, system):
    _write(tmp_path / "cgroup", {"memory.max": "lots", "memory.current": "1"})
    _write(tmp_path / "cgroup" / "memory", {"memory.limit_in_bytes": str(GiB)})  # no usage file
    assert available(tmp_path, "garbage\n4:memory:/\n") == 64 * GiB


def test_without_psutil_the_cgroup_alone_or_nothing(tmp_path, system, monkeypatch):
    system(None)
    (tmp_path / "cgroup").mkdir()
    assert available(tmp_path) is None
    v2(tmp_path / "cgroup", str(GiB), current=0)
    assert available(tmp_path) == GiB
    monkeypatch.setitem(sys.modules, "psutil", None)  # not installed: import fails
    assert available(tmp_path) == GiB


def test_the_real_machine_gives_a_plausible_figure():
    free = memory.available_memory()
    assert free is not None and 0 < free <= psutil.virtual_memory().total


@pytest.fixture
def container(tmp_path, monkeypatch, system):
    """A container with a 300 MiB cgroup v2 limit on a host with 64 GiB available."""
    root = tmp_path / "cgroup"
    v2(root, str(300 * MiB), current=0)
    proc = tmp_path / "proc-self-cgroup"
    proc.write_text("0::/\n", encoding="ascii")
    monkeypatch.setattr(memory, "CGROUP_ROOT", root)
    monkeypatch.setattr(memory, "PROC_CGROUP", proc)


def test_the_pre_flight_refuses_what_the_container_cannot_hold(cli, container):
    # about 0.5 GiB of weights and gradients: fits the host's 64 GiB, not the container's limit
    args = ["--depth", "2", "--width", "8192", "--batch-size", "16", "--device", "cpu"]
    line = cli("run", *args, code=2).stderr.strip()
    assert "this run needs about" in line and "cpu has 0.3 GiB free" in line, line


def test_stacked_compare_stays_within_the_container(container):
    config = load_config(None, {"model.depth": 4, "model.width": 256, "data.batch_size": 256,
                                "device": "cpu"})
    needed = plan.memory_needed(config, 784, 4)
    per_scheme = needed["activations"] + 2 * needed["weights"]
    expected = (150 * MiB) // per_scheme  # half of the container's room, not of the host's
    assert 1 < expected < plan.MAX_STACK
    assert plan.stack_size(config, 784, torch.device("cpu"), torch.float32) == expected
