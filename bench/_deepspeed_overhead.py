"""superplm_overhead's DeepSpeed mode: tokens/s of DeepSpeed training, SuperBert at its largest arch vs
transformers BertForMaskedLM of the same shape.

Why a second measurement: the plain-torch one leaves out what a real run adds around the model (ZeRO's
gradient partitioning and reduction across ranks, the engine's optimizer and clipping, the dtype the
config asks for). Both models go through `deepspeed.initialize` with the same filled `ds_configs/` file,
on the same ranks, with the same per-rank batches; rounds alternate which model goes first, and every
round is fenced by barriers so all ranks time the same steps.

With `--peak_tflops` (the device's dense peak for the config's dtype) it also prints model FLOPs
utilisation: 6 x parameters + 12 x layers x hidden x seq FLOPs per token (forward + backward, attention
scores included), the usual estimate for BERT-style training.
"""

from __future__ import annotations

import argparse
import time
from typing import Any, Callable

import torch
from torch import nn

from _common import Comparison, Samples, bench_line, machine_line, mlm_batch

TOKENS_NOTE = "tokens/s over all ranks"


class _SuperBertStep(nn.Module):
    """The SuperBert loss at one fixed arch, as an engine's module."""

    def __init__(self, supernet: nn.Module, arch: Any, all_logits: bool):
        super().__init__()
        self.supernet, self.arch, self.all_logits = supernet, arch, all_logits

    def forward(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        return self.supernet(batch["input_ids"], batch["attention_mask"], batch["token_type_ids"], arch=self.arch,
                             labels=batch["labels"], logits_for_all=self.all_logits).loss


class _DenseStep(nn.Module):
    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        return self.model(**batch).loss


def add_arguments(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("--deepspeed mode")
    group.add_argument("--deepspeed", action="store_true",
                       help="time DeepSpeed training (run under the deepspeed launcher or torchrun for >1 rank)")
    group.add_argument("--ds_config", default=None, help="ds_configs/ name; default zero2_fp32 on CPU, zero2_bf16 else")
    group.add_argument("--steps_per_round", type=int, default=2)
    group.add_argument("--peak_tflops", type=float, default=None, help="device peak for the dtype: prints MFU")


def run(args: argparse.Namespace, supernet: nn.Module, dense: nn.Module, arch: Any, vocab: int) -> None:
    import deepspeed
    import torch.distributed as dist

    from atb.model.extract import count_params
    from atb.train import ds_config
    from atb.train.distributed import init_distributed

    env = init_distributed(timeout_s=600)
    on_cpu = env.device.type == "cpu"
    name = args.ds_config or ("zero2_fp32" if on_cpu else "zero2_bf16")
    config = ds_config.load(name, {
        "train_micro_batch_size_per_gpu": args.batch, "gradient_accumulation_steps": 1, "gradient_clipping": 1.0,
        "lr": 1e-4, "weight_decay": 0.01, "warmup_max_lr": 1e-4, "warmup_num_steps": 1,
        "total_num_steps": 10_000})
    config.setdefault("steps_per_print", 10_000_000)
    config["wall_clock_breakdown"] = False
    batch = {k: v.to(env.device) for k, v in mlm_batch(args.batch, args.seq, vocab, seed=env.rank).items()}
    engines = {}
    for label, module in (("SuperBert", _SuperBertStep(supernet, arch, all_logits=True)),
                          ("BertForMaskedLM", _DenseStep(dense))):
        engine, _, _, _ = deepspeed.initialize(model=module, model_parameters=module.parameters(), config=config)
        engines[label] = engine

    def steps(engine) -> Callable[[], None]:
        def go() -> None:
            for _ in range(args.steps_per_round):
                loss = engine(batch)
                engine.backward(loss)
                engine.step()
            _synchronize(env.device)
        return go

    def fenced(fn: Callable[[], None]) -> Callable[[], float]:
        def timed() -> float:
            dist.barrier()
            start = time.perf_counter()
            fn()
            dist.barrier()
            return time.perf_counter() - start
        return timed

    if env.is_main:
        print(f"superplm_overhead --deepspeed: {arch.name}, config {name} ({ds_config.precision(config)}), "
              f"{env.world_size} rank(s) on {env.device.type}, micro-batch {args.batch} x {args.seq} per rank, "
              f"{args.steps_per_round} steps per round, {args.repeats} rounds; {machine_line()}", flush=True)
    a, b = fenced(steps(engines["SuperBert"])), fenced(steps(engines["BertForMaskedLM"]))
    a(), b()  # warm-up round: first steps allocate optimizer state and buckets
    a_times, b_times = [], []
    for i in range(args.repeats):
        first, second = (a, b) if i % 2 == 0 else (b, a)
        t_first, t_second = first(), second()
        a_times.append(t_first if i % 2 == 0 else t_second)
        b_times.append(t_second if i % 2 == 0 else t_first)
    result = Comparison(Samples(tuple(a_times)), Samples(tuple(b_times)))
    if not env.is_main:
        return
    tokens = env.world_size * args.batch * args.seq * args.steps_per_round
    super_tps, dense_tps = tokens / result.a.median, tokens / result.b.median
    print(f"DeepSpeed train steps: {result.describe('SuperBert', 'BertForMaskedLM')}")
    print(f"{TOKENS_NOTE}: SuperBert {super_tps:.0f} | BertForMaskedLM {dense_tps:.0f}")
    if args.peak_tflops:
        params = count_params(dense)
        flops_per_token = 6 * params + 12 * arch.layers * arch.hidden * args.seq
        for label, tps in (("SuperBert", super_tps), ("BertForMaskedLM", dense_tps)):
            mfu = tps * flops_per_token / (env.world_size * args.peak_tflops * 1e12)
            print(f"MFU {label}: {100 * mfu:.1f}% of {args.peak_tflops} TFLOP/s per device")
    print(f"tokens/s ratio SuperBert / BertForMaskedLM = {super_tps / dense_tps:.3f}; after: {machine_line()}")
    print(bench_line("superplm_overhead", super_tps / dense_tps), flush=True)


def _synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
