"""model.safetensors: metadata, float32 weights, loading in a fresh process, repeatable samples,
atomic writes, and one clear error for each kind of bad file."""

from __future__ import annotations

import io
import json
import os
import struct
import subprocess
import sys

import pytest
import torch
from conftest import run_cli, run_cli_batch
from safetensors import safe_open
from safetensors.torch import load_file, save, save_file
from tinydata import error_lines, fit_tiny, tiny_cifar  # noqa: F401  (fixture)

import vaezoo
from vaezoo.errors import CheckpointError
from vaezoo.files.model_header import describe

KEYS = (
    "vaezoo.format_version",
    "vaezoo.version",
    "vaezoo.torch_version",
    "vaezoo.recipe",
    "vaezoo.components",
    "vaezoo.data",
    "vaezoo.training",
)


@pytest.fixture(scope="module")
def trained(tiny_cifar, tmp_path_factory):
    """A tiny model trained for one epoch in bf16 autocast (weights must still be saved as float32)."""
    out = tmp_path_factory.mktemp("ckpt") / "run"
    result = fit_tiny(tiny_cifar, out, epochs=1, precision="bf16")
    return result


def _header(path):
    data = path.read_bytes()
    (size,) = struct.unpack("<Q", data[:8])
    return json.loads(data[8 : 8 + size])


def test_metadata_follows_the_design(trained):
    path = trained.out_dir / "model.safetensors"
    metadata = _header(path)["__metadata__"]
    assert metadata["format"] == "pt"
    for key in KEYS:
        assert key in metadata
        json.loads(metadata[key])  # every vaezoo.* value is a JSON string
    assert json.loads(metadata["vaezoo.version"]) == vaezoo.__version__
    assert json.loads(metadata["vaezoo.format_version"]) == 2
    recipe = json.loads(metadata["vaezoo.recipe"])
    assert recipe == trained.model.recipe and recipe["encoder"]["hidden"] == [4, 8, 8]
    components = json.loads(metadata["vaezoo.components"])
    assert {(c["kind"], c["name"]) for c in components} == {
        ("model", "vae"),
        ("dataset", "cifar10"),
        ("encoder", "conv"),
        ("decoder", "conv"),
        ("prior", "normal"),
        ("loss", "bce-kl"),
    }
    assert all(c["distribution"] == "vaezoo" and c["version"] == vaezoo.__version__ for c in components)
    data = json.loads(metadata["vaezoo.data"])
    assert data["shape"] == [3, 32, 32] and data["range"] == [0.0, 1.0]
    training = json.loads(metadata["vaezoo.training"])
    assert training["epochs"] == 1 and training["steps"] == 5 and training["precision"] == "bf16"
    assert {"train_loss", "test_loss"} <= set(training["metrics"])


def test_weights_are_float32_even_when_trained_in_bf16(trained):
    header = _header(trained.out_dir / "model.safetensors")
    dtypes = {info["dtype"] for key, info in header.items() if key != "__metadata__"}
    assert dtypes == {"F32"}
    tensors = load_file(trained.out_dir / "model.safetensors")
    state = trained.model.state_dict()
    assert set(tensors) == set(state) and all(torch.equal(tensors[k], state[k].float()) for k in state)


def test_load_in_a_fresh_process(trained):
    path = trained.out_dir / "model.safetensors"
    code = (
        "import sys, vaezoo, torch\n"
        "m = vaezoo.load(sys.argv[1], device='cpu')\n"
        "print(sum(float(p.double().sum()) for p in m.state_dict().values()), m.recipe['name'], m.training, "
        "next(m.parameters()).device)\n"
    )
    process = subprocess.run([sys.executable, "-c", code, str(path)], capture_output=True, text=True, timeout=120)
    assert process.returncode == 0, process.stderr
    total, name, training, device = process.stdout.split()
    assert float(total) == pytest.approx(
        sum(float(p.double().sum()) for p in trained.model.state_dict().values()), rel=1e-12
    )
    assert (name, training, device) == ("cifar-vae", "False", "cpu")


def test_load_rebuilds_the_same_model(trained):
    model = vaezoo.load(trained.out_dir / "model.safetensors")
    assert not model.training and model.metadata["training"]["epochs"] == 1
    saved = model.state_dict()
    assert all(torch.equal(saved[name], tensor) for name, tensor in trained.model.state_dict().items())
    x = torch.rand(2, 3, 32, 32)
    trained.model.eval()  # trained in channels-last memory format, loaded in the default one: same maths
    assert torch.allclose(model.reconstruct(x), trained.model.reconstruct(x), atol=1e-5)
    info = describe(trained.out_dir / "model.safetensors")
    assert info["parameters"] == sum(t.numel() for t in model.state_dict().values())


