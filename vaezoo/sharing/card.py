"""The model card (README.md) that `vaezoo push` uploads and `vaezoo card` prints: YAML front matter the
Hugging Face Hub reads (library, tags, datasets, model-index with the test metrics), then what the model
is, how to install the plugins it needs, how it was trained, its samples and how to sample it.
Built from the file's own metadata only."""

from __future__ import annotations

import hashlib
import json
import math
import re
import shlex
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from vaezoo.files.model_header import (
    ModelHeader,
    family_of,
    file_sha256,
    is_conditional,
    objective_of,
    parameter_count,
    read_header,
    read_model_header,
    valid_distribution,
    valid_version,
)

# vaezoo dataset name -> (Hub dataset id, display name)
HUB_DATASETS = {
    "cifar10": ("uoft-cs/cifar10", "CIFAR-10"),
    "mnist": ("ylecun/mnist", "MNIST"),
    "fashion-mnist": ("zalando-datasets/fashion_mnist", "Fashion-MNIST"),
}
# metric key in the training summary -> (model-index type, readable name)
METRICS = {
    "test_loss": ("neg-elbo", "Test negative ELBO (nats per image)"),
    "test_recon": ("reconstruction-nll", "Test reconstruction term (nats per image)"),
    "test_kl": ("kl", "Test KL term (nats per image)"),
    "test_bits_per_dim": ("bits-per-dim", "Test bits per dimension (ELBO bound)"),
}
KIND_ORDER = ("model", "dataset", "encoder", "decoder", "prior", "loss")
_PLAIN = re.compile(r"[A-Za-z][A-Za-z0-9 ._/()-]*[A-Za-z0-9)]|[A-Za-z]")
_YAML_WORDS = {"true", "false", "yes", "no", "on", "off", "null", "y", "n"}


