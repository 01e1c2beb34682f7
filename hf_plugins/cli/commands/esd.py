"""`hf-plugins esd MODEL`: power-law alpha of every linear weight's spectrum (a light WeightWatcher)."""

from __future__ import annotations

import csv
from dataclasses import dataclass, field
from pathlib import Path

from hf_plugins.cli import common
from hf_plugins.cli.arguments import Command, ModelArguments


_COLUMNS = ("name", "module_type", "layer", "shape", "n_eigs", "alpha", "lambda_max", "xmin", "alphadecay")


@dataclass
class EsdArguments:
    _argument_group_name = "spectra"

    device: str = field(default="auto", metadata={"help": "'auto' (cuda if available), 'cpu', 'cuda', ..."})
    min_eigs: int = field(default=50, metadata={"help": "skip matrices with fewer eigenvalues (official: 50)"})
    xmin_pos: float = field(default=2.0, metadata={"help": "xmin = the int(N / xmin_pos)-th eigenvalue"})
    output_dir: str = field(default=".", metadata={"help": "where esd.csv, esd.json and esd.png go"})
    no_plot: bool = field(default=False, metadata={"help": "skip the PNG (no matplotlib needed)"})

    def __post_init__(self):
        if self.min_eigs < 2:
            raise ValueError(f"--min_eigs must be >= 2, got {self.min_eigs}")


def _plot(rows: list[dict], path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(9, 4.5))
    kinds = sorted({r["module_type"] for r in rows})
    for kind in kinds:
        pts = [(r["layer"], r["alpha"]) for r in rows if r["module_type"] == kind and r["layer"] is not None]
        if pts:
            ax.plot([x for x, _ in pts], [y for _, y in pts], marker="o", ms=3, lw=1, label=kind)
    others = [r for r in rows if r["layer"] is None]
    for r in others:
        ax.axhline(r["alpha"], ls=":", lw=1, color="gray")
        ax.annotate(r["name"], (0, r["alpha"]), fontsize=7, color="gray")
    ax.set_xlabel("layer")
    ax.set_ylabel("alpha (Hill, xmin = median eigenvalue)")
    ax.set_title(title)
    ax.legend(fontsize=7, ncol=4)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def run(model_args: ModelArguments, args: EsdArguments) -> int:
    import torch

    from hf_plugins.loading import load_model
    from hf_plugins.optim.esd import model_esd

    model, _ = load_model(**model_args.load_kwargs())
    device = ("cuda" if torch.cuda.is_available() else "cpu") if args.device == "auto" else args.device
    model.to(device)
    rows = model_esd(model, min_eigs=args.min_eigs, xmin_pos=args.xmin_pos)
    if not rows:
        raise ValueError(
            f"no nn.Linear weight of {model_args.model!r} has >= {args.min_eigs} eigenvalues; lower --min_eigs"
        )
    out = Path(args.output_dir)
    out.mkdir(parents=True, exist_ok=True)

    width = max(len(r["name"]) for r in rows)
    print(f"{'module':<{width}}  {'shape':>13}  {'alpha':>7}  {'lambda_max':>10}  alphadecay")
    for r in rows:
        shape = "x".join(map(str, r["shape"]))
        print(f"{r['name']:<{width}}  {shape:>13}  {r['alpha']:7.3f}  {r['lambda_max']:10.4g}  {r['alphadecay']}")
    by_type: dict[str, list[float]] = {}
    for r in rows:
        by_type.setdefault(r["module_type"], []).append(r["alpha"])
    print("mean alpha per module type: " + ", ".join(f"{k} {sum(v) / len(v):.3f}" for k, v in sorted(by_type.items())))

    common.write_json(out / "esd.json", rows)
    with open(out / "esd.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=_COLUMNS)
        writer.writeheader()
        for r in rows:
            writer.writerow({**r, "shape": "x".join(map(str, r["shape"]))})
    written = ["esd.csv", "esd.json"]
    if not args.no_plot:
        _plot(rows, out / "esd.png", f"ESD alpha per layer: {model_args.model}")
        written.append("esd.png")
    print(f"wrote {', '.join(str(out / w) for w in written)}")
    return 0


COMMAND = Command(
    name="esd",
    help="per-module power-law alpha of the weight spectra (table + plot)",
    description=(
        "Fit the Hill power-law exponent alpha to the eigenvalues of each nn.Linear weight's smaller Gram matrix (xmin "
        "at the median eigenvalue, as AlphaDecay does), batched by shape on the model's device. Prints a table and "
        "writes esd.csv, esd.json and esd.png (alpha per layer and module type). Smaller alpha = heavier tail; "
        "AlphaDecay gives those matrices weaker weight decay."
    ),
    dataclasses=(ModelArguments, EsdArguments),
    positionals=(("model", "'smollm2', 'tiny', a local model directory or a Hub id"),),
    run=run,
)
