"""Benchmark: kddiag inspect on a causal language-model pair, token by token, against the bare forward passes.

Run: ``python benchmarks/bench_tokens.py`` (needs ``pip install -e '.[transformers]' in the kddiag checkout``). Builds a GPT-2
teacher (``--teacher-layers`` × ``--width``) and a smaller student over a ``--vocab``-token vocabulary from
configs (untrained: the cost does not depend on the weights), ``--positions`` target positions of random
token ids in sequences of ``--length``, and times, in alternating rounds:

1. the bare forward passes of both models over the sequences (batched, inference mode, logits at the
   target positions only, as kddiag's adapter computes them);
2. ``kddiag.inspect`` on the same models and data (one pass: forward + streaming statistics, then every
   measurement and the diagnosis).

Prints every round's ratio (``_rounds.alternating``: the order flips every round, the first round is
dropped), their median and range, the load average, and the peak resident memory of the process, which
must not grow with the number of positions (``--positions`` 25000 and 100000 side by side show it).
``--device cuda`` runs both on a GPU (the models, the inputs and kddiag's statistics there; times taken
after ``torch.cuda.synchronize``); target ≤ 1.2× on CPU, ≤ 1.10× at 32k and ≤ 1.25× at 128k on a GPU.
"""
from __future__ import annotations

import argparse
import os
import resource
import statistics

import numpy as np
import torch
from _rounds import alternating


def build(vocab: int, width: int, layers: int, seed: int):
    from transformers import GPT2Config, GPT2LMHeadModel

    from kddiag.loading.hf import CausalLMAdapter

    torch.manual_seed(seed)
    config = GPT2Config(n_layer=layers, n_head=max(1, width // 64), n_embd=width, vocab_size=vocab, n_positions=1024,
                        bos_token_id=0, eos_token_id=0)
    return CausalLMAdapter(GPT2LMHeadModel(config).eval())


def token_data(n_positions: int, length: int, vocab: int, seed: int):
    from kddiag.inputs import IGNORE_INDEX, Dataset, TokenInputs

    n_sequences = -(-n_positions // (length - 1))
    rng = np.random.default_rng(seed)
    ids = torch.as_tensor(rng.integers(0, vocab, (n_sequences, length)))
    targets = torch.full_like(ids, IGNORE_INDEX)
    targets[:, :-1] = ids[:, 1:]
    x = TokenInputs(ids, torch.ones_like(ids), targets)
    return Dataset("random tokens", x, targets[targets != IGNORE_INDEX].numpy())


def bare(models, data, batch: int, device: str) -> None:
    with torch.inference_mode():
        for model in models:
            for start in range(0, len(data.x), batch):
                model(data.x[start:start + batch].to(device))
    _synchronize(device)


def _synchronize(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--vocab", type=int, default=32_000)
    parser.add_argument("--positions", type=int, nargs="+", default=[25_000, 100_000])
    parser.add_argument("--length", type=int, default=128)
    parser.add_argument("--width", type=int, default=512)
    parser.add_argument("--teacher-layers", type=int, default=4)
    parser.add_argument("--student-layers", type=int, default=1)
    parser.add_argument("--rounds", type=int, default=2, help="rounds kept per size (one more runs first, dropped; "
                        "the order flips every round)")
    parser.add_argument("--device", default="cpu", help="where the models and kddiag's statistics run (cpu, cuda)")
    args = parser.parse_args(argv)
    from kddiag.pipeline import inspect
    from kddiag.inputs import LoadedModel
    from kddiag.options import InspectOptions

    teacher = build(args.vocab, args.width, args.teacher_layers, 0).to(args.device)
    student = build(args.vocab, args.width // 2, args.student_layers, 1).to(args.device)
    models = [LoadedModel("<teacher>", "hf-causal-lm", teacher), LoadedModel("<student>", "hf-causal-lm", student)]
    print(f"device {args.device}; torch threads {torch.get_num_threads()}; vocabulary {args.vocab:,}; teacher GPT-2 {args.teacher_layers}"
          f"×{args.width}, student {args.student_layers}×{args.width // 2}; sequences of {args.length}")
    for n in args.positions:
        data = token_data(n, args.length, args.vocab, 0)
        batch = max(1, (1 << 25) // (args.length * args.vocab))  # what kddiag's collection uses
        options = InspectOptions(temperature=2.0, alpha=0.5, batch_size=batch, device=args.device)

        def show(k: int, seconds: dict[str, float]) -> None:
            print(f"  round {k}{' (dropped)' if k == 0 else ''} ({' then '.join(seconds)}): bare {seconds['bare']:.1f} s, "
                  f"kddiag {seconds['kddiag']:.1f} s, ratio {seconds['kddiag'] / seconds['bare']:.2f}x; "
                  f"load {os.getloadavg()[0]:.2f}", flush=True)

        times = alternating({"bare": lambda: bare((teacher, student), data, batch, args.device),
                             "kddiag": lambda: (inspect(models[0], models[1], data=data, options=options),
                                                _synchronize(args.device))}, args.rounds, after_round=show)
        rounds = list(zip(times["bare"], times["kddiag"]))
        forward, full = (statistics.median(r[k] for r in rounds) for k in (0, 1))
        ratios = [r[1] / r[0] for r in rounds]
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        print(f"{data.labels.size:,} positions × {args.vocab:,}: bare forward passes {forward:7.1f} s, kddiag inspect "
              f"{full:7.1f} s, ratio {statistics.median(ratios):4.2f}x (range {min(ratios):.2f}-{max(ratios):.2f}x); "
              f"peak memory so far {peak:,.0f} MiB")


if __name__ == "__main__":
    main()