def _yaml_scalar(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    text = str(value)
    if _PLAIN.fullmatch(text) and text.lower() not in _YAML_WORDS:
        return text
    return json.dumps(text)  # a JSON string is a YAML double-quoted scalar


def to_yaml(value: Any, indent: int = 0) -> str:
    """Block-style YAML for nested dicts and lists of scalars (enough for front matter)."""
    pad = " " * indent
    lines = []
    if isinstance(value, Mapping):
        for key, item in value.items():
            if isinstance(item, (Mapping, list)) and item:
                lines.append(f"{pad}{key}:")
                lines.append(to_yaml(item, indent + 2))
            else:
                empty = "[]" if isinstance(item, list) else "{}"
                lines.append(f"{pad}{key}: {_yaml_scalar(item) if not isinstance(item, (Mapping, list)) else empty}")
    else:
        for item in value:
            if isinstance(item, Mapping):
                block = to_yaml(item, indent + 2).splitlines()
                lines.append(f"{pad}- {block[0].lstrip()}")
                lines.extend(block[1:])
            else:
                lines.append(f"{pad}- {_yaml_scalar(item)}")
    return "\n".join(lines)


def metric_names(metadata: Mapping[str, Any]) -> dict[str, tuple[str, str]]:
    """Metric key -> (model-index type, readable name) for the file's family: METRICS for an ELBO
    family; for one with its own objective, its own names (never an ELBO, a KL or bits/dim)."""
    objective, regularizer = objective_of(metadata)
    if objective == "elbo":
        return METRICS
    return {
        "test_loss": (f"{objective}-objective", f"Test {objective} objective (per image)"),
        "test_recon": ("reconstruction", "Test reconstruction term (per image)"),
        f"test_{regularizer}": (regularizer, f"Test {regularizer} term (per image)"),
    }


def test_metrics(metadata: Mapping[str, Any]) -> dict[str, float]:
    """The finite test metrics of the training summary, in `metric_names` order."""
    metrics = metadata.get("training", {}).get("metrics", {})
    return {
        key: float(metrics[key])
        for key in metric_names(metadata)
        if isinstance(metrics.get(key), (int, float)) and math.isfinite(metrics[key])
    }


def install_lines(components: Sequence[Mapping[str, Any]]) -> list[str]:
    """One `pip install` line per plugin distribution the model needs, pinned to the version that wrote
    it; vaezoo itself first, with the hub extra so that `hf://` names load. Only a valid distribution
    name (and version) goes into a pip line: a file never chooses pip's options or index; for another
    name, a comment says so."""
    versions: dict[str, str] = {}
    invalid = []
    for record in components:
        distribution, version = record.get("distribution"), record.get("version")
        if valid_distribution(distribution):
            versions.setdefault(str(distribution), str(version) if valid_version(version) else "")
        elif distribution and record.get("name") not in invalid:
            invalid.append(record.get("name"))
    versions.setdefault("vaezoo", "")
    lines = []
    for distribution, version in sorted(versions.items(), key=lambda item: item[0] != "vaezoo"):
        name = "vaezoo[hub]" if distribution == "vaezoo" else distribution
        lines.append(f"pip install '{name}=={version}'" if version else f"pip install '{name}'")
    lines += [
        f"# {json.dumps(name)}: its plugin distribution is unknown or its name is not valid, so there is no "
        "install line"
        for name in invalid
    ]
    return lines


def front_matter(metadata: Mapping[str, Any], repo_id: str | None) -> dict[str, Any]:
    """The card's metadata for the Hub."""
    recipe = metadata["recipe"]
    family = family_of(metadata)
    dataset_name = recipe.get("dataset", {}).get("name", "")
    hub_id, display = HUB_DATASETS.get(dataset_name, (dataset_name, dataset_name))
    conditional = is_conditional(metadata)
    task = "class-conditional-image-generation" if conditional else "unconditional-image-generation"
    kind = ["vae", "variational-autoencoder"] if objective_of(metadata)[0] == "elbo" else ["autoencoder"]
    tags = ["vaezoo", *kind, "safetensors", family, str(recipe.get("name", "")), dataset_name]
    matter: dict[str, Any] = {"library_name": "vaezoo"}
    if not conditional:  # the Hub has no pipeline tag for class-conditional generation
        matter["pipeline_tag"] = task
    matter["tags"] = list(dict.fromkeys(t for t in tags if t))
    if hub_id:
        matter["datasets"] = [hub_id]
    metrics = test_metrics(metadata)
    if metrics:
        matter["model-index"] = [
            {
                "name": repo_id.split("/")[-1] if repo_id else str(recipe.get("name", "model")),
                "results": [
                    {
                        "task": {"type": task, "name": task.replace("-", " ").capitalize()},
                        "dataset": {"type": hub_id or dataset_name, "name": display or dataset_name, "split": "test"},
                        "metrics": [
                            {
                                "type": metric_names(metadata)[key][0],
                                "name": metric_names(metadata)[key][1],
                                "value": round(value, 4),
                            }
                            for key, value in metrics.items()
                        ],
                    }
                ],
            }
        ]
    return matter


def _unchecked_objective(family: str) -> list[str]:
    """A note for a card written where the model's family is not installed: its objective is then the
    file's claim (loading the file checks it against the family's own declaration)."""
    from vaezoo.plugins.manager import get_registry

    if family in get_registry().entries["models"]:
        return []
    return [
        f"(What this card says about the objective is what the model file records: the **{family}** family was "
        "not installed where the card was written, so it was not checked. Loading the file checks it.)",
        "",
    ]


def _component_rows(metadata: Mapping[str, Any]) -> list[str]:
    recipe = metadata["recipe"]
    rows = []
    records = sorted(
        metadata["components"],
        key=lambda r: KIND_ORDER.index(r["kind"]) if r.get("kind") in KIND_ORDER else len(KIND_ORDER),
    )
    for record in records:
        kind = record.get("kind", "")
        settings = (
            {k: v for k, v in recipe.get(kind, {}).items() if k != "name"}
            if isinstance(recipe.get(kind), Mapping)
            else {}
        )
        shown = ", ".join(f"{k}={json.dumps(v)}" for k, v in settings.items()) or "defaults"
        rows.append(
            f"| {kind} | `{record.get('name')}` | {record.get('distribution', '?')} "
            f"{record.get('version', '')} | {shown} |"
        )
    return rows


def _use_lines(metadata: Mapping[str, Any], name: str) -> list[str]:
    """The three lines that load the model and sample it."""
    classes = metadata.get("data", {}).get("classes") or []
    if is_conditional(metadata) and classes:
        return [
            "import torch, vaezoo",
            f'model = vaezoo.load("{name}")',
            f"images = model.sample(16, torch.arange(16) % {len(classes)})  # (16, C, H, W) in [0, 1], classes in turn",
        ]
    return ["import vaezoo", f'model = vaezoo.load("{name}")', "images = model.sample(16)  # (16, C, H, W) in [0, 1]"]


def model_card(
    metadata: Mapping[str, Any], data: bytes | ModelHeader, *, repo_id: str | None = None, files: set[str] | None = None
) -> str:
    """README.md for a model file (its bytes, or its header as `read_model_header` read it): front
    matter, then a card a person reads."""
    files = files or {"model.safetensors"}
    recipe = metadata["recipe"]
    training = metadata.get("training", {})
    family = family_of(metadata)
    objective = objective_of(metadata)[0]
    name = f"hf://{repo_id}" if repo_id else "model.safetensors"
    shape = metadata.get("data", {}).get("shape", [])
    dataset_name = recipe.get("dataset", {}).get("name", "?")
    title = repo_id or recipe.get("name", "vaezoo model")
    classes = metadata.get("data", {}).get("classes") or []
    labelled = is_conditional(metadata) and bool(classes)
    if isinstance(data, ModelHeader):
        parameters, sha256 = parameter_count(data.header), file_sha256(data.path)
    else:
        parameters, sha256 = parameter_count(read_header(data, name)), hashlib.sha256(data).hexdigest()
    lines = ["---", to_yaml(front_matter(metadata, repo_id)), "---", "", f"# {title}", ""]
    lines += [
        (
            f"A variational autoencoder of the **{family}** family, trained with vaezoo "
            if objective == "elbo"
            else (
                f"An autoencoder of the **{family}** family (it minimises its own {objective} objective, not a "
                "variational bound), trained with vaezoo "
            )
        )
        + f"from the recipe **`{recipe.get('name', '?')}`**: "
        f"{' '.join(recipe.get('summary', '').split()).rstrip('.')}.",
        "",
        *(_unchecked_objective(family) if "objective" in metadata else []),
        f"It models {HUB_DATASETS.get(dataset_name, ('', dataset_name))[1]} images of shape "
        f"{'×'.join(map(str, shape))} (values in [0, 1])"
        + (f" with a latent space of size {recipe['latent_dim']}" if "latent_dim" in recipe else "")
        + f"; {parameters:,} parameters in one `model.safetensors` file (sha256 `{sha256}`). "
        "The file holds its recipe and the plugins that built it, and loading it never unpickles anything.",
        "",
        *(
            [
                "It is class-conditional: it draws the class it is given, by index or name "
                f"({', '.join(f'{i} {c}' for i, c in enumerate(classes))}).",
                "",
            ]
            if labelled
            else []
        ),
        "| part | name | plugin distribution | settings |",
        "| --- | --- | --- | --- |",
        *_component_rows(metadata),
        "",
        "## Install",
        "",
        "Loading needs vaezoo and the plugin distribution of every part above, at these versions or compatible ones:",
        "",
        "```bash",
        *install_lines(metadata["components"]),
        "```",
        "",
        "## Use",
        "",
        "```python",
        *_use_lines(metadata, name),
        "```",
        "",
        "or from the command line:",
        "",
        "```bash",
        f"vaezoo sample {name} -n 64 --out samples.png",
        *(
            [
                f"vaezoo sample {name} -n 16 --label {shlex.quote(classes[0])} --out "
                f"{shlex.quote(classes[0] + '.png')}   # one class"
            ]
            if labelled
            else []
        ),
        f"vaezoo eval {name}{' --iw-samples 100' if objective == 'elbo' else ''}   # needs the test split of "
        f"{shlex.quote(dataset_name)}",
        f"vaezoo inspect {name}",
        "```",
        "",
    ]
    lines += _training_section(training, metadata)
    if "samples.png" in files:
        lines += ["## Samples", "", "![Samples from the prior](samples.png)", ""]
    if "recipe.toml" in files:
        lines += [
            "## Recipe",
            "",
            "The fully resolved recipe is in `recipe.toml`; train it again with:",
            "",
            "```bash",
            f"vaezoo run recipe.toml --data-dir {shlex.quote('PATH/TO/' + dataset_name)}",
            "```",
            "",
        ]
    lines += [
        f"Written by vaezoo {metadata.get('version', '?')} with torch {metadata.get('torch_version', '?')}, "
        f"checkpoint format {metadata.get('format_version', '?')}.",
        "",
    ]
    return "\n".join(lines)


def _training_section(training: Mapping[str, Any], metadata: Mapping[str, Any]) -> list[str]:
    if not training:
        return ["## Training", "", "The file carries no training summary.", ""]
    settings = metadata["recipe"].get("train", {})
    metrics = training.get("metrics", {})
    lines = ["## Training", ""]
    lines.append(
        f"{_count(training.get('epochs'), 'epoch')}, {_count(training.get('steps'), 'optimizer step')}"
        + (
            f" on {_count(training['train_images'], 'training image')}"
            if isinstance(training.get("train_images"), int)
            else ""
        )
    )
    lines[-1] += (
        f" ({settings.get('optimizer', '?')}, learning rate {settings.get('lr', '?')}, batch size "
        f"{settings.get('batch_size', '?')}, "
        f"{training.get('precision', '?')} on {training.get('device', '?')})."
    )
    if isinstance(metrics.get("train_loss"), (int, float)):
        lines[-1] += f" Final training loss: {metrics['train_loss']:.2f} nats per image."
    lines.append("")
    values = test_metrics(metadata)
    if values:
        images = training.get("test_images")
        on = (
            f" ({_count(images, 'test image')}{', a subset (train.test_limit)' if settings.get('test_limit') else ''})"
            if isinstance(images, int)
            else ""
        )
        lines += [f"Test split, after the last epoch{on}:", "", "| metric | value |", "| --- | --- |"]
        lines += [f"| {metric_names(metadata)[key][1]} | {value:.4f} |" for key, value in values.items()]
        lines.append("")
    return lines


def _count(value: Any, noun: str) -> str:
    return f"{value:,} {noun}{'' if value == 1 else 's'}" if isinstance(value, int) else f"? {noun}s"


def card_for(model: str, repo_id: str | None = None) -> str:
    """The card of a model file, run folder or remote name: what `vaezoo push` would upload as README.md
    (read from the file's header; its tensors are only hashed, a megabyte at a time)."""
    from vaezoo.sharing.hub import MODEL_FILE, check_repo_id, is_remote, local_model_path, parse_hf_name

    if repo_id is not None:
        check_repo_id(repo_id)
    if is_remote(model):
        if repo_id is None and str(model).startswith("hf://"):
            repo_id = parse_hf_name(str(model))[0]
        info = read_model_header(local_model_path(model))
        return model_card(info.metadata, info, repo_id=repo_id, files={MODEL_FILE})
    path = Path(model)
    path = path / MODEL_FILE if path.is_dir() else path
    info = read_model_header(path)
    files = {MODEL_FILE, "recipe.toml"} | (
        {"samples.png"} if (path.parent / "samples.png").is_file() else set()
    )  # as publish.push_files
    return model_card(info.metadata, info, repo_id=repo_id, files=files)
