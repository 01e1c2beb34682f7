"""`hf-plugins prune`: one-shot Wanda / SparseGPT / magnitude pruning of a causal LM, saved with its report."""

from __future__ import annotations

import argparse
from pathlib import Path

from hf_plugins.cli import common


def register(sub) -> None:
    p = sub.add_parser(
        "prune",
        help="one-shot pruning (Wanda, SparseGPT, magnitude; unstructured or N:M)",
        description=(
            "Prune every linear layer of the decoder blocks of a causal LM, block by block on calibration text "
            "(default: the embedded arithmetic problems; --calib-text FILE for your own), and save the pruned "
            "model with save_pretrained plus sparsity_report.json. The result is the base for "
            "`hf-plugins train --model DIR --method seft`."
        ),
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument("--model", default="smollm2", help="'smollm2', 'tiny' or a local model directory")
    p.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"], help="weights dtype")
    p.add_argument("--device", default=None, help="device to prune on (default: cuda if available, else cpu)")
    p.add_argument("--method", default="wanda", choices=["wanda", "sparsegpt", "magnitude"], help="pruning method")
    p.add_argument("--sparsity", type=float, default=0.5, help="fraction of every matrix to zero (unstructured)")
    p.add_argument("--n-m", default=None, help="semi-structured pattern, e.g. 2:4 or 4:8 (N zeros per M inputs)")
    p.add_argument("--calib-text", default=None, help="UTF-8 text file for calibration (default: arithmetic text)")
    p.add_argument("--nsamples", type=int, default=128, help="calibration windows (Wanda/SparseGPT papers: 128)")
    p.add_argument("--seqlen", type=int, default=512, help="tokens per calibration window")
    p.add_argument("--batch-size", type=int, default=8, help="calibration windows per forward")
    p.add_argument("--seed", type=int, default=0, help="seed of the window offsets (papers: 0)")
    p.add_argument("--per-row", action="store_true", help="magnitude: threshold per output row, not per matrix")
    p.add_argument("--output-dir", required=True, help="where to save the pruned model and sparsity_report.json")
    p.set_defaults(func=run)


def run(args) -> int:
    import torch

    from hf_plugins.pruning import arithmetic_texts, calibration_windows, prune_model, text_file_texts

    model, tokenizer = common.load_model(args.model, args.dtype)
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
    info.update(source_model=args.model, calib_text=args.calib_text or "arithmetic", nsamples=args.nsamples)
    info.update(seqlen=args.seqlen, seed=args.seed)
    common.write_json(out / "sparsity_report.json", info)
    print(f"saved the pruned model to {out}")
    return 0
