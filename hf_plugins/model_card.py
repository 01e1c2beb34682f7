"""Model cards for saved adapters and models: `README.md` in the format `huggingface_hub.ModelCard` writes.

A card says what a reader needs to reuse the artifact: the method and its paper, the base model, the training
settings and the measured results, plus the two lines that load it.
"""

from __future__ import annotations

from pathlib import Path


__all__ = ["write_model_card"]


def _table(rows: dict) -> str:
    lines = ["| setting | value |", "| --- | --- |"]
    lines += [f"| {k} | {v} |" for k, v in rows.items() if v is not None]
    return "\n".join(lines)


def _load_snippet(path_name: str, base_model: str | None, base_model_id: str | None, is_adapter: bool) -> str:
    lines = ["```python", "import hf_plugins  # registers hf_plugins' tuner and model types"]
    if is_adapter:
        lines.append("from peft import PeftModel")
        if base_model_id and base_model_id == base_model:  # a Hub model, loaded as it was for training
            lines += [
                "from transformers import AutoModelForCausalLM",
                "",
                f'base = AutoModelForCausalLM.from_pretrained("{base_model_id}")',
            ]
        else:  # the embedded models and local folders load exactly as the CLI loaded them
            lines += ["", f'base, tokenizer = hf_plugins.load_model("{base_model}")']
        lines.append(f'model = PeftModel.from_pretrained(base, "{path_name}")')
    else:
        lines += [
            "from transformers import AutoModelForCausalLM",
            "",
            f'model = AutoModelForCausalLM.from_pretrained("{path_name}")',
        ]
    return "\n".join([*lines, "```"])


def write_model_card(
    directory,
    *,
    method: str,
    papers: dict[str, str],
    base_model: str | None,
    base_model_id: str | None = None,
    dataset: str | None = None,
    settings: dict | None = None,
    results: dict | None = None,
    is_adapter: bool = True,
):
    """Write `directory/README.md` and return the `ModelCard`.

    Args:
        method: what was trained, e.g. "LIFT" or "full fine-tuning".
        papers: plugin name -> paper reference (e.g. {"lift": "arXiv 2506.00772"}) for every plugin used.
        base_model: the base model as given (a Hub id, a local path, "smollm2"); None when pre-trained from scratch.
        base_model_id: the Hub id the base model is or derives from, for the card's metadata (e.g. the embedded
            SmolLM2's original repository); when it equals `base_model`, the loading snippet loads it from the Hub.
        dataset: the training data as given.
        settings: training settings shown in a table (name -> value).
        results: evaluation results shown in a table (name -> value).
        is_adapter: a PEFT adapter (loaded onto the base) or a whole model.
    """
    from huggingface_hub import ModelCard, ModelCardData

    directory = Path(directory)
    data = ModelCardData(
        library_name="peft" if is_adapter else "transformers",
        base_model=base_model_id,
        pipeline_tag="text-generation",
        tags=["hf_plugins", *(name for name, paper in papers.items() if paper)],
    )
    origin = f"fine-tuned from `{base_model}`" if base_model else "pre-trained from scratch"
    if base_model and base_model_id and base_model_id != base_model:
        origin += f" (derived from `{base_model_id}`)"
    kind = "adapter" if is_adapter else "model"
    body = [
        f"# {method} {kind}" + (f" of {base_model}" if base_model else ""),
        "",
        f"{'A PEFT adapter' if is_adapter else 'A causal language model'} {origin} with hf_plugins ({method}).",
        "",
        "## Method",
        "",
        "| plugin | paper |",
        "| --- | --- |",
        *[f"| {name} | {paper or 'stock'} |" for name, paper in papers.items()],
        "",
        "## Training",
        "",
        _table({"base model": base_model or "none (from scratch)", "dataset": dataset, **(settings or {})}),
        "",
    ]
    if results:
        body += ["## Results", "", _table(results).replace("| setting |", "| metric |"), ""]
    body += ["## How to load", "", _load_snippet(str(directory), base_model, base_model_id, is_adapter), ""]
    card = ModelCard(f"---\n{data.to_yaml()}\n---\n\n" + "\n".join(body))
    card.save(directory / "README.md")
    return card
