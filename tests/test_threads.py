"""Profiling from several Python threads at once gives each thread the numbers it gets alone.

The C kernel (actstat/_kernels.c) runs with the GIL released; its working memory (each unit's
alive flags, a feature map's per-position extremes) once was one buffer shared by the process,
and four threads profiling four MLPs gave other numbers than the same profiles run one after
another. The kernel is deterministic for a fixed thread count, so threaded and sequential
numbers must be equal, not close."""

from __future__ import annotations

import os
import subprocess
import sys
import threading

import pytest
import torch
from torch import nn

import actstat
from actstat import fused

THREADS = 4
REPEATS = 5


def mlp(seed: int, width: int, depth: int = 6) -> tuple[nn.Module, torch.Tensor]:
    """A ReLU MLP whose biases kill a share of its units (so the dead counts depend on every
    unit's alive flag), and its batch: batch x width values per layer, large enough that the
    kernel shares a layer among threads and walks a row in several segments."""
    g = torch.Generator().manual_seed(seed)
    layers: list[nn.Module] = []
    for _ in range(depth):
        linear = nn.Linear(width, width)
        with torch.no_grad():
            linear.weight.copy_(torch.randn(width, width, generator=g) * (2 / width) ** 0.5)
            # a fifth of the units pushed far below zero: dead for the whole batch
            linear.bias.copy_(torch.where(torch.rand(width, generator=g) < 0.2, -50.0, 0.0))
        layers += [linear, nn.ReLU()]
    layers.append(nn.Linear(width, 10))
    model = nn.Sequential(*layers)
    inputs = torch.randn(512, width, generator=g)
    return model, inputs


def numbers(report) -> list[tuple]:
    """Every number of every row (the rows' dataclasses as tuples)."""
    return [tuple(vars(layer).values()) for layer in report.runs[0].layers]


@pytest.fixture
def threads():
    """torch's thread count, restored after the test."""
    before = torch.get_num_threads()
    yield torch.set_num_threads
    torch.set_num_threads(before)


