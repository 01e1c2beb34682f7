"""What the benchmark scripts share: repeats summarised as median [min, max], the RESULTS.md row format, a step
timer, the Qwen2-0.5B shape, the common command line, and the reader of RESULTS.md (rows and superseded rows).

Every `*_bench.py` measures ours and the stock alternative side by side in one process, `--repeats` times
(default 3), and reports each number as the median of the repeats with their [min, max] range; the ratio cell is
the median and range of the per-repeat ratios ours / stock. A row of RESULTS.md is

    | date | script | device | torch / transformers | case | metric | ours | baseline | ratio |

Imported as a sibling module (`python benchmarks/x.py` puts this folder first on `sys.path`).
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import json
import math
import re
import statistics
import time
from pathlib import Path


RESULTS = Path(__file__).with_name("RESULTS.md")
GIB = 1024**3

# Qwen2-0.5B (494.0M parameters, tied embeddings): the shape of the LIFT, SEFT, AlphaDecay and LNS benchmarks.
QWEN2_05B = {
    "vocab_size": 151936,
    "hidden_size": 896,
    "intermediate_size": 4864,
    "num_hidden_layers": 24,
    "num_attention_heads": 14,
    "num_key_value_heads": 2,
    "max_position_embeddings": 32768,
    "tie_word_embeddings": True,
}
TINY_QWEN2 = {
    "vocab_size": 256,
    "hidden_size": 64,
    "intermediate_size": 128,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "max_position_embeddings": 256,
    "tie_word_embeddings": True,
}


# ----------------------------------------------------------------------------------------------- repeats, rows


@dataclasses.dataclass(frozen=True)
class Spread:
    """Median and [min, max] of `n` repeated measurements."""

    median: float
    lo: float
    hi: float
    n: int


def spread(samples) -> Spread:
    """The one summary every script reports: median and [min, max] of the repeats."""
    xs = [float(x) for x in samples]
    if not xs:
        raise ValueError("spread() needs at least one sample")
    return Spread(statistics.median(xs), min(xs), max(xs), len(xs))


def _median(x) -> float:
    return x.median if isinstance(x, Spread) else float(x)


def row(case: str, metric: str, ours, baseline) -> dict:
    """A row: `ours` / `baseline` are numbers, strings, or lists of per-repeat values (summarised by `spread`). Two
    lists of one length give the spread of the paired per-repeat ratios ours_i / baseline_i; else the ratio is that
    of the medians (NaN when undefined)."""
    if isinstance(ours, list) and isinstance(baseline, list) and len(ours) == len(baseline) > 0 and all(baseline):
        ratio = spread([a / b for a, b in zip(ours, baseline)])
    else:
        ratio = None
    ours, baseline = (spread(v) if isinstance(v, list) else v for v in (ours, baseline))
    if ratio is None:
        num = all(isinstance(v, int | float | Spread) for v in (ours, baseline))
        ratio = _median(ours) / _median(baseline) if num and _median(baseline) else math.nan
    return {"case": case, "metric": metric, "ours": ours, "baseline": baseline, "ratio": ratio}


def fmt(x) -> str:
    """A cell: floats to 4 significant digits (whole, with thousands separators, from 1e4 on), NaN and None as "-",
    ints with thousands separators, a Spread as "median [min, max]" (one repeat: the value alone)."""
    if isinstance(x, Spread):
        return fmt(x.median) if x.n == 1 else f"{fmt(x.median)} [{fmt(x.lo)}, {fmt(x.hi)}]"
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return "-"
    if isinstance(x, float):
        return f"{x:,.4g}" if abs(x) < 1e4 else f"{x:,.0f}"
    if isinstance(x, int):
        return f"{x:,}"
    return str(x)


def stack() -> str:
    """The rows' `torch / transformers` column: this process's versions."""
    import torch
    import transformers

    return f"{torch.__version__} / {transformers.__version__}"


def row_prefix(script: str, device: str) -> str:
    """`| date | script | device | torch / transformers |` of today's rows."""
    return f"| {datetime.date.today().isoformat()} | {script} | {device} | {stack()} |"


def markdown(rows: list[dict], script: str, device: str) -> list[str]:
    """RESULTS.md lines of `rows` (cells through `fmt`), dated today, with this process's torch / transformers."""
    prefix = row_prefix(script, device)
    return [f"{prefix} " + " | ".join(fmt(r[c]) for c in ("case", "metric", "ours", "baseline", "ratio")) + " |" for r in rows]  # fmt: skip


