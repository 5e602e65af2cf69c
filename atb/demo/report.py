"""runs/demo/report.md: what the pipeline found, with the numbers a reader needs to trust it."""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path
from typing import Any

from atb.fsutil import write_text_atomic


def _read(path: Path) -> Any:
    return json.loads(path.read_text()) if path.is_file() else None


def _fmt(value: Any, spec: str = ".2f") -> str:
    return "-" if value is None else format(value, spec)


def plot_pretrain_loss(metrics: Path, png: Path) -> bool:
    if not metrics.is_file():
        return False
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [json.loads(line) for line in metrics.read_text().splitlines() if line.strip()]
    fig, ax = plt.subplots(figsize=(6, 3.5))
    ax.plot([r["step"] for r in rows], [r["loss"] for r in rows], lw=1)
    ax.set_xlabel("step")
    ax.set_ylabel("loss (sampled sub-arch)")
    ax.set_title("SuperPLM pre-training")
    fig.tight_layout()
    fig.savefig(png, dpi=110)
    plt.close(fig)
    return True


def finetune_dir(out: Path, task: str, arch_name: str) -> Path:
    """Where the demo keeps one (task, model) fine-tuning run; `task` may be a task folder's path."""
    return out / "finetune" / Path(task).name / arch_name


def restart_mark(metrics: dict | None) -> str:
    """` r<k>` after a score whose run was restarted k times (it first did not learn)."""
    return f" r{metrics['restarts']}" if metrics and metrics.get("restarts") else ""


def accuracy(metrics: dict | None, split: str = "dev") -> tuple[float | None, float | None]:
    if not metrics:
        return None, None
    acc = (metrics.get(split) or {}).get("accuracy")
    majority = ((metrics.get("majority_baseline") or {}).get(split) or {}).get("accuracy")
    return acc, majority


def deployed_accuracy(metrics: dict | None, split: str = "dev") -> float | None:
    """The accuracy of the fine-tuned model as deployed (its ONNX Runtime export), when it was scored so."""
    return (((metrics or {}).get("deployed") or {}).get(split) or {}).get("accuracy")


REFERENCES = {"source": "source model, fine-tuned the same way", "tfidf": "TF-IDF + logistic regression"}


def write_report(out: Path, tasks: list[str], timings: dict[str, float], total_s: float) -> Path:
    lines = ["# atb demo report", "",
             "The source encoder's heads, neurons and channels ordered by importance, distilled into a SuperPLM on "
             "the built-in corpus, latency predicted for this machine, architectures searched for each target, "
             f"developed in one run and fine-tuned on {', '.join(f'`{t}`' for t in tasks)}, with the source model and "
             "a TF-IDF + logistic regression classifier trained on the same rows as references. "
             "Task scores are dev accuracy, with the majority-class accuracy on the same rows in brackets, and the "
             "share of the fine-tuned source's accuracy each model keeps; "
             "`r1`, `r2`: the run first did not learn (it ended at the majority class, or its training loss stayed "
             "at chance) and was restarted with the next seed that many times (as the BERT paper did for unstable "
             "fine-tuning).", ""]
    manifest = _read(out / "develop" / "manifest.json") or {"models": []}
    lines += _rows_used(out, tasks, manifest)
    accs = {(task, name): accuracy(_read(finetune_dir(out, task, name) / "metrics.json"))[0]
            for name in [row["arch_name"] for row in manifest["models"]] + list(REFERENCES) for task in tasks}
    lines += _models_table(out, tasks, manifest, accs)
    lines += _paper_claim_table(out, tasks, accs)
    lines += _sanity_line(_read(out / "search" / "results.json") or {})
    lines += _plots(out)
    lines += ["", "## Time", "", "| stage | seconds |", "|---|---:|"]
    lines += [f"| {name} | {sec:.0f} |" for name, sec in timings.items()]
    lines += [f"| total (this invocation) | {total_s:.0f} |", ""]
    report = out / "report.md"
    write_text_atomic(report, "\n".join(lines) + "\n")
    return report


