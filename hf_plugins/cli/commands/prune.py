"""`hf-plugins prune`: one-shot Wanda / SparseGPT / magnitude pruning of a causal LM, saved with its report."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from hf_plugins.cli import common
from hf_plugins.cli.arguments import Command, ModelArguments


@dataclass
class PruneArguments:
    _argument_group_name = "pruning"

    output_dir: str = field(metadata={"help": "where to save the pruned model and sparsity_report.json (required)"})
    device: str | None = field(default=None, metadata={"help": "device to prune on (default: cuda if available)"})
    method: Literal["wanda", "sparsegpt", "magnitude"] = field(default="wanda", metadata={"help": "pruning method"})
    sparsity: float = field(default=0.5, metadata={"help": "fraction of every matrix to zero (unstructured)"})
    n_m: str | None = field(
        default=None, metadata={"help": "semi-structured pattern, e.g. 2:4 or 4:8 (N zeros per M inputs)"}
    )
    calib_text: str | None = field(
        default=None, metadata={"help": "UTF-8 text file for calibration (default: arithmetic text)"}
    )
    nsamples: int = field(default=128, metadata={"help": "calibration windows (Wanda/SparseGPT papers: 128)"})
    seqlen: int = field(default=512, metadata={"help": "tokens per calibration window"})
    batch_size: int = field(default=8, metadata={"help": "calibration windows per forward"})
    seed: int = field(default=0, metadata={"help": "seed of the window offsets (papers: 0)"})
    per_row: bool = field(default=False, metadata={"help": "magnitude: threshold per output row, not per matrix"})


def run(model_args: ModelArguments, args: PruneArguments) -> int:
    import torch

    from hf_plugins.loading import load_model
    from hf_plugins.pruning import arithmetic_texts, calibration_windows, prune_model, text_file_texts

    model, tokenizer = load_model(**model_args.load_kwargs())
    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    model.to(device)
    calibration = None
    if args.method != "magnitude":
        texts = text_file_texts(args.calib_text) if args.calib_text else arithmetic_texts()
        calibration = calibration_windows(tokenizer, texts, args.nsamples, args.seqlen, args.seed)
    report = prune_model(
        model,
        args.method,
        args.sparsity,
        n_m=args.n_m,
        calibration=calibration,
        batch_size=args.batch_size,
        per_row=args.per_row,
    )
    print(report.format_table())
    out = Path(args.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    model.to("cpu").save_pretrained(out)
    tokenizer.save_pretrained(out)
    info = report.to_dict()
    info.update(source_model=model_args.model, calib_text=args.calib_text or "arithmetic", nsamples=args.nsamples)
    info.update(seqlen=args.seqlen, seed=args.seed)
    common.write_json(out / "sparsity_report.json", info)
    print(f"saved the pruned model to {out}")
    return 0


COMMAND = Command(
    name="prune",
    help="one-shot pruning (Wanda, SparseGPT, magnitude; unstructured or N:M)",
    description=(
        "Prune every linear layer of the decoder blocks of a causal LM, block by block on calibration text (default: "
        "the embedded arithmetic problems; --calib_text FILE for your own), and save the pruned model with "
        "save_pretrained plus sparsity_report.json. The result is the base for "
        "`hf-plugins train --model DIR --method seft`."
    ),
    dataclasses=(ModelArguments, PruneArguments),
    run=run,
)
