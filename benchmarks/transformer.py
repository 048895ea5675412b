"""A GPT-2-small-sized model (124 M parameters, transformers' default GPT2Config, its own init)
profiled forward and backward against its bare forward and backward, batch 4 × 256 tokens; and
the peak memory of each, in child processes.

    python benchmarks/transformer.py [--quick] [--device cpu|cuda] [--repeats N]

What the profile adds on such a model: a hook pair on each of its ~150 modules, every measured
tensor reduced where it is made, the residual stream's adds and attention's probabilities seen
through torch's function mode (actstat/stream.py; SDPA's logits computed again from its query
and key, a piece of queries at a time), one host copy. Both sides start and end with a model
that holds no gradients. `--quick`: 2 layers, 64 tokens. Ratios are medians of ABBA-paired
repeats (benchmarks/run.py's `paired`); nothing is asserted.
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import torch  # noqa: E402
from run import MALLOC_TUNED, cpu_name, paired  # noqa: E402  (tunes malloc before torch starts)
from torch.nn import functional as F  # noqa: E402

from actstat.capture import capture  # noqa: E402

BATCH, LENGTH = 4, 256


def build(quick: bool, device: torch.device):
    import transformers

    config = transformers.GPT2Config(n_layer=2 if quick else 12)
    torch.manual_seed(0)
    model = transformers.GPT2LMHeadModel(config).to(device).eval()
    length = 64 if quick else LENGTH
    ids = torch.randint(config.vocab_size, (BATCH, length),
                        generator=torch.Generator().manual_seed(1)).to(device)
    return model, ids


def next_token(out, ids):
    logits = out[:, :-1].float()
    return F.cross_entropy(logits.reshape(-1, logits.shape[-1]), ids[:, 1:].reshape(-1))


def bare(model, ids) -> None:
    next_token(model(input_ids=ids).logits, ids).backward()
    # as the profile leaves the model: without gradients (it sets aside any it finds and keeps
    # them for the model until it is done, memory a bare pass after a bare pass does not hold)
    model.zero_grad(set_to_none=True)


def profiled(model, ids) -> None:
    capture(model, {"input_ids": ids}, ids, loss=next_token, output="logits")


def peak_child(mode: str, quick: bool, device: str) -> float:
    """Peak resident memory (MiB) of a child process that builds the model and runs one pass."""
    code = (f"import sys; sys.path.insert(0, {str(HERE)!r}); import transformer as t, torch\n"
            f"m, ids = t.build({quick}, torch.device({device!r}))\n"
            f"t.{mode}(m, ids)\n"
            "print(next(int(l.split()[1]) for l in open('/proc/self/status')"
            " if l.startswith('VmHWM:')) / 1024)\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True)
    return float(out.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    device = torch.device(args.device)
    model, ids = build(args.quick, device)
    params = sum(p.numel() for p in model.parameters())
    print(f"machine: {cpu_name()}, torch {torch.__version__} ({torch.get_num_threads()} "
          f"threads), device {device}; glibc malloc tuned: {'yes' if MALLOC_TUNED else 'no'}")
    print(f"model: GPT-2, {params / 1e6:.0f} M parameters, batch {ids.shape[0]} × "
          f"{ids.shape[1]} tokens, forward + backward; median of {args.repeats}")
    base, ours, ratio = paired(lambda: bare(model, ids), lambda: profiled(model, ids),
                               args.repeats, device)
    print(f"bare {base:.3f} s, profiled {ours:.3f} s")
    print(f"gpt2_forward_backward_overhead={ratio:.4g}")
    if device.type == "cpu":
        # a peak depends on where glibc's malloc happens to place the large blocks: in three
        # children apiece the same pass peaked up to 190 MiB apart, so the medians are compared
        plain = statistics.median(peak_child("bare", args.quick, args.device) for _ in range(3))
        measured = statistics.median(peak_child("profiled", args.quick, args.device)
                                     for _ in range(3))
        largest = BATCH * (64 if args.quick else LENGTH) * model.config.vocab_size * 4 / 2**20
        print(f"peak RSS (median of 3 processes each): bare {plain:.0f} MiB, profiled "
              f"{measured:.0f} MiB "
              f"(+{measured - plain:.0f} MiB; the largest activation, the logits: "
              f"{largest:.0f} MiB)")
        print(f"gpt2_peak_rss_extra_mib={measured - plain:.4g}")


if __name__ == "__main__":
    main()