def _models_table(out: Path, tasks: list[str], manifest: dict, accs: dict[tuple[str, str], float | None]) -> list[str]:
    """Every developed model and the two references: size, latencies, KD loss and each task's accuracy."""
    lines = ["## Models", "",
             "| arch | target | params (M) | predicted ms | measured ms | speed-up vs source | ORT int8 ms | "
             "ORT int8 speed-up | dev KD loss | " + " | ".join(f"{t} acc (majority) | retained | ORT int8 acc"
                                                              for t in tasks) + " |",
             "|---|---|---:|---:|---:|---:|---:|---:|---:|" + "---:|---:|---:|" * len(tasks)]
    deployed = _read(out / "deploy" / "latency.json") or {"ms": {}}
    ort = deployed["ms"]
    for row in manifest["models"] + [{"arch_name": name, "target": label} for name, label in REFERENCES.items()]:
        cells = []
        for task in tasks:
            metrics = _read(finetune_dir(out, task, row["arch_name"]) / "metrics.json")
            acc, majority = accuracy(metrics)
            source = accs.get((task, "source"))
            kept = acc / source if acc is not None and source and row["arch_name"] != "tfidf" else None
            cells.append(f"{_fmt(acc, '.3f')} ({_fmt(majority, '.3f')}){restart_mark(metrics)} | {_fmt(kept, '.1%')} | "
                         f"{_fmt(deployed_accuracy(metrics), '.3f')}")
            row.setdefault("params", (metrics or {}).get("params"))
        params = row.get("params")
        lines.append(f"| {row['arch_name']} | {row.get('target') or '-'} | {_fmt(params and params / 1e6)} | "
                     f"{_fmt(row.get('predicted_ms'))} | {_fmt(row.get('measured_ms'))} | "
                     f"{_fmt(row.get('speedup_vs_largest'))} | {_fmt(ort.get(row['arch_name']))} | "
                     f"{_fmt(_ratio(ort.get('source'), ort.get(row['arch_name'])))} | "
                     f"{_fmt(row.get('dev_loss'), '.3f')} | " + " | ".join(cells) + " |")
    return lines + _deploy_note(deployed)


def _paper_claim_table(out: Path, tasks: list[str], accs: dict[tuple[str, str], float | None]) -> list[str]:
    """Each target's searched arch against the BERT-ratio arch of the same latency, per task."""
    pairs = (_read(out / "develop_picks.json") or {}).get("pairs", {})
    lines = ["", "## The paper's claim: searched arch vs BERT-ratio arch at the same latency", "",
             "| task | target | searched arch | acc | BERT-ratio arch | acc | searched better |",
             "|---|---|---|---:|---|---:|---|"]
    for task in tasks:
        for target, pair in pairs.items():
            s, b = accs.get((task, pair["searched"])), accs.get((task, pair["baseline"]))
            if pair["searched"] == pair["baseline"]:
                verdict = "same arch (the search picked the BERT-ratio arch)"
            else:
                verdict = "-" if s is None or b is None else ("yes" if s > b else ("tie" if s == b else "no"))
            lines.append(f"| {task} | {target} | {pair['searched']} | {_fmt(s, '.3f')} | {pair['baseline']} | "
                         f"{_fmt(b, '.3f')} | {verdict} |")
    return lines


def _sanity_line(search: dict) -> list[str]:
    sanity = search.get("sanity", {})
    if sanity.get("warning"):
        return ["", f"Search sanity check: {sanity['warning']}"]
    return ["", "Search sanity check: the largest sub-network scores best, as it should."] if sanity else []


def _plots(out: Path) -> list[str]:
    """The pre-training loss, the Pareto front and the latency fit, copied under plots/ and linked."""
    plots = out / "plots"
    plots.mkdir(exist_ok=True)
    lines = ["", "## Plots", ""]
    if plot_pretrain_loss(out / "pretrain" / "metrics.jsonl", plots / "pretrain_loss.png"):
        lines.append("![pre-training loss](plots/pretrain_loss.png)")
    latency_plot = next(iter(sorted((out / "latency").rglob("*.png"))), None) if (out / "latency").is_dir() else None
    for src, name, title in ((out / "search" / "pareto.png", "pareto.png", "Pareto front"),
                             (latency_plot, "latency_fit.png", "predicted vs measured latency")):
        if src is not None and Path(src).is_file():
            shutil.copyfile(src, plots / name)
            lines.append(f"![{title}](plots/{name})")
    return lines


