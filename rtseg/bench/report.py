"""Reports: a terminal table, the JSON document (``bench/schema.json``) and CSV.

JSON holds everything (environment fingerprint, stop rule, per-configuration results, the
published table with measured rows); CSV holds one flat row per configuration (or per table row),
each with the environment columns, for spreadsheets.
"""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from ..atomic import atomic_write_text
from ..engine.backends import uses_tensorrt
from .environment import hardware_line
from .measure import STAGES
from .quality import NO_CITYSCAPES
from .stats import StopRule
from .table import COLUMNS, PublishedRow

SCHEMA_ID = "rtseg.bench/1"


# ---------------------------------------------------------------- the published table with measured rows


def measured_for(row: PublishedRow, results: Sequence[dict[str, Any]], hardware: str) -> list[dict[str, Any]]:
    """This machine's measurements of ``row``'s model at ``row``'s resolution."""
    if row.rtseg_model is None or row.resolution is None:
        return []
    out = []
    for r in results:
        cfg = r["config"]
        if cfg["model"] != row.rtseg_model or cfg["size"] != list(row.resolution):
            continue
        engine, pipeline = r.get("engine") or {}, r.get("pipeline") or {}
        info = r.get("engine_info") or {}
        out.append(
            {
                "label": r["label"],
                "backend": cfg["backend"],
                "precision": cfg["precision"],
                "device": cfg["device"],
                "tensorrt": "yes" if _uses_tensorrt(info.get("backend", cfg["backend"]), info) else "no",
                "status": r["status"],
                "reason": r["reason"],
                "engine_fps": engine.get("fps"),
                "engine_ms": (engine.get("latency_ms") or {}).get("median"),
                "engine_ci_ms": [
                    (engine.get("latency_ms") or {}).get("ci_low"),
                    (engine.get("latency_ms") or {}).get("ci_high"),
                ],
                "engine_frames": engine.get("frames"),
                "pipeline_fps": pipeline.get("fps"),
                "weights": (r.get("weights") or {}).get("origin"),
                "hardware": hardware,
                "miou": NO_CITYSCAPES,
            }
        )
    return out


def _uses_tensorrt(backend: str, info: dict[str, Any]) -> bool:
    """TensorRT engines, and ONNX Runtime when its TensorRT execution provider ran the graph."""
    notes = info.get("notes") or []
    return uses_tensorrt(backend) or "provider TensorrtExecutionProvider" in notes


def table_document(
    name: str,
    path: Path,
    rows: Sequence[PublishedRow],
    results: Sequence[dict[str, Any]],
    environment: dict[str, Any],
    camvid: dict[str, Any] | None = None,
) -> dict[str, Any]:
    hardware = hardware_line(environment)
    return {
        "name": name,
        "file": str(path),
        "hardware": hardware,
        "rows": [{**row.to_dict(), "measured": measured_for(row, results, hardware)} for row in rows],
        "camvid": camvid,
    }


# ---------------------------------------------------------------- JSON


def build_document(
    *,
    command: str,
    environment: dict[str, Any],
    rule: StopRule,
    results: Sequence[dict[str, Any]],
    table: dict[str, Any] | None = None,
) -> dict[str, Any]:
    return {
        "schema": SCHEMA_ID,
        "command": command,
        "environment": environment,
        "hardware": hardware_line(environment),
        "stop_rule": rule.to_dict(),
        "results": list(results),
        "table": table,
    }


def write_json(document: dict[str, Any], path: Path) -> None:
    atomic_write_text(path, json.dumps(document, indent=1) + "\n")


# ---------------------------------------------------------------- CSV


def _environment_columns(env: dict[str, Any]) -> dict[str, Any]:
    libs = env["libraries"]
    return {
        "cpu": env["cpu"]["model"],
        "physical_cores": env["cpu"]["physical_cores"],
        "logical_cores": env["cpu"]["logical_cores"],
        "gpu": "; ".join(g["name"] for g in env["gpus"]) or "none",
        **{f"lib_{k}": v or "" for k, v in libs.items()},
        "rtseg_version": env["rtseg"]["version"],
        "git_commit": env["rtseg"]["commit"] or "",
        "git_dirty": "" if env["rtseg"]["dirty"] is None else env["rtseg"]["dirty"],
        "load_average": " ".join(str(v) for v in env["load_average"] or []),
    }


