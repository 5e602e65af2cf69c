"""Exported TinyBert vs transformers BertModel with the same dims: inference time (target <= 1.02x).

    .venv/bin/python bench/export_latency.py             # 2 archs x batch {1, 8} x threads {1, 2}, seq 128
    .venv/bin/python bench/export_latency.py --quick     # smoke run (seconds)

A = `TinyBertModel` (atb/model/tiny.py, the modeling file copied into every export whose qkv differs
from its hidden size), B = transformers `BertModel` (sdpa attention, its default). Headline: archs with
qkv == hidden, so both are the same network: A is built with `qkv_size = hidden` and loads B's weights
(checked: same outputs). Both in eval mode under `torch.inference_mode()`, fp32, pooler included, the
same random batch of token ids with an all-ones attention mask, seq 128, batch 1 and 8, 1 and 2 threads.
Each sample times enough back-to-back calls to last >= 0.2 s; samples alternate A B / B A.

Extra line, never in the ratio: an arch with qkv != hidden (what TinyBert exists for) against the
BertModel of the nearest dims, i.e. the same arch with qkv = hidden.

The last line is `BENCH export_latency ratio=<worst over archs, batches, threads of median(TinyBert) /
median(BertModel)>`.
"""

from __future__ import annotations

import argparse
import sys
import time

import torch
from transformers import BertConfig, BertModel

from _common import Comparison, bench_line, compare, machine_line, set_threads
from atb.model.tiny import TinyBertConfig, TinyBertModel
from atb.space import Arch

HEADLINE_ARCHS = ("L4_H312_A12_Q312_F1200", "L6_H384_A12_Q384_F1536")  # TinyBERT-4's and MiniLM-L6-H384's dims
EXTRA_ARCH = "L4_H312_A12_Q192_F1200"
QUICK_ARCHS, QUICK_EXTRA = ("L2_H48_A4_Q48_F96",), "L2_H48_A4_Q32_F96"


def dims(arch: Arch, vocab: int) -> dict:
    return dict(vocab_size=vocab, hidden_size=arch.hidden, num_hidden_layers=arch.layers,
                num_attention_heads=arch.heads, intermediate_size=arch.ffn, max_position_embeddings=512)


def bert_model(arch: Arch, vocab: int) -> BertModel:
    """The stock BERT of `arch`'s dims; qkv is necessarily `arch.hidden`."""
    return BertModel(BertConfig(**dims(arch, vocab))).eval()


def tiny_model(arch: Arch, vocab: int, weights_from: BertModel | None = None) -> TinyBertModel:
    model = TinyBertModel(TinyBertConfig(qkv_size=arch.qkv, **dims(arch, vocab))).eval()
    if weights_from is not None:
        missing, unexpected = model.load_state_dict(weights_from.state_dict(), strict=False)
        buffers = {name for name, _ in weights_from.named_buffers()}
        if missing or set(unexpected) - buffers:
            raise SystemExit(f"BertModel weights do not fit TinyBert: missing {missing}, unexpected {unexpected}")
    return model


def inputs(batch: int, seq: int, vocab: int) -> dict[str, torch.Tensor]:
    ids = torch.randint(1, vocab, (batch, seq), generator=torch.Generator().manual_seed(0))
    return {"input_ids": ids, "attention_mask": torch.ones_like(ids), "token_type_ids": torch.zeros_like(ids)}


def runner(model: torch.nn.Module, batch: dict[str, torch.Tensor], calls: int):
    def run() -> None:
        with torch.inference_mode():
            for _ in range(calls):
                model(**batch)
    return run


def calls_per_sample(model: torch.nn.Module, batch: dict[str, torch.Tensor], min_sample_s: float) -> int:
    runner(model, batch, 1)()  # warm-up
    start = time.perf_counter()
    runner(model, batch, 1)()
    return max(1, int(min_sample_s / max(time.perf_counter() - start, 1e-6)) + 1)


def measure(tiny: TinyBertModel, bert: BertModel, batch: dict[str, torch.Tensor], repeats: int,
            min_sample_s: float) -> tuple[Comparison, int]:
    calls = max(calls_per_sample(tiny, batch, min_sample_s), calls_per_sample(bert, batch, min_sample_s))
    return compare(runner(tiny, batch, calls), runner(bert, batch, calls), repeats), calls


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="a tiny arch, 1 repeat: a smoke run")
    parser.add_argument("--seq", type=int, default=128)
    parser.add_argument("--batches", default="1,8")
    parser.add_argument("--threads", default="1,2")
    parser.add_argument("--repeats", type=int, default=15)
    parser.add_argument("--min-sample-s", type=float, default=0.2)
    args = parser.parse_args()
    vocab, archs, extra = 30522, HEADLINE_ARCHS, EXTRA_ARCH
    if args.quick:
        vocab, archs, extra = 1000, QUICK_ARCHS, QUICK_EXTRA
        args.seq, args.batches, args.threads, args.repeats, args.min_sample_s = 16, "2", "1", 1, 0.0
    batches = [int(b) for b in args.batches.split(",")]
    threads = [int(t) for t in args.threads.split(",")]
    torch.manual_seed(0)
    print(f"export_latency: seq {args.seq}, batches {batches}, threads {threads}, {args.repeats} samples of "
          f">= {args.min_sample_s} s each, fp32, eval + inference_mode; {machine_line()}", flush=True)
    worst = (0.0, "")
    for name in archs:
        arch = Arch.parse(name)
        if not arch.is_vanilla_bert:
            raise SystemExit(f"{name}: headline archs need qkv == hidden, to be a stock BERT too")
        bert = bert_model(arch, vocab)
        tiny = tiny_model(arch, vocab, weights_from=bert)
        for b in batches:
            batch = inputs(b, args.seq, vocab)
            with torch.inference_mode():
                same = torch.allclose(tiny(**batch).last_hidden_state, bert(**batch).last_hidden_state, atol=1e-5)
            if not same:
                raise SystemExit(f"{name}: TinyBert and BertModel outputs differ with the same weights")
            for t in threads:
                set_threads(t)
                result, calls = measure(tiny, bert, batch, args.repeats, args.min_sample_s)
                label = f"{name} batch {b} threads {t}"
                print(f"{label}: {result.describe('TinyBert', 'BertModel')} ({calls} calls per sample)", flush=True)
                worst = max(worst, (result.ratio, label))
    arch = Arch.parse(extra)
    nearest = Arch(arch.layers, arch.hidden, arch.heads, arch.hidden, arch.ffn)
    tiny, bert = tiny_model(arch, vocab), bert_model(nearest, vocab)
    for b in batches:
        batch = inputs(b, args.seq, vocab)
        for t in threads:
            set_threads(t)
            result, calls = measure(tiny, bert, batch, args.repeats, args.min_sample_s)
            print(f"  extra, not in the ratio: TinyBert {arch.name} vs BertModel {nearest.name} (nearest stock "
                  f"dims), batch {b} threads {t}: {result.describe('TinyBert', 'BertModel')}", flush=True)
    print(f"worst: {worst[1]} at {worst[0]:.3f}; after: {machine_line()}")
    print(bench_line("export_latency", worst[0]))


if __name__ == "__main__":
    sys.exit(main())