def markdown_text(rows: list[dict], script: str, device: str, nan: str = "n/a") -> list[str]:
    """Rows with pre-formatted `ours_text` / `base_text` (e.g. "mean [min, max]" of seeds) and a numeric `ratio`
    (3 significant digits, `nan` when undefined): the quality checks' rows."""
    return _text_rows(row_prefix(script, device), rows, nan)


def _text_rows(prefix: str, rows: list[dict], nan: str) -> list[str]:
    ratio = lambda x: nan if math.isnan(x) else f"{x:.3g}"  # noqa: E731
    return [f"{prefix} {r['case']} | {r['metric']} | {r['ours_text']} | {r['base_text']} | {ratio(r['ratio'])} |" for r in rows]  # fmt: skip


def markdown_recorded(
    rows: list[dict], script: str, device: str, stack: str, date: str, nan: str = "n/a"
) -> list[str]:
    """`markdown_text` rows of measurements made elsewhere (partial results merged on another machine): the recorded
    date, device and `torch / transformers` stack instead of this process's."""
    return _text_rows(f"| {date} | {script} | {device} | {stack} |", rows, nan)


def cpu_name() -> str:
    """The CPU's model name (Linux /proc/cpuinfo), else "CPU"."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return "CPU"


def device_label(device, smoke: bool) -> str:
    """The rows' device column: the GPU's name (it names the card), else the CPU's; "(smoke)" for smoke runs.
    `device` is a torch.device or a bool (True: the current GPU)."""
    import torch

    cuda = device if isinstance(device, bool) else device.type == "cuda"
    name = torch.cuda.get_device_name() if cuda else cpu_name()
    return f"{name} (smoke)" if smoke else name


def _jsonable(x):
    return dataclasses.asdict(x) if isinstance(x, Spread) else str(x)


def write_outputs(lines: list[str], *, out: str | None = None, payload=None, append: bool = False, default=_jsonable):
    """`out`: `payload` as JSON (other values through `default`); `append`: `lines` appended to RESULTS.md."""
    if out:
        Path(out).write_text(json.dumps(payload, indent=1, default=default))
    if append:
        with RESULTS.open("a") as f:
            f.write("\n".join(lines) + "\n")


def report(rows, raw, script, device, wall_s, args=None, *, out=None, append=False, text=False, nan="n/a"):
    """The end of a benchmark's `main`: print the rows (`markdown`, or `markdown_text` with `text`) and the wall
    time, write `--out` (rows and `raw`) and, with `--append` (never for a smoke run, when `args` has `--smoke`),
    append the rows to RESULTS.md. `args` (the parsed `parser()` options) or `out` / `append`. Returns the lines."""
    if args is not None:
        out, append = args.out, args.append
        if append and args.smoke:
            print("--append ignored with --smoke: RESULTS.md holds full-size measurements only")
            append = False
    lines = markdown_text(rows, script, device, nan=nan) if text else markdown(rows, script, device)
    print("\n".join(lines))
    print(f"total wall {wall_s:.1f} s", flush=True)
    write_outputs(lines, out=out, payload={"rows": rows, "raw": raw}, append=append)
    return lines


def _positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {value}")
    return value


def parser(doc: str) -> argparse.ArgumentParser:
    """The command line every benchmark shares: --smoke, --repeats, --append, --out (scripts add their own)."""
    p = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--smoke", action="store_true", help="tiny shapes on the CPU, a few seconds (checks the script)")
    p.add_argument("--repeats", type=_positive, default=3, help="repeats of every measurement (default 3)")
    p.add_argument("--append", action="store_true", help="append the rows to benchmarks/RESULTS.md")
    p.add_argument("--out", default=None, help="write the rows and raw numbers as JSON here")
    return p


# ------------------------------------------------------------------------------------------------------ timing


def pick_device(smoke: bool):
    """The GPU unless smoke or none (the device is in every row). A smoke run takes one CPU thread: its shapes are
    tiny, and more threads only wait on each other."""
    import torch

    if smoke:
        torch.set_num_threads(1)
    return torch.device("cuda" if torch.cuda.is_available() and not smoke else "cpu")


def sync(device) -> None:
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize()


class Timer:
    """Milliseconds of the block in `.ms`: CUDA events on a GPU (synchronised at exit), `perf_counter` on the CPU."""

    def __init__(self, device):
        self.cuda = device.type == "cuda"

    def __enter__(self):
        if self.cuda:
            import torch

            self.start, self.end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            self.start.record()
        else:
            self.t0 = time.perf_counter()
        return self

    def __exit__(self, *exc):
        if self.cuda:
            import torch

            self.end.record()
            torch.cuda.synchronize()
            self.ms = self.start.elapsed_time(self.end)
        else:
            self.ms = 1000 * (time.perf_counter() - self.t0)


def peak_reset(device) -> None:
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()


def peak_gib(device) -> float:
    """Peak `torch.cuda.max_memory_allocated` since the last `peak_reset`, in GiB (NaN on the CPU)."""
    import torch

    return torch.cuda.max_memory_allocated() / GIB if device.type == "cuda" else math.nan


def free_memory(device) -> None:
    import gc

    import torch

    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()


def qwen2_config(smoke: bool, **overrides):
    """Qwen2-0.5B's shape (tiny for smoke runs) as a `Qwen2Config`."""
    from transformers import Qwen2Config

    return Qwen2Config(**{**(TINY_QWEN2 if smoke else QWEN2_05B), **overrides})