def result_row(result: dict[str, Any]) -> dict[str, Any]:
    cfg = result["config"]
    engine, pipeline = result.get("engine") or {}, result.get("pipeline") or {}
    e_lat, p_lat = engine.get("latency_ms") or {}, pipeline.get("latency_ms") or {}
    stages = pipeline.get("stages_ms") or {}
    memory = result.get("memory") or {}
    agreement = pipeline.get("agreement") or {}
    row = {
        "model": cfg["model"],
        "backend": cfg["backend"],
        "precision": cfg["precision"],
        "size": "default" if cfg["size"] is None else f"{cfg['size'][0]}x{cfg['size'][1]}",
        "input_size": "x".join(str(v) for v in (result.get("engine_info") or {}).get("input_size", [])),
        "scheduler": cfg["scheduler"],
        "status": result["status"],
        "reason": result["reason"] or "",
        "notes": "; ".join(result.get("notes") or []),
        "weights": (result.get("weights") or {}).get("origin", ""),
        "threads": result.get("threads") or "",
        "engine_fps": engine.get("fps", ""),
        "engine_median_ms": e_lat.get("median", ""),
        "engine_ci_low_ms": e_lat.get("ci_low", ""),
        "engine_ci_high_ms": e_lat.get("ci_high", ""),
        "engine_iqr_ms": e_lat.get("iqr", ""),
        "engine_frames": engine.get("frames", ""),
        "engine_stop": engine.get("stop", ""),
        "e2e_fps": pipeline.get("fps", ""),
        "e2e_frames": pipeline.get("frames", ""),
        "e2e_stop": pipeline.get("stop", ""),
        "latency_p50_ms": p_lat.get("p50", ""),
        "latency_p90_ms": p_lat.get("p90", ""),
        "latency_p99_ms": p_lat.get("p99", ""),
        "latency_iqr_ms": p_lat.get("iqr", ""),
        **{f"{s}_median_ms": (stages.get(s) or {}).get("median", "") for s in STAGES},
        **{f"{s}_mean_per_frame_ms": (stages.get(s) or {}).get("mean_per_frame", "") for s in STAGES},
        "keyframe_ratio": pipeline.get("keyframe_ratio", ""),
        "agreement_miou": agreement.get("miou", ""),
        "peak_rss_mib": memory.get("peak_rss_mib", "") or "",
        "process_peak_rss_mib": memory.get("process_peak_rss_mib", "") or "",
        "gpu_peak_mib": memory.get("gpu_peak_mib", "") or "",
        "memory_in_process": memory.get("in_process", ""),
    }
    return {k: ("" if v is None else v) for k, v in row.items()}


def _write_rows(rows: list[dict[str, Any]], path: Path) -> None:
    columns: list[str] = []
    for row in rows:
        columns += [c for c in row if c not in columns]
    text = io.StringIO(newline="")
    writer = csv.DictWriter(text, fieldnames=columns)
    writer.writeheader()
    writer.writerows(rows)
    atomic_write_text(path, text.getvalue())


def write_results_csv(results: Sequence[dict[str, Any]], environment: dict[str, Any], path: Path) -> None:
    env = _environment_columns(environment)
    _write_rows([{**result_row(r), **env} for r in results], path)


def write_table_csv(table: dict[str, Any], environment: dict[str, Any], path: Path) -> None:
    """One line per published row, plus one per measurement of it (measured_* columns filled)."""
    # This machine's "gpu" must not overwrite the GPU a published number was measured on.
    env = {(f"machine_{k}" if k in COLUMNS else k): v for k, v in _environment_columns(environment).items()}
    rows = []
    for row in table["rows"]:
        published = {k: ("" if v is None else v) for k, v in row.items() if k != "measured"}
        measured = row["measured"] or [None]
        for m in measured:
            extra = {
                "measured_label": "" if m is None else m["label"],
                "measured_status": "" if m is None else m["status"],
                "measured_engine_fps": "" if m is None or m["engine_fps"] is None else m["engine_fps"],
                "measured_engine_ms": "" if m is None or m["engine_ms"] is None else m["engine_ms"],
                "measured_pipeline_fps": "" if m is None or m["pipeline_fps"] is None else m["pipeline_fps"],
                "measured_weights": "" if m is None else m["weights"] or "",
                "measured_miou": "" if m is None else m["miou"],
                "measured_hardware": "" if m is None else m["hardware"],
            }
            rows.append({**published, **extra, **(env if m is not None else {})})
    _write_rows(rows, path)


