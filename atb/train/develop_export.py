"""Write the K developed students as Hugging Face folders, plus manifest.json and a markdown summary.

Weights come from the final DeepSpeed checkpoint through zero_to_fp32, so the export is the same for every
ZeRO stage. Latency is measured on each exported folder's own model, on the predictor's runtime and with its
measurement settings (for ONNX Runtime the folder is exported to ONNX first), so predicted and measured
compare like for like; a model whose measured latency misses its target by more than 10 % is flagged.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from atb.deploy.latency import measure_folder_latency
from atb.deploy.onnx_export import export_folder
from atb.deploy.runtime import ORT_INT8, TORCH
from atb.fsutil import write_json_atomic, write_text_atomic
from atb.latency import LatencyPredictor
from atb.latency.features import arch_flops
from atb.latency.measure import MeasureSettings
from atb.latency.targets import parse_target
from atb.model.elastic import SuperBertConfig
from atb.model.extract import ARCH_JSON, count_params, new_masked_lm, write_export
from atb.space import Arch, SearchSpace
from atb.train.checkpointing import LATEST

PREFIX = "students."
MISS_TOLERANCE = 0.10  # measured latency may exceed the target by this fraction before the model is flagged


def export_students(cfg, ckpt_dir: Path, record: dict[str, Any], tokenizer, models_dir: Path,
                    dev: dict[str, float], predictor: LatencyPredictor | None) -> list[dict[str, Any]]:
    from deepspeed.utils.zero_to_fp32 import get_fp32_state_dict_from_zero_checkpoint

    tag = (ckpt_dir / LATEST).read_text().strip()
    state = get_fp32_state_dict_from_zero_checkpoint(str(ckpt_dir), tag=tag)
    sb_cfg = SuperBertConfig.from_dict(record["supernet_config"])
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
        row = {"arch": arch.to_dict(), "arch_name": arch.name, "target": student.get("target"),
               "params": count_params(model), "flops": _flops(arch, cfg.seq_len),
               "predicted_ms": predicted, "measured_ms": None,
               "dev_loss": dev.get(f"dev/{arch.name}/loss"), "from_scratch": record["from_scratch"],
               "source_checkpoint": record["source_checkpoint"], "source_step": record["source_step"],
               "develop_checkpoint": str((ckpt_dir / tag).resolve()), "develop_steps": cfg.steps,
               "reconstruction": student.get("reconstruction")}
        folder = write_export(model, arch, models_dir / arch.name, tokenizer, {**row, "space": sb_cfg.space},
                              overwrite=True)
        if cfg.measure_latency:
            row.update(latency_check(folder, row["target"], predicted, predictor, cfg.runtime, sb_cfg.space))
            record_path = folder / ARCH_JSON
            write_json_atomic(record_path, {**json.loads(record_path.read_text()), **row})
        rows.append({**row, "path": str(folder)})
    _add_speedups(rows, sb_cfg, predictor)
    write_json_atomic(models_dir.parent / "manifest.json", {"models": rows})
    write_text_atomic(models_dir.parent / "summary.md", summary_table(rows))
    return rows


def check_latency_measurable(cfg, predictor: LatencyPredictor | None, max_positions: int) -> None:
    """Before training rather than after it: the export's latency check times sequences as long as the
    predictor's (or the default), which the students must have the positions for."""
    if not cfg.measure_latency:
        return
    seq = MeasureSettings(**predictor.settings).seq if predictor is not None else MeasureSettings().seq
    if seq > max_positions:
        raise ValueError(f"the latency check times {seq}-token sequences, but the SuperPLM's models hold "
                         f"{max_positions} positions; fit the predictor on a table measured with --seq "
                         f"{max_positions} or less, or pass --measure_latency false")


def latency_check(folder: Path, target: str | None, predicted_ms: float | None, predictor, runtime: str = "",
                  space: dict[str, Any] | None = None) -> dict[str, Any]:
    """Measured latency of an exported folder on the predictor's runtime (else `runtime`, else torch), and
    whether it misses its target by more than MISS_TOLERANCE."""
    settings = MeasureSettings(**predictor.settings) if predictor is not None else MeasureSettings()
    runtime = predictor.runtime if predictor is not None else (runtime or TORCH)
    if runtime != TORCH:
        export_folder(folder, head="encoder", int8=runtime == ORT_INT8, overwrite=True)
    measured = float(measure_folder_latency(folder, runtime, settings).median_ms)
    target_ms = None
    if target and predictor is not None:
        try:
            target_ms = parse_target(target, predictor, SearchSpace.from_spec(space or predictor.space))
        except ValueError:  # a label, not a latency (the demo's "4x (BERT-ratio)" baselines): nothing to check
            pass
    misses = target_ms is not None and measured > target_ms * (1 + MISS_TOLERANCE)
    return {"runtime": runtime, "measured_ms": measured, "target_ms": target_ms, "misses_target": misses,
            "prediction_error": round(measured / predicted_ms - 1, 4) if predicted_ms else None}


def _flops(arch: Arch, seq: int) -> int:
    return int(arch_flops(arch, batch=1, seq=seq))


def _add_speedups(rows: list[dict[str, Any]], sb_cfg: SuperBertConfig, predictor) -> None:
    """Speedup over the space's largest arch, by the same yardstick as each row's latency."""
    largest = SearchSpace.from_spec(sb_cfg.space).largest()
    ref = float(predictor.predict([largest])[0]) if predictor is not None else None
    for row in rows:
        basis = row["predicted_ms"]
        row["speedup_vs_largest"] = round(ref / basis, 2) if ref and basis else None


def summary_table(rows: list[dict[str, Any]]) -> str:
    def fmt(v, spec=".2f"):
        return "-" if v is None else format(v, spec)

    lines = ["| arch | target | params (M) | GFLOPs | predicted ms | measured ms | runtime | latency check | speedup "
             "| dev loss |", "|---|---|---:|---:|---:|---:|---|---|---:|---:|"]
    for r in rows:
        lines.append(f"| {r['arch_name']} | {r['target'] or '-'} | {r['params'] / 1e6:.2f} | {r['flops'] / 1e9:.2f} | "
                     f"{fmt(r['predicted_ms'])} | {fmt(r['measured_ms'])} | {r.get('runtime') or '-'} | "
                     f"{_check(r)} | {fmt(r['speedup_vs_largest'])} | {fmt(r['dev_loss'], '.4f')} |")
    missed = [r["arch_name"] for r in rows if r.get("misses_target")]
    if missed:
        lines.append(f"\n**Latency target missed** by more than {MISS_TOLERANCE:.0%} (measured on the runtime above): "
                     f"{', '.join(missed)}")
    return "\n".join(lines) + "\n"


def _check(row: dict[str, Any]) -> str:
    if row.get("target_ms") is None:
        return "-"
    over = row["measured_ms"] / row["target_ms"] - 1
    return f"{'MISSES' if row['misses_target'] else 'ok'} ({over:+.0%} vs {row['target_ms']:.2f} ms)"
