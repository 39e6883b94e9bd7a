"""The `vae-gan` family (Larsen et al. 2016): the feature-space Gaussian likelihood (eq. 6) against
torch.distributions, the evaluation's parts recomputed by hand, each of Algorithm 1's three players
trained on its own loss only (gradients against ones derived by hand from eqs. 3, 7 and 8), the model
contract, and runs on real CIFAR-10 (train, sample, eval with the GAN terms, bit-exact resume,
--nproc 2)."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
from conftest import run_cli
from safetensors.torch import load_file
from tinydata import TINY_SETS, call_main

from vaezoo.testing import check_model, component
from vaezoo_defaults.vaegan.model import VAEGAN, feature_nll

LATENT = 4
DISC = [4, 8]


def components() -> dict:
    return {
        "encoder": component("encoder", "conv", latent_dim=LATENT, hidden=[4, 8, 8]),
        "decoder": component("decoder", "conv", latent_dim=LATENT, hidden=[8, 8, 4]),
        "prior": component("prior", "normal", latent_dim=LATENT),
        "loss": component("loss", "bce-kl"),
    }


def small_model(**keys) -> VAEGAN:
    torch.manual_seed(0)
    return VAEGAN(in_shape=(3, 32, 32), latent_dim=LATENT, **{"disc_hidden": DISC, **keys}, **components())


def images(n: int = 5) -> torch.Tensor:
    return torch.randint(0, 256, (n, 3, 32, 32), generator=torch.Generator().manual_seed(1)).float() / 255


@pytest.mark.parametrize("gan_loss", ["non-saturating", "minimax"])
def test_contract(gan_loss):
    model = check_model(VAEGAN, latent_dim=LATENT, components=components(), disc_hidden=DISC, gan_loss=gan_loss)
    assert model.objective == "vae-gan" and model.regularizer == "kl"


def test_feature_likelihood_is_a_unit_gaussian_in_feature_space():
    real, fake = torch.randn(3, 2, 5), torch.randn(3, 2, 5)
    expected = -torch.distributions.Normal(fake, 1.0).log_prob(real).flatten(1).sum(1)
    assert torch.allclose(feature_nll(real, fake), expected, atol=1e-5)


def test_evaluation_parts_recomputed_by_hand():
    """recon is the pixel BCE of Dec(z) for one posterior sample, kl the closed-form KL to N(0, I),
    loss their sum; the terms are L_llike and the two GAN losses of that same sample."""
    model = small_model().eval()
    x = images()
    torch.manual_seed(7)
    with torch.no_grad():
        parts = model(x)
        torch.manual_seed(7)
        mu, logvar = model.encoder(x)
        z = mu + torch.randn_like(mu) * torch.exp(0.5 * logvar)
        z_prior = torch.randn(len(x), LATENT)
        x_rec = torch.sigmoid(model.decoder(z))
        bce = -(x * torch.log(x_rec) + (1 - x) * torch.log(1 - x_rec)).flatten(1).sum(1)
        kl = 0.5 * (mu.pow(2) + logvar.exp() - 1 - logvar).sum(1)
        dis = model.discriminator
        p_real, p_rec, p_prior = (
            torch.sigmoid(dis.head(dis.features(v))).squeeze(1)
            for v in (x, x_rec, torch.sigmoid(model.decoder(z_prior)))
        )
        d = dis.features(x).shape[1]
        llike = 0.5 * (dis.features(x) - dis.features(x_rec)).pow(2).sum(1) + 0.5 * d * math.log(2 * math.pi)
    assert torch.allclose(parts.recon, bce, rtol=1e-4) and torch.allclose(parts.kl, kl, rtol=1e-5, atol=1e-6)
    assert torch.equal(parts.loss, parts.recon + parts.kl)
    assert torch.allclose(parts.terms["feature_recon"], llike, rtol=1e-5)
    assert torch.allclose(
        parts.terms["gan_discriminator"], -torch.log(p_real) - torch.log(1 - p_rec) - torch.log(1 - p_prior), rtol=1e-4
    )
    assert torch.allclose(parts.terms["gan_generator"], -torch.log(p_rec) - torch.log(p_prior), rtol=1e-4)


def grads(loss: torch.Tensor, params: list[torch.nn.Parameter]) -> list[torch.Tensor]:
    return [
        g if g is not None else torch.zeros_like(p)
        for g, p in zip(torch.autograd.grad(loss, params, allow_unused=True, retain_graph=True), params)
    ]


@pytest.mark.parametrize("gan_loss", ["non-saturating", "minimax"])
def test_each_player_learns_its_own_loss_of_algorithm_1(gan_loss):
    """One training step, its updates recorded and not applied: the discriminator's gradient is that
    of -L_GAN (no L_llike), the encoder's that of L_prior + L_llike, the decoder's that of
    gamma * L_llike minus its part of L_GAN; written here from the paper's equations."""
    gamma = 0.3
    model = small_model(gamma=gamma, gan_loss=gan_loss).train()
    groups = {name: group.params for name, group in model.parameter_groups().items()}
    x = images()
    seen: dict[str, list[torch.Tensor]] = {}

    def update(name: str, per_image_loss: torch.Tensor) -> None:
        for p in groups[name]:
            p.grad = None
        per_image_loss.mean().backward()
        seen[name] = [p.grad.clone() if p.grad is not None else torch.zeros_like(p) for p in groups[name]]

    torch.manual_seed(3)
    model.training_step(x, None, 0, update)
    assert list(seen) == ["discriminator", "encoder", "decoder"]

    torch.manual_seed(3)
    dis = model.discriminator
    mu, logvar = model.encoder(x)
    z = mu + torch.randn_like(mu) * torch.exp(0.5 * logvar)
    z_prior = torch.randn(len(x), LATENT)
    x_rec, x_prior = torch.sigmoid(model.decoder(z)), torch.sigmoid(model.decoder(z_prior))

    def prob(v):
        return torch.sigmoid(dis.head(dis.features(v))).squeeze(1)

    l_gan = torch.log(prob(x)) + torch.log(1 - prob(x_rec.detach())) + torch.log(1 - prob(x_prior.detach()))  # eq. 8
    l_prior = 0.5 * (mu.pow(2) + logvar.exp() - 1 - logvar).sum(1)  # eq. 3
    l_llike = 0.5 * (dis.features(x).detach() - dis.features(x_rec)).pow(2).sum(1)  # eq. 7 (constant dropped)
    if gan_loss == "minimax":
        generator = torch.log(1 - prob(x_rec)) + torch.log(1 - prob(x_prior))
    else:
        generator = -torch.log(prob(x_rec)) - torch.log(prob(x_prior))
    expected = {
        "discriminator": grads((-l_gan).mean(), groups["discriminator"]),
        "encoder": grads((l_prior + l_llike).mean(), groups["encoder"]),
        "decoder": grads((gamma * l_llike + generator).mean(), groups["decoder"]),
    }
    for name, wanted in expected.items():
        assert any(w.abs().sum() > 0 for w in wanted)
        for got, want in zip(seen[name], wanted):
            assert torch.allclose(got, want, rtol=1e-3, atol=1e-6), name


