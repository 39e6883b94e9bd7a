"""What the model families' tests (tests/test_family_*.py) share: tiny components, one training step's
updates recorded per parameter group, a script run on two ranks, and end to end on real CIFAR-10: a tiny
run of a family's recipe (vaezoo.fit, in this process), `sample` and `eval` of its model file (the CLI,
in one fresh process), a resume that must end bit for bit where the run that was never stopped ended,
`run --nproc 2` in fresh processes, and two ranks that must end where one process with the whole batch
ends."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import run_cli, run_cli_batch
from safetensors.torch import load_file

import vaezoo
from vaezoo.testing import component
from vaezoo.trainer.pictures import can_interpolate

RUN_FILES = {"model.safetensors", "state.safetensors", "metrics.jsonl", "samples.png", "recipe.toml"}


def tiny_components(latent_dim: int, *, prior: bool = True, decoder_loss: bool = False) -> dict:
    """Built conv encoder and decoder of tiny widths, the normal prior (`prior`) and the bce-kl loss
    (given to the decoder too with `decoder_loss`)."""
    loss = component("loss", "bce-kl")
    parts = {
        "encoder": component("encoder", "conv", latent_dim=latent_dim, hidden=[4, 8, 8]),
        "decoder": component(
            "decoder", "conv", latent_dim=latent_dim, hidden=[8, 8, 4], **({"loss": loss} if decoder_loss else {})
        ),
        "prior": component("prior", "normal", latent_dim=latent_dim),
        "loss": loss,
    }
    return parts if prior else {k: v for k, v in parts.items() if k != "prior"}


def grads(loss: torch.Tensor, params: list[torch.nn.Parameter]) -> list[torch.Tensor]:
    """d loss / d params (zeros for a parameter the loss does not reach)."""
    return [
        g if g is not None else torch.zeros_like(p)
        for g, p in zip(torch.autograd.grad(loss, params, allow_unused=True, retain_graph=True), params)
    ]


def record_updates(model: vaezoo.Model, x: torch.Tensor, seed: int) -> tuple[dict, dict[str, list[torch.Tensor]]]:
    """One `training_step` on `x` (after `torch.manual_seed(seed)`) whose updates are recorded and not
    applied: the model's parameter groups, and the gradient of each update by group name, in order."""
    groups = {name: group.params for name, group in model.parameter_groups().items()}
    seen: dict[str, list[torch.Tensor]] = {}

    def update(name: str, per_image_loss: torch.Tensor) -> None:
        for p in groups[name]:
            p.grad = None
        per_image_loss.mean().backward()
        seen[name] = [p.grad.clone() if p.grad is not None else torch.zeros_like(p) for p in groups[name]]

    torch.manual_seed(seed)
    model.training_step(x, None, 0, update)
    return groups, seen


def on_two_ranks(tmp_path: Path, source: str) -> str:
    """The script `source` run by torchrun on two CPU ranks (gloo); returns their stdout."""
    script = tmp_path / "two_ranks.py"
    script.write_text(source)
    result = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2", str(script)],
        capture_output=True,
        text=True,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
        timeout=120,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    return result.stdout


def set_args(sets: list[str]) -> list[str]:
    return [arg for item in sets for arg in ("--set", item)]


def metrics(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]


def outputs(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir())


def same_weights(a: Path, b: Path) -> bool:
    left, right = load_file(a / "model.safetensors"), load_file(b / "model.safetensors")
    return left.keys() == right.keys() and all(torch.equal(left[k], right[k]) for k in left)