# ---------------------------------------------------------------- terminal


def _grid(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    widths = [max(len(str(c)) for c in col) for col in zip(header, *rows, strict=True)]
    line = "  ".join(h.ljust(w) for h, w in zip(header, widths, strict=True))
    out = [line, "  ".join("-" * w for w in widths)]
    out += ["  ".join(str(c).ljust(w) for c, w in zip(r, widths, strict=True)) for r in rows]
    return "\n".join(out)


def _f(value: float | None, digits: int = 2) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


# The latency is not the pipeline's whole path, as the e2e FPS next to it is: said under the table.
LATENCY_NOTE = (
    "* latency: from a frame's read (decoded, at frame size) to its labels at frame size: preprocess, "
    "engine stages, hand-off to the sink queue, postprocess; not capture, overlay or encode (see the "
    "stages below)"
)

# --in-process: the RSS figures are the process's, which keeps what earlier configurations left.
IN_PROCESS_NOTE = (
    "* peak RSS: measured --in-process, so it is this whole process's resident memory, including what "
    "earlier configurations (and the bench command) left allocated; without --in-process each "
    "configuration runs in a fresh process and is measured alone"
)


def format_results(results: Sequence[dict[str, Any]]) -> str:
    header = [
        "configuration",
        "engine FPS",
        "engine ms [95% CI]",
        "e2e FPS",
        "latency* p50/p90/p99 ms",
        "keyframes",
        "agreement",
        "peak RSS",
    ]
    in_process = any((r.get("memory") or {}).get("in_process") for r in results)
    if in_process:
        header[-1] = "peak RSS*"
    rows = []
    details = []
    for r in results:
        if r["status"] != "ok":
            rows.append(
                [r["label"], r["status"], r["reason"][:60] if r["reason"] else "", "", "", "", "", ""]
            )
            details.append(f"{r['label']}: {r['status']}: {r['reason']}")  # the grid cuts it short
            continue
        e, p = r.get("engine"), r.get("pipeline")
        if e:
            lat = e["latency_ms"]
            ci = "" if lat["ci_low"] is None else f" [{lat['ci_low']:.1f}, {lat['ci_high']:.1f}]"
            engine_ms = f"{lat['median']:.1f}{ci}"
        else:
            engine_ms = "-"
        if p:
            pl = p["latency_ms"]
            lat_text = f"{pl['p50']:.1f}/{pl['p90']:.1f}/{pl['p99']:.1f}"
            if p.get("frames", 0) < 100:  # a p99 of fewer frames lies between the two slowest
                lat_text += f" (n={p['frames']})"
            agree = "-" if p["agreement"] is None else f"{p['agreement']['miou']:.1f}"
            key = f"{p['keyframe_ratio']:.2f}"
        else:
            lat_text = agree = key = "-"
        mem = r.get("memory") or {}
        rss = "-" if not mem.get("peak_rss_mib") else f"{mem['peak_rss_mib']:.0f} MiB"
        if mem.get("gpu_peak_mib"):  # torch's allocator only: TensorRT's and ONNX Runtime's own are not in it
            rss += f", torch CUDA {mem['gpu_peak_mib']:.0f} MiB"
        rows.append(
            [
                r["label"],
                _f(e["fps"]) if e else "-",
                engine_ms,
                _f(p["fps"]) if p else "-",
                lat_text,
                key,
                agree,
                rss,
            ]
        )
        details.append(format_details(r))
    text = _grid(header, rows)
    if any(r.get("pipeline") for r in results):
        text += "\n" + LATENCY_NOTE
    if in_process:
        text += "\n" + IN_PROCESS_NOTE
    if details:
        text += "\n\n" + "\n".join(details)
    return text


def format_details(result: dict[str, Any]) -> str:
    """Weights, stop reasons and the per-stage breakdown of one configuration."""
    lines = [f"{result['label']}:"]
    lines.append(f"  weights: {(result.get('weights') or {}).get('origin', '-')}")
    info = result.get("engine_info") or {}
    if info:
        notes = f" ({', '.join(info['notes'])})" if info.get("notes") else ""
        lines.append(
            f"  engine: {info['library']} on {info['device']}{notes}, threads {result.get('threads')}, "
            f"built in {result.get('setup_s')} s"
        )
    e = result.get("engine")
    if e:
        lat = e["latency_ms"]
        lines.append(
            f"  engine-only: {e['frames']} runs after {e['warmup']} warm-up, stopped: {e['stop']}; "
            f"median {lat['median']:.2f} ms, IQR {lat['iqr']:.2f}, MAD {lat['mad']:.2f}"
        )
    p = result.get("pipeline")
    if p:
        lines.append(
            f"  end-to-end: {p['source']['uri']} -> {p['scheduler']} -> {p['sink']}: "
            f"{p['frames']} frames after {p['warmup']} warm-up, stopped: {p['stop']}; "
            f"keyframes {p['keyframes']}/{p['frames']}"
        )
        stages = []
        for stage in STAGES:
            s = p["stages_ms"].get(stage)
            if s is None:
                continue
            part = f"{stage} {s['median']:.2f}"
            if s["frames"] != p["frames"]:
                part += f" (on {s['frames']} frames, {s['mean_per_frame']:.2f}/frame)"
            stages.append(part)
        lines.append("  stages, median ms: " + ", ".join(stages))
        if p["agreement"]:
            a = p["agreement"]
            lines.append(
                f"  agreement with every: mIoU {a['miou']:.2f}, pixels {a['pixel_accuracy']:.2f} % "
                f"over {a['frames']} frames"
            )
    for note in result.get("notes", []):
        lines.append(f"  note: {note}")
    return "\n".join(lines)


def format_table(table: dict[str, Any]) -> str:
    header = [
        "model",
        "year",
        "mIoU test",
        "mIoU val",
        "resolution",
        "FPS",
        "ms",
        "GPU",
        "TensorRT",
        "source / measurement",
    ]
    rows = []
    sources = []
    for row in table["rows"]:
        sources.append(row["source"])
        rows.append(
            [
                row["model"],
                str(row["year"]),
                "-" if row["miou_test"] is None else f"{row['miou_test']:g}",  # as published
                "-" if row["miou_val"] is None else f"{row['miou_val']:g}",
                row["resolution"] or "-",
                "-" if row["fps"] is None else f"{row['fps']:g}",
                "-" if row["latency_ms"] is None else f"{row['latency_ms']:g}",
                row["gpu"] or "-",
                row["tensorrt"],
                f"[{len(sources)}]",
            ]
        )
        for m in row["measured"]:
            # The hardware line names the machine's GPUs even when the measurement ran on its CPU.
            gpu = "none (CPU)" if m["device"] == "cpu" else m["hardware"].rpartition("GPU: ")[2]
            fps, ms = m["engine_fps"], m["engine_ms"]
            if m["status"] != "ok":
                what = f"{m['status']}: {m['reason']}"
            elif fps is not None:
                e2e = "" if m["pipeline_fps"] is None else f"end-to-end {_f(m['pipeline_fps'])} FPS; "
                what = f"this machine, engine-only; {e2e}{m['weights']}; mIoU {m['miou']}"
            else:  # --pipeline-only: the FPS and ms columns are the whole pipeline's, and say so
                fps = m["pipeline_fps"]
                ms = None if not fps else 1000.0 / fps
                kind = "end-to-end" if fps else "end-to-end, too few frames for an FPS"
                what = f"this machine, {kind} (--pipeline-only); {m['weights']}; mIoU {m['miou']}"
            rows.append(
                [
                    f"  measured: {m['backend']} {m['precision']}",
                    "",
                    "",
                    "",
                    row["resolution"] or "-",
                    _f(fps),
                    _f(ms, 1),
                    gpu,
                    m["tensorrt"],
                    what,
                ]
            )
    text = [
        f"Cityscapes quality/speed table ({table['file']}): published numbers (empty = not published or "
        "not verified), with this machine's measurements",
        _grid(header, rows),
        "",
        f"measured on: {table['hardware']}",
    ]
    if table.get("camvid"):
        c = table["camvid"]
        text.append(
            f"CamVid (not Cityscapes), measured here: {c['model']} {c['weights']} on {c['dataset']} "
            f"({c['images']} images at {c['input_size']}): mIoU {c['miou']:.2f}, pixel accuracy "
            f"{c['pixel_accuracy']:.2f}"
        )
    text.append("sources:")
    text += [f"  [{i}] {s}" for i, s in enumerate(sources, start=1)]
    return "\n".join(text)
