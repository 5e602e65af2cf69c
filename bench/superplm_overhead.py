"""SuperBert at its largest arch vs transformers BertForMaskedLM of the same shape: train steps (target >= 0.95x).

    .venv/bin/python bench/superplm_overhead.py            # mlm space (8 x 768, 12 heads, 3072 ffn), 8 x 128
    .venv/bin/python bench/superplm_overhead.py --quick    # smoke run (tiny space, seconds)
    DS_ACCELERATOR=cpu OMP_NUM_THREADS=1 .venv/bin/deepspeed --num_accelerators 2 \
        bench/superplm_overhead.py --deepspeed               # the same inside a 2-rank DeepSpeed run (tokens/s)

A = SuperBert of the `mlm` space at `space.largest()`, B = `BertForMaskedLM` holding the same weights
(checked: the same loss without dropout). One timed repeat is a whole train step for each: zero_grad
(set_to_none), forward, MLM loss, backward, AdamW step (same hyper-parameters, each model its own
optimizer over the same number of parameters). Same batch (random tokens, 15% of positions labelled,
all-ones attention mask), fp32, train mode with dropout 0.1 in both, the same threads; both compute logits
over the full vocabulary at every position (SuperBert's `logits_for_all=True`, as BertForMaskedLM does).
`--sparse-head` adds an extra, separately labelled line for SuperBert's default (logits at labelled
positions only), which never enters the ratio.

The last line is `BENCH superplm_overhead ratio=<BertForMaskedLM median step time / SuperBert median step
time>`, i.e. SuperBert's throughput relative to the dense model.
"""

from __future__ import annotations

import argparse
import sys

import torch

import _deepspeed_overhead
from _common import (Comparison, bench_line, check_same_function, compare, machine_line, mlm_batch,
                     set_threads)
from atb.model.elastic import SuperBert, SuperBertConfig
from atb.model.extract import build_masked_lm, count_params
from atb.space import SearchSpace


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="tiny space, tiny batch, 1 repeat: a smoke run")
    parser.add_argument("--space", default="mlm")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--seq", type=int, default=128)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--sparse-head", action="store_true",
                        help="extra line: SuperBert with logits at labelled positions only (not in the ratio)")
    _deepspeed_overhead.add_arguments(parser)
    args, _ = parser.parse_known_args()  # the deepspeed launcher appends --local_rank
    vocab = 30522
    if args.quick:
        args.space, vocab, args.batch, args.seq, args.repeats = "tiny", 100, 2, 16, 1
    if not args.deepspeed:
        set_threads(args.threads)
    torch.manual_seed(0)
    cfg = SuperBertConfig(space=SearchSpace.load(args.space).to_spec(), vocab_size=vocab)
    supernet = SuperBert(cfg).train()
    arch = supernet.largest
    dense = build_masked_lm(supernet, arch).train()
    dense_name = type(dense).__name__  # BertForMaskedLM; TinyBertForMaskedLM in --quick's tiny space
    if not args.quick and not arch.is_vanilla_bert:
        raise SystemExit(f"{arch.name}: the largest arch of {args.space} is no stock BERT (qkv != hidden)")
    if count_params(supernet) != count_params(dense):
        raise SystemExit(f"parameter counts differ: SuperBert {count_params(supernet)}, {dense_name} {count_params(dense)}")
    batch = mlm_batch(args.batch, args.seq, vocab)
    check_same_function(supernet, dense, arch, batch)
    if args.deepspeed:
        return _deepspeed_overhead.run(args, supernet, dense, arch, vocab)
    hyper = dict(lr=1e-4, betas=(0.9, 0.999), eps=1e-6, weight_decay=0.01)
    super_opt = torch.optim.AdamW(supernet.parameters(), **hyper)
    dense_opt = torch.optim.AdamW(dense.parameters(), **hyper)

    def supernet_step(all_logits: bool = True):
        def step() -> None:
            super_opt.zero_grad(set_to_none=True)
            supernet(batch["input_ids"], batch["attention_mask"], batch["token_type_ids"], arch=arch,
                     labels=batch["labels"], logits_for_all=all_logits).loss.backward()
            super_opt.step()
        return step

    def dense_step() -> None:
        dense_opt.zero_grad(set_to_none=True)
        dense(**batch).loss.backward()
        dense_opt.step()

    print(f"superplm_overhead: {arch.name} ({count_params(dense) / 1e6:.1f}M parameters, vocab {vocab}), batch "
          f"{args.batch} x {args.seq}, {args.repeats} repeats, fp32, train mode (dropout "
          f"{cfg.hidden_dropout_prob}), AdamW; {machine_line()}", flush=True)
    result: Comparison = compare(supernet_step(), dense_step, args.repeats)
    print(f"train step: {result.describe('SuperBert', dense_name)}", flush=True)
    if args.sparse_head:
        extra = compare(supernet_step(all_logits=False), dense_step, args.repeats)
        print(f"  extra, not in the ratio: SuperBert with logits at labelled positions only: "
              f"{extra.describe('SuperBert-sparse', dense_name)}; throughput ratio {1 / extra.ratio:.3f}")
    print(f"throughput ratio SuperBert / {dense_name} = {1 / result.ratio:.3f}; after: {machine_line()}")
    print(bench_line("superplm_overhead", 1 / result.ratio))


if __name__ == "__main__":
    sys.exit(main())