def run_threads(work, count: int) -> list:
    """work(k) for k < count, each on its own thread started together; their results, or the
    first exception raised."""
    results: list = [None] * count
    errors: list[BaseException] = []
    start = threading.Barrier(count)

    def body(k: int) -> None:
        try:
            start.wait()
            results[k] = work(k)
        except BaseException as error:  # noqa: BLE001 - re-raised on the main thread
            errors.append(error)

    threads = [threading.Thread(target=body, args=(k,)) for k in range(count)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    if errors:
        raise errors[0]
    return results


@pytest.mark.slow
def test_threads_profiling_different_mlps_get_their_sequential_numbers():
    """The reported scenario: four threads, each profiling its own MLP (its own seed and
    width) five times; every one of the twenty Reports equals that MLP's sequential one."""
    cases = [mlp(seed, width) for seed, width in zip(range(THREADS), (1536, 1024, 2048, 1280))]
    reports = [actstat.profile(model, inputs) for model, inputs in cases]
    assert all(0.1 < layer.post.dead < 0.4 for layer in reports[0].runs[0].layers[:-1])
    alone = [numbers(report) for report in reports]

    def repeated(k: int) -> list:
        model, inputs = cases[k]
        return [numbers(actstat.profile(model, inputs)) for _ in range(REPEATS)]

    together = run_threads(repeated, THREADS)
    wrong = [(k, r) for k in range(THREADS) for r in range(REPEATS) if together[k][r] != alone[k]]
    assert not wrong, f"{len(wrong)} of {THREADS * REPEATS} threaded profiles differ: {wrong}"


@pytest.mark.skipif(not fused.AVAILABLE, reason="actstat._kernels was not built")
@pytest.mark.parametrize("channels", [False, True])
def test_kernel_called_from_threads_at_once_gives_each_its_own_numbers(channels):
    """fused.reduce on different tensors from several threads at once, each many times: each
    call's numbers are the ones the same tensor gives alone (dead units and the gap read the
    kernel's working memory)."""
    tensors = []
    for k in range(THREADS):
        g = torch.Generator().manual_seed(10 + k)
        shape = (64, 24 + 8 * k, 3000 + 500 * k) if channels else (256, 3000 + 1000 * k)
        x = torch.randn(shape, generator=g).relu_()
        x[:, :: k + 2] = 0.0  # dead units: a half, a third, ... of them
        tensors.append(x.contiguous())

    def reduced(x: torch.Tensor) -> tuple[float, ...]:
        got = fused.reduce(x, channels=channels, near_zero=0.01, edges=None, spread=True)
        assert got is not None
        return got

    alone = [reduced(x) for x in tensors]
    assert len({numbers[7] for numbers in alone}) == THREADS  # each its own dead fraction
    together = run_threads(lambda k: [reduced(tensors[k]) for _ in range(40)], THREADS)
    for k in range(THREADS):
        assert all(got == alone[k] for got in together[k]), k


@pytest.mark.skipif(not fused.AVAILABLE, reason="actstat._kernels was not built")
def test_kernel_attention_from_threads_at_once_gives_each_its_own_numbers():
    """fused.attention (with fused.reduce between) on different tensors from several threads at
    once: each call's numbers are the ones the same tensor gives alone (both use the calling
    thread's working memory)."""
    logits, maps = [], []
    for k in range(THREADS):
        g = torch.Generator().manual_seed(20 + k)
        logits.append(torch.randn(4, 3 + k, 64, 100 + 30 * k, generator=g) * (1 + k))
        maps.append(torch.randn(32, 8 + 4 * k, 400, generator=g) - 0.5 * k)

    def numbers(k: int) -> tuple:
        sums = torch.zeros(2 * logits[k].shape[1], dtype=torch.float64)
        fused.attention(logits[k], -1e37, sums)
        reduced = fused.reduce(maps[k], channels=True, near_zero=0.01, edges=None, spread=True)
        return tuple(sums.tolist()), reduced

    alone = [numbers(k) for k in range(THREADS)]
    together = run_threads(lambda k: [numbers(k) for _ in range(30)], THREADS)
    for k in range(THREADS):
        assert all(got == alone[k] for got in together[k]), k


@pytest.mark.skipif(not fused.AVAILABLE or not hasattr(os, "fork"), reason="needs the kernel and fork")
def test_a_forked_child_on_one_thread_reduces_as_its_parent(threads):
    """A child made by fork after the parent's pool ran (a DataLoader worker) reduces on one
    thread, as torch's DataLoader sets its workers: the thread-local buffer and the runtime
    lookup carry over, to the parent's one-thread numbers. (With two threads the child would
    hang in OpenMP, as torch's own ops do there: libgomp's pool does not survive a fork.)"""
    threads(2)
    x = torch.randn(512, 2048, generator=torch.Generator().manual_seed(3)).relu_()

    def reduced() -> tuple[float, ...]:
        return fused.reduce(x, channels=False, near_zero=0.01, edges=None, spread=True)

    reduced()  # the pool's team started, the buffer grown
    threads(1)
    want = repr(reduced())
    threads(2)
    read, write = os.pipe()
    child = os.fork()
    if child == 0:  # pragma: no cover - the child reports through the pipe
        try:
            torch.set_num_threads(1)
            os.write(write, repr(reduced()).encode())
        finally:
            os._exit(0)
    os.close(write)
    with os.fdopen(read) as pipe:
        got = pipe.read()
    os.waitpid(child, 0)
    assert got == want


LIMITED = """
import sys, torch
from actstat import fused
torch.set_num_threads(2)
x = torch.randn(512, 2048, generator=torch.Generator().manual_seed(3)).relu_()
print(repr(fused.reduce(x, channels=False, near_zero=0.01, edges=None, spread=True)))
"""


@pytest.mark.slow
@pytest.mark.skipif(not fused.AVAILABLE, reason="actstat._kernels was not built")
@pytest.mark.parametrize("setting", [{"OMP_THREAD_LIMIT": "1"}, {"OMP_DYNAMIC": "true"}, {}])
def test_a_smaller_openmp_team_still_reduces_every_part(threads, setting):
    """The OpenMP runtime may give fewer threads than asked (OMP_THREAD_LIMIT, OMP_DYNAMIC): the
    tensor's parts are fixed by the count asked for, and the team reduces all of them, to the
    numbers of a full team (once, half the tensor went unread)."""
    threads(2)
    x = torch.randn(512, 2048, generator=torch.Generator().manual_seed(3)).relu_()
    want = repr(fused.reduce(x, channels=False, near_zero=0.01, edges=None, spread=True))
    env = {**os.environ, **setting}
    got = subprocess.run([sys.executable, "-c", LIMITED], env=env, capture_output=True, text=True,
                         check=True).stdout.strip()
    assert got == want
