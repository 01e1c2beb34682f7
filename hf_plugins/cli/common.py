"""Output helpers shared by `hf-plugins` subcommands (model and data loading live in `hf_plugins.loading`)."""

from __future__ import annotations

import json
from pathlib import Path


def print_summary(result: dict) -> None:
    before, after = result.get("eval_before"), result.get("eval_after")
    print()
    print(f"run directory: {result['output_dir']}")
    if result.get("train_loss") is not None:
        print(f"train loss: {result['train_loss']:.4f} over {result['steps']} steps ({result['train_seconds']:.0f} s)")
    if before is not None:
        print(f"accuracy before: {before['accuracy']:.3f} ({before['correct']}/{before['n']})")
    if after is not None:
        print(f"accuracy after:  {after['accuracy']:.3f} ({after['correct']}/{after['n']})")


def comparison_table(results: list[dict]) -> str:
    """One row per run: method, trainable parameters, steps, training time, loss, accuracy before and after."""

    def acc(r, key):
        return f"{r[key]['accuracy']:.3f}" if r.get(key) else "-"

    header = ("method", "trainable", "steps", "train s", "loss", "acc before", "acc after")
    rows = [
        (
            r["method"],
            f"{r['trainable_params']:,}",
            str(r["steps"]),
            f"{r['train_seconds']:.0f}",
            f"{r['train_loss']:.4f}",
            acc(r, "eval_before"),
            acc(r, "eval_after"),
        )
        for r in results
    ]
    widths = [max(len(h), *(len(row[i]) for row in rows)) for i, h in enumerate(header)]
    lines = []
    for line in (header, *rows):
        lines.append("  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(line, widths))))
    return "\n".join(lines)


def write_json(path: Path, data) -> None:
    path.write_text(json.dumps(data, indent=2, default=str) + "\n")
