"""Sub-networks inside SuperBert vs dense transformers BERTs of the same dims: forward + backward (CPU target <= 1.10x).

    .venv/bin/python bench/subnet_scaling.py               # mlm space, batch 8 x 128, 2 threads
    .venv/bin/python bench/subnet_scaling.py --quick       # smoke run (tiny space, seconds)
    python bench/subnet_scaling.py --device cuda --dtype bf16 --batch 32 --repeats 20   # on a GPU

For each arch (spread over the `mlm` space: 1 to 8 layers, hidden 128 to 768, 2 to 12 heads, narrow and
wide FFNs; qkv == hidden so that stock BERT can express it), A = `SuperBert(arch=...)`, B = transformers
`BertForMaskedLM` holding the extracted weights of that sub-network (so both compute the same function,
checked before timing). One timed repeat = zero_grad(set_to_none) + forward + MLM loss + backward, no
optimizer step (a supernet's optimizer touches every weight whatever the arch). Both run in train mode
with the config's dropout (0.1), fp32, the same batch (random tokens, 15% of positions labelled, an
all-ones attention mask as in packed pre-training blocks) and the same threads; both compute logits over
the full vocabulary at every position (SuperBert's `logits_for_all=True`, which is what BertForMaskedLM
does). `--sparse-head` adds an extra, separately labelled line per arch for SuperBert's default of
logits at labelled positions only; it never enters the ratio. On CUDA, `--dtype bf16|fp16` casts both
models' weights (as DeepSpeed's bf16/fp16 modes train them), one timed repeat runs `--steps_per_repeat`
steps between two synchronisations, and the warm-up is 3 rounds (cuBLAS picks its kernels on first use).

Rounds per arch: at least `--repeats`, and on the CPU as many more as fit in `--seconds_per_arch` (a
small arch's 0.3-0.6 s step gets ~50 rounds, the largest 12). Each arch's ratio is the median over
rounds of SuperBert_i / dense_i, the two timed back to back (`Comparison.paired_ratio`). This machine's
speed shifts by up to 1.5x between minutes (a shared VM), so the ratio of the two sides' separate medians
can compare a fast-state median with a slow-state one: 1.142 against a paired 1.040 for one arch of one
run (bench/RESULTS.md). Both are printed per arch.

The last line is `BENCH subnet_scaling ratio=<worst over archs of median_i(SuperBert_i / dense_i)>`.
"""

from __future__ import annotations

import argparse
import sys

import torch

from _common import (Comparison, bench_line, check_same_function, compare, machine_line, mlm_batch,
                     same_function_tolerance, set_threads, synchronizer)
from atb.model.elastic import SuperBert, SuperBertConfig
from atb.model.extract import build_masked_lm
from atb.space import Arch, SearchSpace
from atb.train.session import DTYPES  # the precision names the ds_configs use

# (space, archs): hidden = 64 * heads in `mlm`, 8 * heads in `tiny`, so each is also a stock BERT.
MLM_ARCHS = ("L1_H128_A2_Q128_F256", "L2_H256_A4_Q256_F1024", "L3_H384_A6_Q384_F768",
             "L4_H512_A8_Q512_F2048", "L6_H576_A9_Q576_F3072", "L8_H640_A10_Q640_F1280",
             "L8_H768_A12_Q768_F3072")