def test_sample_is_byte_identical_for_one_seed(trained, tmp_path):
    model = str(trained.out_dir / "model.safetensors")
    commands = [
        ["sample", model, "-n", "9", "--seed", seed, "--out", str(tmp_path / name)]
        for seed, name in (("3", "a.png"), ("3", "b.png"), ("4", "c.png"))
    ]
    for result in run_cli_batch(commands, tmp_path):
        assert result.returncode == 0, result.stderr[-2000:]
    a, b, c = ((tmp_path / name).read_bytes() for name in ("a.png", "b.png", "c.png"))
    assert a[:8] == b"\x89PNG\r\n\x1a\n" and a == b and a != c
    from PIL import Image

    assert Image.open(io.BytesIO(a)).size == (2 + 3 * 34, 2 + 3 * 34)  # a 3x3 grid of 32px images, 2px padding


# -- atomic writes ------------------------------------------------------------------------------


@pytest.mark.parametrize("failing", ["fsync", "replace"])
def test_a_failed_write_keeps_the_old_file_and_leaves_no_temp_file(trained, tmp_path, monkeypatch, failing):
    import vaezoo.files.atomic

    path = tmp_path / "model.safetensors"
    path.write_bytes((trained.out_dir / "model.safetensors").read_bytes())
    before = path.read_bytes()

    def broken(*args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(vaezoo.files.atomic.os, failing, broken)
    with pytest.raises(OSError, match="No space left"):
        vaezoo.save(trained.model, path, trained.model.recipe, {"epochs": 99})
    monkeypatch.undo()
    assert path.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.safetensors"]


def test_a_write_interrupted_by_ctrl_c_keeps_the_old_file(tmp_path, monkeypatch):
    from vaezoo.files.atomic import write_bytes_atomic

    path = tmp_path / "metrics.jsonl"
    path.write_text("old\n")
    real_fdopen = os.fdopen

    class Interrupting:
        def __init__(self, handle):
            self.handle = handle

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            self.handle.close()

        def write(self, data):
            self.handle.write(data[:3])
            raise KeyboardInterrupt

    monkeypatch.setattr("vaezoo.files.atomic.os.fdopen", lambda fd, mode: Interrupting(real_fdopen(fd, mode)))
    with pytest.raises(KeyboardInterrupt):
        write_bytes_atomic(path, b"new content\n")
    assert path.read_text() == "old\n" and [p.name for p in tmp_path.iterdir()] == ["metrics.jsonl"]


# -- bad files ----------------------------------------------------------------------------------


def _with_metadata(source, target, **changes):
    """A copy of model.safetensors `source` with some metadata values replaced (None: removed)."""
    tensors = load_file(source)
    with safe_open(source, "pt") as handle:
        metadata = dict(handle.metadata())
    for key, value in changes.items():
        key = key.replace("__", ".")
        if value is None:
            metadata.pop(key)
        else:
            metadata[key] = value
    save_file(tensors, target, metadata=metadata)


class _Pickled:
    """Unpickling this would create a file: proof that nothing was unpickled."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (open, (str(self.marker), "w"))


BAD_FILES = [
    "empty",
    "truncated-header",
    "truncated-data",
    "random-bytes",
    "torch-save-pickle",
    "no-vaezoo-metadata",
    "broken-json",
    "wrong-shape-json",
    "text",
]


def make_bad_file(kind, good, path):
    data = good.read_bytes()
    if kind == "empty":
        path.write_bytes(b"")
    elif kind == "truncated-header":
        path.write_bytes(data[:100])
    elif kind == "truncated-data":
        path.write_bytes(data[:-100])
    elif kind == "random-bytes":
        path.write_bytes(
            torch.randint(0, 256, (4096,), dtype=torch.uint8, generator=torch.Generator().manual_seed(5))
            .numpy()
            .tobytes()
        )
    elif kind == "torch-save-pickle":
        torch.save({"weights": torch.zeros(3), "payload": _Pickled(path.parent / "UNPICKLED")}, path)
    elif kind == "no-vaezoo-metadata":
        path.write_bytes(save({"w": torch.zeros(2)}, metadata={"format": "pt"}))
    elif kind == "broken-json":
        _with_metadata(good, path, vaezoo__recipe='{"name": "cifar-vae", ')
    elif kind == "wrong-shape-json":
        _with_metadata(good, path, vaezoo__components='"conv"')
    elif kind == "text":
        path.write_text("hello, I am not a model\n")
    return path


@pytest.fixture(scope="module")
def bad_files(trained, tmp_path_factory) -> dict:
    """{kind: (the bad file, [`sample`, `inspect` and `inspect --json` of it])} for each of BAD_FILES,
    each file in a folder of its own, the commands in one fresh process."""
    root = tmp_path_factory.mktemp("bad-files")
    files, commands = {}, []
    for kind in BAD_FILES:
        (root / kind).mkdir()
        path = files[kind] = make_bad_file(
            kind, trained.out_dir / "model.safetensors", root / kind / "model.safetensors"
        )
        commands += [["sample", str(path), "--out", str(root / kind / "s.png")], ["inspect", str(path)]]
        commands += [["inspect", str(path), "--json"]]
    results = iter(run_cli_batch(commands, root))
    return {kind: (path, [next(results) for _ in range(3)]) for kind, path in files.items()}


@pytest.mark.parametrize("kind", BAD_FILES)
def test_bad_files_are_one_clear_error(bad_files, kind):
    path, results = bad_files[kind]
    with pytest.raises(CheckpointError) as error:
        vaezoo.load(path)
    assert str(path) in str(error.value) and "\n" not in str(error.value)
    for result in results:
        lines = error_lines(result.stderr)
        assert result.returncode == 2, (result.args, result.stderr)
        assert len(lines) == 1 and lines[0].startswith("vaezoo: error:") and "Traceback" not in result.stderr
        assert result.stdout == ""
    assert not (path.parent / "UNPICKLED").exists() and not (path.parent / "s.png").exists()


def test_bad_file_in_a_fresh_process(trained, tmp_path):
    path = make_bad_file("torch-save-pickle", trained.out_dir / "model.safetensors", tmp_path / "model.safetensors")
    process = run_cli("sample", str(path), cwd=tmp_path)
    assert process.returncode == 2 and "Traceback" not in process.stderr
    assert len(error_lines(process.stderr)) == 1 and "pickle" in process.stderr
    assert not (tmp_path / "UNPICKLED").exists() and not (tmp_path / "samples.png").exists()


def test_component_of_a_plugin_that_is_not_installed(trained, tmp_path):
    components = describe(trained.out_dir / "model.safetensors")["components"]
    for record in components:
        if record["kind"] == "encoder":
            record.update(name="fancy", distribution="vaezoo-fancy", version="2.1")
    path = tmp_path / "model.safetensors"
    _with_metadata(trained.out_dir / "model.safetensors", path, vaezoo__components=json.dumps(components))
    with pytest.raises(
        CheckpointError, match="needs encoder 'fancy' from plugin distribution 'vaezoo-fancy'.*pip install vaezoo-fancy"
    ):
        vaezoo.load(path)
    sampled, inspected, said, normal = run_cli_batch(
        [
            ["sample", str(path), "--out", str(tmp_path / "s.png")],
            ["inspect", str(path), "--json"],
            ["inspect", str(path)],
            ["inspect", str(trained.out_dir / "model.safetensors"), "--json"],
        ],
        tmp_path,
    )
    lines = error_lines(sampled.stderr)
    assert sampled.returncode == 2 and len(lines) == 1 and "pip install vaezoo-fancy" in lines[0]
    # inspect still tells what the file needs, without the plugin
    assert inspected.returncode == 0, inspected.stderr
    info = json.loads(inspected.stdout)
    assert {"kind": "encoder", "name": "fancy", "distribution": "vaezoo-fancy", "version": "2.1"}.items() <= next(
        c for c in info["components"] if c["kind"] == "encoder"
    ).items()
    assert info["missing_distributions"] == ["vaezoo-fancy"]
    assert said.returncode == 0  # and says so on a line of its own
    said = " ".join(said.stdout.split())  # as one line: the terminal wraps it
    assert "not installed here: vaezoo-fancy (sample and load need it: pip install vaezoo-fancy)" in said
    assert normal.returncode == 0 and json.loads(normal.stdout)["missing_distributions"] == []


def test_disabled_plugin_is_named_with_its_distribution(trained, tmp_path):
    model = str(trained.out_dir / "model.safetensors")
    disabled = {"VAEZOO_DISABLE_PLUGINS": "normal"}
    (result,) = run_cli_batch([["sample", model, "--out", str(tmp_path / "s.png")]], tmp_path, env=disabled)
    lines = error_lines(result.stderr)
    assert (
        result.returncode == 2
        and len(lines) == 1
        and "prior 'normal'" in lines[0]
        and "'vaezoo'" in lines[0]
        and "VAEZOO_DISABLE_PLUGINS" in lines[0]
    )


def test_tensors_that_do_not_match_the_recipe(trained, tmp_path):
    recipe = dict(trained.model.recipe, encoder={"name": "conv", "hidden": [4, 8, 16]})
    path = tmp_path / "model.safetensors"
    _with_metadata(trained.out_dir / "model.safetensors", path, vaezoo__recipe=json.dumps(recipe))
    with pytest.raises(CheckpointError, match="shape"):
        vaezoo.load(path)
    missing = tmp_path / "missing.safetensors"
    tensors = load_file(trained.out_dir / "model.safetensors")
    tensors.pop("encoder.mu.bias")
    with safe_open(trained.out_dir / "model.safetensors", "pt") as handle:
        save_file(tensors, missing, metadata=handle.metadata())
    with pytest.raises(CheckpointError, match="missing encoder.mu.bias"):
        vaezoo.load(missing)
    (result,) = run_cli_batch([["sample", str(path), "--out", str(tmp_path / "s.png")]], tmp_path)
    lines = error_lines(result.stderr)
    assert result.returncode == 2 and len(lines) == 1 and "shape" in lines[0]


def test_missing_file_and_folder(trained, tmp_path):
    with pytest.raises(CheckpointError, match="does not exist"):
        vaezoo.load(tmp_path / "nope.safetensors")
    with pytest.raises(CheckpointError, match="is a folder: pass"):
        vaezoo.load(trained.out_dir)
