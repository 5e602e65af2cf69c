"""Write the K developed students as Hugging Face folders, plus manifest.json and a markdown summary.

Weights come from the final DeepSpeed checkpoint through zero_to_fp32, so the export is the same for every
ZeRO stage. Latency is measured on the exported model class (weights do not change it), with the
predictor's measurement settings when a predictor is given, so predicted and measured compare like for like.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from atb.fsutil import write_json_atomic, write_text_atomic
from atb.model.elastic import SuperBertConfig
from atb.model.extract import count_params, new_masked_lm, write_export
from atb.space import Arch

PREFIX = "students."


def export_students(cfg, ckpt_dir: Path, record: dict[str, Any], tokenizer, models_dir: Path,
                    dev: dict[str, float]) -> list[dict[str, Any]]:
    from deepspeed.utils.zero_to_fp32 import get_fp32_state_dict_from_zero_checkpoint

    from atb.train.checkpointing import LATEST

    tag = (ckpt_dir / LATEST).read_text().strip()
    state = get_fp32_state_dict_from_zero_checkpoint(str(ckpt_dir), tag=tag)
    sb_cfg = SuperBertConfig.from_dict(record["supernet_config"])
    predictor = _load_predictor(cfg.predictor)
    rows = []
    for i, student in enumerate(record["students"]):
        arch = Arch.from_dict(student["arch"])
        model = new_masked_lm(arch, sb_cfg)
        prefix = f"{PREFIX}{i}."
        weights = {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}
        missing, unexpected = model.load_state_dict(weights, strict=False)
        missing = [k for k in missing if not k.startswith("cls.predictions.decoder.")]
        if missing or unexpected:
            raise ValueError(f"student {arch.name}: checkpoint weights do not fit (missing {missing[:3]}, "
                             f"unexpected {unexpected[:3]})")
        model.tie_weights()
        predicted = student.get("predicted_ms")
        if predicted is None and predictor is not None:
            predicted = float(predictor.predict([arch])[0])
        measured = _measure(arch, sb_cfg, predictor) if cfg.measure_latency else None
        row = {"arch": arch.to_dict(), "arch_name": arch.name, "target": student.get("target"),
               "params": count_params(model), "flops": _flops(arch, cfg.seq_len),
               "predicted_ms": predicted, "measured_ms": measured,
               "dev_loss": dev.get(f"dev/{arch.name}/loss"), "from_scratch": record["from_scratch"],
               "source_checkpoint": record["source_checkpoint"], "source_step": record["source_step"],
               "develop_checkpoint": str((ckpt_dir / tag).resolve()), "develop_steps": cfg.steps}
        folder = write_export(model, arch, models_dir / arch.name, tokenizer, {**row, "space": sb_cfg.space},
                              overwrite=True)
        rows.append({**row, "path": str(folder)})
    _add_speedups(rows, sb_cfg, predictor)
    write_json_atomic(models_dir.parent / "manifest.json", {"models": rows})
    write_text_atomic(models_dir.parent / "summary.md", summary_table(rows))
    return rows


def _load_predictor(path: str):
    if not path:
        return None
    from atb.latency import LatencyPredictor

    return LatencyPredictor.load(path)


def _measure(arch: Arch, sb_cfg: SuperBertConfig, predictor) -> float:
    from atb.latency.measure import MeasureSettings, measure_latency

    settings = MeasureSettings(**predictor.settings) if predictor is not None else MeasureSettings()
    return float(measure_latency(arch, sb_cfg, settings).median_ms)


def _flops(arch: Arch, seq: int) -> int:
    from atb.latency.features import arch_flops

    return int(arch_flops(arch, batch=1, seq=seq))


def _add_speedups(rows: list[dict[str, Any]], sb_cfg: SuperBertConfig, predictor) -> None:
    """Speedup over the space's largest arch, by the same yardstick as each row's latency."""
    from atb.space import SearchSpace

    largest = SearchSpace.from_spec(sb_cfg.space).largest()
    ref = float(predictor.predict([largest])[0]) if predictor is not None else None
    for row in rows:
        basis = row["predicted_ms"]
        row["speedup_vs_largest"] = round(ref / basis, 2) if ref and basis else None


def summary_table(rows: list[dict[str, Any]]) -> str:
    def fmt(v, spec=".2f"):
        return "-" if v is None else format(v, spec)

    lines = ["| arch | target | params (M) | GFLOPs | predicted ms | measured ms | speedup | dev loss |",
             "|---|---|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        lines.append(f"| {r['arch_name']} | {r['target'] or '-'} | {r['params'] / 1e6:.2f} | {r['flops'] / 1e9:.2f} | "
                     f"{fmt(r['predicted_ms'])} | {fmt(r['measured_ms'])} | {fmt(r['speedup_vs_largest'])} | "
                     f"{fmt(r['dev_loss'], '.4f')} |")
    return "\n".join(lines) + "\n"
