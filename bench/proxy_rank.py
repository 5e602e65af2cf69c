"""Does the search rank what matters? The search's proxy score of a sub-network with inherited weights (the
CKA of its representation with the source's, and the KD loss, on the dev blocks) against its accuracy
after a short, identical fine-tune on a task.

Archs: `--archs` sub-networks of the ordered, KD-trained SuperPLM that `make demo` leaves in runs/demo,
drawn from the part of its space that the search ranks by default (`--space` to choose) and
spread over the predicted-latency range. Each is extracted and fine-tuned with one recipe, once per
`--seeds` seed; accuracy is the mean over seeds, because one fine-tune's spread (a few points, and now and
then a run stuck at the majority class) is as large as the differences being ranked.

    .venv/bin/python bench/proxy_rank.py --run runs/demo

Last line: BENCH proxy_rank ratio=<Kendall tau between the --fitness proxy and accuracy> (target >= 0.6).
"""

from __future__ import annotations

import argparse
import random
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from atb.data import load_tokenizer  # noqa: E402
from atb.search.dev_data import load_dev_batches  # noqa: E402
from atb.search.fitness import DevLossFitness, RepresentationFitness, load_kd_projection  # noqa: E402
from atb.finetune import FinetuneConfig, finetune  # noqa: E402
from atb.latency import LatencyPredictor  # noqa: E402
from atb.latency.metrics import kendall_tau  # noqa: E402
from atb.model.extract import extract  # noqa: E402
from atb.model.supernet_io import load_supernet  # noqa: E402
from atb.search.runner import searched_space  # noqa: E402
from atb.space import Arch  # noqa: E402
from atb.train.objectives import Teacher  # noqa: E402


def spread_by_latency(space, predictor: LatencyPredictor, count: int, seed: int) -> list[tuple[Arch, float]]:
    """`count` archs at evenly spaced quantiles of predicted latency among many random ones."""
    rng = random.Random(seed)
    pool = sorted({space.sample(rng) for _ in range(2000)} | {space.largest(), space.smallest()})
    latency = predictor.predict(pool)
    ranked = sorted(zip(pool, (float(x) for x in latency)), key=lambda p: p[1])
    picks = [ranked[round(i * (len(ranked) - 1) / (count - 1))] for i in range(count)]
    return list(dict(picks).items())


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--run", default="runs/demo")
    parser.add_argument("--archs", type=int, default=10)
    parser.add_argument("--task", default="movie_sentiment")
    parser.add_argument("--train", type=int, default=1000)
    parser.add_argument("--epochs", type=float, default=2.0)
    parser.add_argument("--lr", type=float, default=5e-4)  # the demo's fine-tuning recipe
    parser.add_argument("--dev_batches", type=int, default=8)
    parser.add_argument("--fitness", default="kd", choices=["cka", "kd"])  # the one the demo's search uses
    parser.add_argument("--seed", type=int, default=0)  # draws the archs
    parser.add_argument("--seeds", type=int, default=3)  # fine-tunes per arch
    parser.add_argument("--space", default="", help="space to draw from (as tools/search.py --space); default: the one the search ranks")
    args = parser.parse_args()
    run = Path(args.run)
    supernet, meta = load_supernet(run / "pretrain" / "supernet")
    tokenizer = load_tokenizer(meta["tokenizer"])
    batches = load_dev_batches(meta["corpus"], tokenizer, meta["seq_len"], meta["dev_fraction"], meta["data_seed"],
                               16, args.dev_batches, str(run / "data_cache"))
    teacher = Teacher.load(meta["teacher"], torch.device("cpu"), torch.float32)
    kd_loss = DevLossFitness(supernet, batches, objective="kd", teacher=teacher,
                             projection=load_kd_projection(run / "pretrain" / "supernet"))
    cka = RepresentationFitness(supernet, batches, teacher)
    space = searched_space(args.space, supernet.space, meta)
    print(f"archs drawn from space {space.name}", flush=True)
    archs = spread_by_latency(space, LatencyPredictor.load(run / "latency" / "predictor"), args.archs, args.seed)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for arch, ms in archs:
            proxy = {"kd": -kd_loss(arch), "cka": cka(arch)}  # both: higher is better
            folder = extract(supernet, arch, Path(tmp) / arch.name, tokenizer=meta["tokenizer"])
            record = finetune(FinetuneConfig(
                model=str(folder), task=args.task, out_dir=str(Path(tmp) / f"ft_{arch.name}"), epochs=args.epochs,
                lr=args.lr, max_train_samples=args.train, max_eval_samples=500, max_seq_len=64, batch_size=32,
                seeds=list(range(args.seeds))))
            accuracies = [run["dev"]["accuracy"] for run in record["runs"]]
            rows.append((arch, ms, proxy, accuracies))
            print(f"{arch.name:<28} predicted {ms:7.2f} ms  KD loss {-proxy['kd']:8.4f}  CKA {proxy['cka']:.4f}  "
                  f"{args.task} acc {np.mean(accuracies):.3f} (seeds: {' '.join(f'{a:.3f}' for a in accuracies)})",
                  flush=True)
    accuracy = np.array([np.mean(r[3]) for r in rows])
    taus = {name: kendall_tau(np.array([r[2][name] for r in rows]), accuracy) for name in ("kd", "cka")}
    per_seed = [kendall_tau(np.array([r[2][args.fitness] for r in rows]), np.array([r[3][i] for r in rows]))
                for i in range(args.seeds)]
    # Across the latency range size alone ranks much of the accuracy; the search only compares equal-latency
    # archs, so a proxy earns its place by what it adds to this reference.
    size_alone = kendall_tau(np.array([r[1] for r in rows]), accuracy)
    print(f"Kendall tau with the mean accuracy over {len(rows)} archs: KD loss (lower better) {taus['kd']:.3f}, "
          f"CKA {taus['cka']:.3f}; the search's fitness is --fitness {args.fitness} (target >= 0.6); "
          f"with one seed's accuracy: {' '.join(f'{t:.3f}' for t in per_seed)}; "
          f"predicted latency alone: {size_alone:.3f}")
    print(f"BENCH proxy_rank ratio={taus[args.fitness]:.3f}")


if __name__ == "__main__":
    main()