def test_rejects_bad_keys():
    for keys, message in (
        ({"gamma": -1.0}, "gamma"),
        ({"gan_loss": "wasserstein"}, "gan_loss"),
        ({"disc_hidden": [4, 8, 8, 8, 8, 8]}, "divisible"),
    ):
        with pytest.raises(ValueError, match=message):
            small_model(**keys)


# End to end on real CIFAR-10 (tiny widths).
SETS = [*TINY_SETS, "model.disc_hidden=[4,8]", "train.test_limit=32"]
ARGS = ["--limit", "64", "--device", "cpu", "--seed", "1", *(a for s in SETS for a in ("--set", s))]


def metrics(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]


@pytest.fixture(scope="module")
def straight(cifar: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("vaegan") / "run"
    assert (
        call_main(
            "run", "cifar-vae-gan", "--epochs", "2", *ARGS, "--out", str(out), env={"VAEZOO_DATA_DIR": str(cifar)}
        )
        == 0
    )
    return out


def test_run_sample_and_eval(cifar: Path, straight: Path, tmp_path: Path, capsys) -> None:
    last = metrics(straight)[-1]
    assert last["test_loss"] == pytest.approx(last["test_recon"] + last["test_kl"])
    assert set(last["test_terms"]) == {"feature_recon", "gan_discriminator", "gan_generator"}
    assert all(math.isfinite(v) for v in last["test_terms"].values()) and "test_bits_per_dim" not in last
    assert call_main("sample", str(straight / "model.safetensors"), "-n", "4", "--out", str(tmp_path / "s.png")) == 0
    assert (tmp_path / "s.png").is_file() and (straight / "samples.png").is_file()
    capsys.readouterr()
    assert (
        call_main(
            "eval",
            str(straight / "model.safetensors"),
            "--limit",
            "32",
            "--device",
            "cpu",
            "--json",
            env={"VAEZOO_DATA_DIR": str(cifar)},
        )
        == 0
    )
    text = capsys.readouterr().out
    assert "gan_discriminator" in text and "vae-gan" in text and 'bits_per_dim": 0' not in text


def test_resume_is_bit_exact(cifar: Path, straight: Path, tmp_path: Path) -> None:
    """Three optimizers' state and the GAN's noise carry over: 1 + 1 epochs is 2 epochs, bit for bit."""
    out, env = tmp_path / "run", {"VAEZOO_DATA_DIR": str(cifar)}
    assert call_main("run", "cifar-vae-gan", "--epochs", "1", *ARGS, "--out", str(out), env=env) == 0
    assert call_main("run", "cifar-vae-gan", "--resume", str(out), "--epochs", "2", "--device", "cpu", env=env) == 0
    left, right = load_file(straight / "model.safetensors"), load_file(out / "model.safetensors")
    assert left.keys() == right.keys() and all(torch.equal(left[k], right[k]) for k in left)
    assert [m["train_loss"] for m in metrics(out)] == [m["train_loss"] for m in metrics(straight)]
    assert [m["test_terms"] for m in metrics(out)] == [m["test_terms"] for m in metrics(straight)]


@pytest.mark.slow
def test_nproc_2_writes_one_set_of_files(cifar: Path, tmp_path: Path) -> None:
    out = tmp_path / "two"
    result = run_cli(
        "run",
        "cifar-vae-gan",
        "--epochs",
        "1",
        *ARGS,
        "--out",
        str(out),
        "--nproc",
        "2",
        env={"VAEZOO_DATA_DIR": str(cifar), "OMP_NUM_THREADS": "1"},
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert {"model.safetensors", "state.safetensors", "metrics.jsonl", "samples.png", "recipe.toml"} <= {
        p.name for p in out.iterdir()
    }
    rows = metrics(out)
    assert len(rows) == 1 and set(rows[0]["test_terms"]) == {"feature_recon", "gan_discriminator", "gan_generator"}
    assert result.stderr.count("done:") == 1