# ------------------------------------------------------------------------------------------- reading RESULTS.md


@dataclasses.dataclass(frozen=True)
class Row:
    line: int
    date: str
    script: str
    device: str
    stack: str
    case: str
    metric: str
    ours: str
    baseline: str
    ratio: str


@dataclasses.dataclass(frozen=True)
class Superseded:
    """An entry of the "Superseded rows" table: the rows it names (`*` matches anything) and what replaced them."""

    line: int
    date: str
    script: str
    case: str
    metric: str
    ours: str
    by: str
    reason: str

    def matches(self, r: Row) -> bool:
        pairs = ((self.date, r.date), (self.script, r.script), (self.case, r.case), (self.metric, r.metric))
        return all(want in ("*", have) for want, have in (*pairs, (self.ours, r.ours)))


def _cells(line: str) -> list[str]:
    return [c.strip() for c in line.strip().strip("|").split(" | ")]


def read_results(path: Path | None = None) -> tuple[list[Row], list[Superseded]]:
    """The rows under "## Rows" and the entries under "## Superseded rows" of RESULTS.md (or `path`); a malformed
    line raises ValueError."""
    rows, superseded, section = [], [], None
    for n, line in enumerate(Path(path or RESULTS).read_text().splitlines(), 1):
        if line.startswith("## "):
            section = line[3:].strip()
        elif not re.match(r"\| \d{4}-\d\d-\d\d \|", line):
            continue
        elif section == "Rows":
            cells = _cells(line)
            if len(cells) != 9:
                raise ValueError(f"{path}:{n}: a row has 9 cells, this one {len(cells)}")
            rows.append(Row(n, *cells))
        elif section == "Superseded rows":
            cells = _cells(line)
            if len(cells) != 7:
                raise ValueError(f"{path}:{n}: a superseded-rows entry has 7 cells, this one {len(cells)}")
            superseded.append(Superseded(n, *cells))
    return rows, superseded


def current_rows(path: Path | None = None) -> list[Row]:
    """Rows that no superseded-rows entry names, in file (= time) order."""
    rows, superseded = read_results(path)
    return [r for r in rows if not any(s.matches(r) for s in superseded)]


_NUMBER = r"[-+]?\d[\d,]*(?:\.\d+)?(?:e[-+]?\d+)?"


def cell_value(cell: str) -> tuple[float, tuple[float, float] | None] | None:
    """A cell's leading number and its bracketed range: "187.5 [185, 190.1]" -> (187.5, (185.0, 190.1)),
    "1,885" -> (1885.0, None); None when the cell starts with no number ("-", "n/a", text)."""
    m = re.match(rf"\s*({_NUMBER})(?:\s*\[({_NUMBER}),\s*({_NUMBER})\])?", cell)
    if not m:
        return None
    num = [None if g is None else float(g.replace(",", "")) for g in m.groups()]
    return num[0], None if num[1] is None else (num[1], num[2])