TINY_ARCHS = ("L1_H16_A2_Q16_F16", "L2_H24_A3_Q24_F48", "L3_H32_A4_Q32_F96")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="tiny space, tiny batch, 1 repeat: a smoke run")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--seq", type=int, default=128)
    parser.add_argument("--repeats", type=int, default=11, help="at least this many rounds per arch")
    parser.add_argument("--seconds_per_arch", type=float, default=None,
                        help="go on with rounds until an arch's took this long (CPU default 60, CUDA 0)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--device", default="cpu", help="cpu or cuda[:N]")
    parser.add_argument("--dtype", default="fp32", choices=sorted(DTYPES), help="both models' weight dtype")
    parser.add_argument("--steps_per_repeat", type=int, default=None, help="steps per timed repeat (CUDA: 10)")
    parser.add_argument("--archs", default=None, help="';'-separated arch names instead of the default spread")
    parser.add_argument("--sparse-head", action="store_true",
                        help="extra line: SuperBert with logits at labelled positions only (not in the ratio)")
    args = parser.parse_args()
    space_name, arch_names, vocab = "mlm", MLM_ARCHS, 30522
    if args.quick:
        space_name, arch_names, vocab = "tiny", TINY_ARCHS, 100
        args.batch, args.seq, args.repeats, args.seconds_per_arch = 2, 16, 1, 0.0
    if args.archs:
        arch_names = tuple(a for a in args.archs.split(";") if a)
    device, dtype = torch.device(args.device), DTYPES[args.dtype]
    if device.type == "cpu" and dtype != torch.float32:
        raise SystemExit(f"--dtype {args.dtype} is for CUDA; on the CPU both models train in fp32 here")
    on_cuda = device.type == "cuda"
    inner = args.steps_per_repeat or (10 if on_cuda else 1)
    set_threads(args.threads)
    torch.manual_seed(0)
    space = SearchSpace.load(space_name)
    cfg = SuperBertConfig(space=space.to_spec(), vocab_size=vocab)
    supernet = SuperBert(cfg).to(device, dtype).train()
    batch = {k: v.to(device) for k, v in mlm_batch(args.batch, args.seq, vocab).items()}
    archs = [Arch.parse(name) for name in arch_names]
    for arch in archs:
        space.validate(arch)
        if not arch.is_vanilla_bert:
            raise SystemExit(f"{arch.name}: qkv != hidden has no dense transformers BERT to compare with")

    def supernet_step(arch: Arch, all_logits: bool = True):
        def step() -> None:
            for _ in range(inner):
                supernet.zero_grad(set_to_none=True)
                supernet(batch["input_ids"], batch["attention_mask"], batch["token_type_ids"], arch=arch,
                         labels=batch["labels"], logits_for_all=all_logits).loss.backward()
        return step

    def dense_step(model: torch.nn.Module):
        def step() -> None:
            for _ in range(inner):
                model.zero_grad(set_to_none=True)
                model(**batch).loss.backward()
        return step

    seconds = args.seconds_per_arch if args.seconds_per_arch is not None else (0.0 if on_cuda else 60.0)
    timing = dict(sync=synchronizer(device), warmup=3 if on_cuda else 1, min_seconds=seconds)

    print(f"subnet_scaling: space {space_name}, batch {args.batch} x {args.seq}, >= {args.repeats} rounds "
          f"and >= {seconds:.0f} s per arch, {inner} step(s) per round, {args.dtype} on {device}, train mode (dropout {cfg.hidden_dropout_prob}); "
          f"{machine_line(device)}", flush=True)
    results: dict[str, Comparison] = {}
    for arch in archs:
        dense = build_masked_lm(supernet, arch).to(device, dtype).train()
        check_same_function(supernet, dense, arch, batch, **same_function_tolerance(dtype))
        result = compare(supernet_step(arch), dense_step(dense), args.repeats, **timing)
        results[arch.name] = result
        print(f"{arch.name}: {result.describe('SuperBert', 'dense')}", flush=True)
        if args.sparse_head:
            extra = compare(supernet_step(arch, all_logits=False), dense_step(dense), args.repeats, **timing)
            print(f"  extra, not in the ratio: SuperBert with logits at labelled positions only vs dense "
                  f"(all positions): {extra.describe('SuperBert-sparse', 'dense')}", flush=True)
        del dense
    worst = max(results, key=lambda name: results[name].paired_ratio)
    worst_of_medians = max(results, key=lambda name: results[name].ratio)
    print(f"worst: {worst} at {results[worst].paired_ratio:.3f} (median of per-round ratios); ratio of medians: "
          f"worst {worst_of_medians} at {results[worst_of_medians].ratio:.3f}; after: {machine_line(device)}")
    print(bench_line("subnet_scaling", results[worst].paired_ratio))


if __name__ == "__main__":
    sys.exit(main())