def _ratio(a: float | None, b: float | None) -> float | None:
    return a / b if a and b else None


def _deploy_note(deployed: dict) -> list[str]:
    """How the ORT int8 columns were measured."""
    settings = deployed.get("settings")
    if not settings:
        return []
    return ["", f"`measured ms`: PyTorch eager fp32 on the predictor's device; `ORT int8 ms`: the encoder exported "
                f"to ONNX with int8 dynamic quantization, on ONNX Runtime (CPU, {settings['threads']} thread(s), "
                f"batch {settings['batch']}, {settings['seq']} tokens), every model and the source timed one after "
                "the other (deploy/latency.json); its speed-up is over the source on the same runtime. `ORT int8 "
                "acc`: the fine-tuned classifier exported and quantized the same way, scored on ONNX Runtime on the "
                "same dev rows (what the deployed model scores)."]


def _dev_note(source_metrics: dict) -> str:
    """How many dev rows score each model, and what that alone leaves of a one-seed accuracy's precision."""
    sizes, acc = source_metrics.get("sizes", {}), accuracy(source_metrics)[0]
    used = sizes.get("dev_used")
    if not used or acc is None:
        return ""
    error = math.sqrt(acc * (1 - acc) / used)
    rows = f"all {used}" if used >= sizes.get("dev", 0) else f"{used} of {sizes['dev']}"
    return (f" Scored on {rows} dev rows, one fine-tuning seed per row: at the source's accuracy one standard "
            f"error is {100 * error:.1f} points from the dev rows alone, and another fine-tuning seed can move a row "
            "by several times that.")


def _rows_used(out: Path, tasks: list[str], manifest: dict) -> list[str]:
    """Which training rows the table's fine-tuning used (the whole split, or a fixed subset for time), what the
    classifiers read, and what the students learnt from."""
    lines = []
    for task in tasks:
        metrics = _read(finetune_dir(out, task, "source") / "metrics.json") or {}
        sizes = metrics.get("sizes", {})
        if sizes.get("train_used") is not None and sizes["train_used"] < sizes.get("train", 0):
            lines.append(f"- `{task}`: {sizes['train_used']} of {sizes['train']} training rows (the demo's time "
                         "budget), the same rows for every row of the table, references included." + _dev_note(metrics))
        elif sizes:
            lines.append(f"- `{task}`: the whole training split ({sizes.get('train')} rows) for every row."
                         + _dev_note(metrics))
    pooling = (_read(finetune_dir(out, tasks[0], "source") / "metrics.json") or {}).get("pooling") if tasks else None
    if pooling == "mean":
        lines.append("- Every classifier reads the mean over the tokens, as the source was trained to (a "
                     "sentence-transformers mean-pooling encoder), not the [CLS] state.")
    student = _read(finetune_dir(out, tasks[0], manifest["models"][0]["arch_name"]) / "metrics.json") \
        if tasks and manifest["models"] else None
    config = (student or {}).get("config") or {}
    if config.get("teacher"):
        unlabelled = ((student or {}).get("sizes") or {}).get("unlabelled")
        more = (f", and from the teacher's outputs alone on {unlabelled} more training rows whose labels it never "
                "saw (`--unlabelled_file`: text a user has but did not label)") if unlabelled else ""
        lines.append(f"- Each developed model learnt from the labelled rows and from the fine-tuned source as its "
                     f"teacher (task distillation: `--teacher`, soft-target weight {config['kd_alpha']}, temperature "
                     f"{config['kd_temperature']}){more}. The references learnt from the labelled rows alone.")
    return lines + [""] if lines else []