class Family:
    """`vaezoo run RECIPE --limit LIMIT --device cpu --seed SEED --set SETS...` on the real CIFAR-10
    (`args`; vaezoo.fit with the same settings in this process), and what the family tests do with its
    run folder."""

    def __init__(self, recipe: str, sets: list[str], *, limit: int = 64, seed: int = 1) -> None:
        self.recipe, self.sets, self.limit, self.seed = recipe, list(sets), limit, seed
        self.args = ["--limit", str(limit), "--device", "cpu", "--seed", str(seed), *set_args(sets)]

    def run(self, cifar: Path, out: Path, epochs: int) -> Path:
        """A fresh run of `epochs` epochs into `out`."""
        options = {"train.epochs": epochs, "train.limit": self.limit, "train.seed": self.seed}
        vaezoo.fit(self.recipe, sets=self.sets, options=options, out=out, data_dir=cifar, device="cpu")
        return out

    def resume(self, cifar: Path, out: Path, epochs: int) -> Path:
        """The run in `out` resumed to `epochs` epochs."""
        vaezoo.fit(self.recipe, options={"train.epochs": epochs}, resume=out, data_dir=cifar, device="cpu")
        return out

    def straight_fixture(self):
        """A module-scoped fixture: two epochs in one go, the run that sample, eval and resume read."""

        @pytest.fixture(scope="module")
        def straight(cifar: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
            return self.run(cifar, tmp_path_factory.mktemp(self.recipe) / "run", 2)

        return straight

    def sample_and_eval(self, run: Path, cifar: Path, tmp_path: Path, *eval_args: str) -> str:
        """`vaezoo sample` (and `--sampler gmm` for a family with codes) and `vaezoo eval --json EVAL_ARGS`
        of a copy of the run's model file, in one fresh process; returns eval's output. The gmm sampler is
        fitted first on 500 training images (`sample --sampler gmm` alone fits it on all 50,000, minutes
        of encoding for nothing the test checks)."""
        model = str(shutil.copy(run / "model.safetensors", tmp_path / "model.safetensors"))
        assert (run / "samples.png").is_file()
        gmm = can_interpolate(vaezoo.load(model))  # a family with codes: the ex-post gmm sampler works on it
        with_gmm = [
            ["fit-sampler", model, "gmm", "--limit", "500"],
            ["sample", model, "-n", "4", "--sampler", "gmm", "--out", str(tmp_path / "gmm.png")],
        ]
        commands = [
            ["sample", model, "-n", "4", "--out", str(tmp_path / "s.png")],
            ["eval", model, "--limit", "32", "--device", "cpu", "--json", *eval_args],
            *(with_gmm if gmm else []),
        ]
        sampled, evaluated, *sampled_gmm = run_cli_batch(commands, tmp_path, env=_data(cifar))
        for result in (sampled, evaluated, *sampled_gmm):
            assert result.returncode == 0, result.stderr[-2000:]
        assert (tmp_path / "s.png").is_file()
        if gmm:
            assert (tmp_path / "gmm.png").read_bytes() != (tmp_path / "s.png").read_bytes()
        return evaluated.stdout

    def assert_resume_is_bit_exact(self, cifar: Path, straight: Path, tmp_path: Path, *keys: str) -> None:
        """One epoch, then a resume to two: the weights of `straight`, bit for bit, and the same train
        losses (and metrics `keys`) at every epoch."""
        out = self.run(cifar, tmp_path / "run", 1)
        self.resume(cifar, out, 2)
        assert same_weights(straight, out)
        for key in ("train_loss", *keys):
            assert [m[key] for m in metrics(out)] == [m[key] for m in metrics(straight)], key
        assert len(metrics(out)) == 2

    def nproc(self, cifar: Path, out: Path, *args: str, env: dict[str, str] | None = None) -> list[dict]:
        """`vaezoo run RECIPE ARGS --nproc 2` (ARGS: the family's tiny ones and one epoch by default) in a
        fresh process: one set of run files, written by rank 0; returns the metrics rows."""
        args = args or ("--epochs", "1", *self.args)
        environment = {**_data(cifar), "OMP_NUM_THREADS": "1", **(env or {})}
        result = run_cli("run", self.recipe, *args, "--out", str(out), "--nproc", "2", env=environment, timeout=300)
        assert result.returncode == 0, result.stderr[-3000:]
        assert "torch.distributed.run" in result.stderr
        assert RUN_FILES <= set(outputs(out))
        assert result.stderr.count("done:") == 1  # only rank 0 prints
        rows = metrics(out)
        assert len(rows) == 1
        return rows


# Each rank draws its own random numbers, so a 2-process run cannot draw the numbers one process draws (nor
# should it: that would correlate the ranks). To compare the arithmetic, the comparison runs every process
# (the one process, `vaezoo run --nproc 2` and torchrun's two workers) with PATCH, the source of a
# sitecustomize module that makes the draws the same in both.
def ranks_match_one_process(
    family: Family, cifar: Path, tmp_path: Path, args: list[str], patch: str, initial_sets: list[str], seed: int
) -> tuple[dict, dict, dict, float]:
    """`vaezoo run RECIPE ARGS` in one process and with `--nproc 2` (both with `patch`): both succeed and
    write the same files, one set of them (`Family.nproc`); the weights end within 1e-4 of each other,
    and training moved them (from the initial weights that `initial_sets` give at `seed`, the run's
    --seed) far more than that. Returns the weights of the one process, of the two ranks and the initial
    ones, and the largest difference."""
    site = tmp_path / "site"
    site.mkdir()
    (site / "sitecustomize.py").write_text(patch)
    path = os.pathsep.join(p for p in (str(site), os.environ.get("PYTHONPATH", "")) if p)
    env = {**_data(cifar), "OMP_NUM_THREADS": "1", "PYTHONPATH": path}
    single = run_cli("run", family.recipe, *args, "--out", str(tmp_path / "one"), env=env, timeout=300)
    assert single.returncode == 0, single.stderr[-3000:]
    family.nproc(cifar, tmp_path / "two", *args, env=env)
    assert outputs(tmp_path / "two") == outputs(tmp_path / "one")
    one, two = load_file(tmp_path / "one" / "model.safetensors"), load_file(tmp_path / "two" / "model.safetensors")
    assert one.keys() == two.keys()
    diff = max((one[k] - two[k]).abs().max().item() for k in one)
    assert diff < 1e-4, f"max abs weight difference {diff}"
    torch.manual_seed(seed)
    initial = vaezoo.build(family.recipe, sets=initial_sets).state_dict()
    moved = max((one[k] - initial[k]).abs().max().item() for k in one)
    assert moved > 100 * diff, (moved, diff)
    return one, two, initial, diff


def _data(cifar: Path) -> dict[str, str]:
    return {"VAEZOO_DATA_DIR": str(cifar)}
