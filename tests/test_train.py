import dataclasses

import numpy as np
import pytest
import torch

from aecore.errors import AepipeError
from aecore.models import DenseAutoencoder, build_model, default_hidden, load_model, save_model
from aecore.train import (
    batch_plan,
    epoch_order,
    measure_loss,
    param_groups,
    select_device,
    train,
    trimmed_mean,
)
from tests.conftest import data_config


def low_rank(n=400, d=10, seed=0):
    generator = np.random.default_rng(seed)
    x = generator.normal(size=(n, 3)) @ generator.normal(size=(3, d))
    return torch.from_numpy(x.astype(np.float32))


def quick(params, **changes):
    return dataclasses.replace(params.train, **{"device": "cpu", "epochs": 20, **changes})


def test_shapes_and_default_widths(params):
    flat = dataclasses.replace(params.model, latent_dim=4, hidden=None, nested=False)
    model = build_model(flat, 64)
    assert default_hidden(64, 8) == (128, 64)
    assert model.encode(torch.zeros(5, 64)).shape == (5, 4)
    assert model(torch.zeros(5, 64)).shape == (5, 64)
    widths = [m.out_features for m in model.encoder if isinstance(m, torch.nn.Linear)]
    assert widths == [128, 64, 4]
    nested = build_model(dataclasses.replace(flat, nested=True), 64)  # codes of 16 and 64 too
    widths = [m.out_features for m in nested.encoder if isinstance(m, torch.nn.Linear)]
    assert widths == [128, 64, 64] and nested.prefixes == (4, 16, 64) and nested.k == 4


def test_latent_size_follows_the_inputs_unless_set(params):
    auto = dataclasses.replace(params.model, latent_dim=None, hidden=None)
    assert [build_model(auto, d).k for d in (1, 6, 21, 64, 166)] == [1, 2, 3, 8, 21]
    assert build_model(dataclasses.replace(auto, latent_dim=5), 64).k == 5
    wide = build_model(auto, 1555)  # thousands of columns: an embedding of 32, not 194
    assert (wide.k, wide.spec["hidden"]) == (32, [64, 64])
    assert build_model(dataclasses.replace(auto, latent_dim=194), 1555).k == 194


def test_a_layer_of_many_inputs_learns_at_a_smaller_rate():
    model = DenseAutoencoder(1024, 8, (512, 64))
    groups = param_groups(model, 0.01)
    rate = {id(p): group["lr"] for group in groups for p in group["params"]}
    first, second = model.encoder[0], model.encoder[2]  # 1024 and 512 inputs
    assert rate[id(first.weight)] == pytest.approx(0.01 * 256 / 1024)
    assert rate[id(second.weight)] == pytest.approx(0.01 * 256 / 512)
    assert rate[id(first.bias)] == 0.01 and rate[id(model.decoder[0].weight)] == 0.01
    assert sum(len(group["params"]) for group in groups) == len(list(model.parameters()))
    narrow = param_groups(DenseAutoencoder(166, 21, (64, 42)), 0.01)  # every benchmark set
    assert [group["lr"] for group in narrow] == [0.01]


def test_a_wide_network_learns_instead_of_collapsing_to_the_mean(params):
    """1200 columns through layers of 512 units at the default rate of 0.01: the full rate
    on every layer overshoots, and the network settles on the mean row (a loss of 1)."""
    generator = np.random.default_rng(0)
    x = generator.normal(size=(1200, 8)) @ generator.normal(size=(8, 1200)) / np.sqrt(8)
    x = torch.from_numpy((x + 0.3 * generator.normal(size=x.shape)).astype(np.float32))
    torch.manual_seed(0)
    model = DenseAutoencoder(1200, 256, (512, 512))
    config = quick(params, epochs=4, batch_size=64, learning_rate=0.01, patience=10)
    result = train(model, x[:1000], x[1000:], config)
    variance = float(x.var())
    assert result.history[-1]["val_loss"] < 0.5 * variance, result.history


def test_trimmed_loss_leaves_the_worst_rows_out():
    losses = torch.tensor([1.0, 2.0, 3.0, 100.0], requires_grad=True)
    value = trimmed_mean(losses, 0.25)
    assert value.item() == pytest.approx(2.0)
    value.backward()
    assert losses.grad.tolist() == pytest.approx([1 / 3, 1 / 3, 1 / 3, 0.0])  # no pull
    assert trimmed_mean(losses.detach(), 0.0).item() == pytest.approx(26.5)
    assert trimmed_mean(losses.detach()[:1], 0.5).item() == pytest.approx(1.0)  # never empty


def test_unknown_kind_is_named(params):
    with pytest.raises(AepipeError, match="model.kind: 'lstm'"):
        build_model(dataclasses.replace(params.model, kind="lstm"), 8)


def test_training_lowers_the_loss_and_reports_each_epoch(params):
    x = low_rank()
    torch.manual_seed(0)
    model = DenseAutoencoder(10, 3, (32,))
    seen = []
    result = train(
        model, x[:300], x[300:], quick(params), on_epoch=lambda e, m: seen.append((e, m))
    )
    assert [e for e, _ in seen] == list(range(20))
    assert set(seen[0][1]) == {"train_loss", "val_loss"}
    assert seen[-1][1]["train_loss"] < 0.5 * seen[0][1]["train_loss"]
    best = min(h["val_loss"] for h in result.history)
    assert result.history[result.best_epoch]["val_loss"] == best


def test_seeded_training_is_deterministic_on_cpu(params):
    x = low_rank()
    weights = []
    for _ in range(2):
        torch.manual_seed(3)
        model = DenseAutoencoder(10, 3, (16,))
        train(model, x[:300], x[300:], quick(params, epochs=5, seed=3))
        weights.append(torch.cat([p.flatten() for p in model.parameters()]))
    assert torch.equal(weights[0], weights[1])


def test_early_stopping_and_best_weights(params, tmp_path):
    x = low_rank()
    torch.manual_seed(0)
    model = DenseAutoencoder(10, 3, (16,))
    # a large learning rate makes val_loss bounce, so patience 2 stops early
    config = quick(params, epochs=200, patience=2, learning_rate=0.05)
    result = train(model, x[:300], x[300:], config)
    assert len(result.history) < 200
    assert len(result.history) == result.best_epoch + 3
    best = result.history[result.best_epoch]["val_loss"]  # the model holds the best weights
    assert measure_loss(model, x[300:]) == pytest.approx(best, rel=1e-6)


class Interrupted(Exception):
    pass


def test_resumed_training_equals_an_uninterrupted_run(params, tmp_path):
    """A denoising model draws noise every step: the random state is part of the resume."""
    from aecore.models import DenoisingAutoencoder
    from aecore.train import Checkpoint

    x = low_rank()
    config = quick(params, epochs=12, seed=5, checkpoint_seconds=1e-9, lr_schedule="cosine")

    def fresh():
        torch.manual_seed(5)
        return DenoisingAutoencoder(10, 3, (16,), noise_std=0.2, mask_rate=0.2)

    whole = train(fresh(), x[:300], x[300:], config)

    def crash_at_seven(epoch, metrics):
        if epoch == 7:
            raise Interrupted

    checkpoint = Checkpoint(tmp_path / "checkpoint.pt", "same data and settings")
    with pytest.raises(Interrupted):
        train(fresh(), x[:300], x[300:], config, crash_at_seven, checkpoint)
    seen = []
    resumed = train(
        fresh(),
        x[:300],
        x[300:],
        config,
        lambda epoch, metrics: seen.append(epoch),
        dataclasses.replace(checkpoint, resume=True),
    )
    assert seen == list(range(12))  # the saved epochs replayed to the tracker, then the rest
    assert resumed.history == whole.history  # bit for bit on CPU
    for a, b in zip(whole.model.parameters(), resumed.model.parameters(), strict=True):
        assert torch.equal(a, b)
    other = Checkpoint(checkpoint.path, "other data", resume=True)
    assert other.load() is None  # never resumed from another table or settings


def test_save_and_load_use_weights_only(tmp_path):
    model = DenseAutoencoder(6, 2, (8,))
    save_model(model, tmp_path / "m.pt")
    saved = torch.load(tmp_path / "m.pt", weights_only=True)
    assert saved["spec"] == {
        "kind": "dense",
        "d": 6,
        "k": 2,
        "hidden": [8],
        "blocks": [["num", 1]] * 6,
        "gelu": "tanh",
    }
    with pytest.raises(AepipeError, match="missing.pt: saved model not found"):
        load_model(tmp_path / "missing.pt")
    (tmp_path / "torn.pt").write_bytes(b"PK\x03\x04 half a file")
    with pytest.raises(AepipeError, match=r"torn.pt: not a saved model \(.+\); run the train"):
        load_model(tmp_path / "torn.pt")


def test_device_selection():
    assert select_device("cpu").type == "cpu"
    expected = (
        "cuda"
        if torch.cuda.is_available()
        else "mps"
        if torch.backends.mps.is_available()
        else "cpu"
    )
    assert select_device("auto").type == expected
    if not torch.cuda.is_available():
        with pytest.raises(AepipeError, match="CUDA is not available"):
            select_device("cuda")


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_trains_on_cuda_with_bf16(params):
    x = low_rank()
    model = DenseAutoencoder(10, 3, (32,)).cuda()
    result = train(model, x[:300], x[300:], quick(params, device="cuda"))
    assert result.device.startswith("cuda")
    assert result.history[-1]["train_loss"] < result.history[0]["train_loss"]
    on_gpu = x.cuda()  # rows a caller already holds on the GPU train as they are
    again = train(model, on_gpu[:300], on_gpu[300:], quick(params, device="cuda", epochs=2))
    assert again.device.startswith("cuda")


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_the_gpu_shuffle_is_a_permutation_that_the_seed_repeats():
    cuda = torch.device("cuda")
    first = epoch_order(10_000, torch.Generator().manual_seed(3), cuda)
    again = epoch_order(10_000, torch.Generator().manual_seed(3), cuda)
    assert first.device.type == "cuda" and torch.equal(first, again)
    assert torch.equal(first.sort().values.cpu(), torch.arange(10_000))


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cpu_and_gpu_agree_on_the_same_weights(params):
    """The same weights encode alike on both devices: bf16 autocast is for training only."""
    x = low_rank()
    torch.manual_seed(0)
    model = DenseAutoencoder(10, 3, (32,))
    train(model, x[:300], x[300:], quick(params, epochs=5))
    from aecore.models import encode_and_reconstruct

    cpu = encode_and_reconstruct(model, x.numpy())
    gpu = encode_and_reconstruct(model.cuda(), x.numpy())
    for ours, theirs in zip(cpu, gpu, strict=True):
        np.testing.assert_allclose(ours, theirs, rtol=1e-3, atol=1e-4)  # TF32 matmuls


def test_batch_grows_with_the_table(params):
    config = quick(params, batch_size=256, max_batch_size=4096, learning_rate=0.01)
    assert batch_plan(20_000, config) == (256, 0.01)  # benchmark-sized tables: unchanged
    assert batch_plan(150_000, config)[0] == 1024  # 146 steps per epoch
    batch, lr = batch_plan(800_000, config)
    assert (batch, lr) == (4096, pytest.approx(0.04))  # 800k / 4096 ~ 195 steps per epoch
    assert batch_plan(10**8, config)[0] == 4096
    assert batch_plan(10**8, quick(params, batch_size=256, max_batch_size=256))[0] == 256


def test_small_batches_keep_the_rate_up_to_256_rows(params):
    """From a batch of 64 the rate holds to 256 rows, then grows as it does from 256."""
    small = quick(params, batch_size=64, max_batch_size=4096, learning_rate=0.01)
    assert batch_plan(1_000, small) == (64, 0.01)  # small tables: 16 steps per epoch
    assert batch_plan(30_000, small) == (128, 0.01)  # grown, still at the rate
    assert batch_plan(60_000, small) == (256, 0.01)
    large = quick(params, batch_size=256, max_batch_size=4096, learning_rate=0.01)
    for rows in (150_000, 800_000, 10**8):  # large tables train as from a batch of 256
        assert batch_plan(rows, small) == pytest.approx(batch_plan(rows, large))


def test_budgets_end_training_and_say_so(params):
    x = low_rank(n=4000)
    torch.manual_seed(0)
    model = DenseAutoencoder(10, 3, (16,))
    config = quick(params, epochs=50, batch_size=64, max_batch_size=64, max_steps=30)
    result = train(model, x[:3000], x[3000:], config)
    assert (result.steps, result.stopped, len(result.history)) == (30, "max_steps", 1)
    result = train(
        model, x[:3000], x[3000:], quick(params, epochs=10**6, patience=10**6, max_minutes=0.02)
    )
    assert result.stopped == "max_minutes" and 1.0 <= result.seconds < 10


def test_large_tables_train_on_a_logged_sample(params, tmp_path):
    from aecore.normalize import normalize
    from aecore.schema import ingest
    from aecore.synthetic import make_data
    from aecore.train import fit_autoencoder

    make_data(tmp_path / "src", 3000, 8)
    raw = ingest(
        data_config(str(tmp_path / "src"), dataset="t", label_col="label"),
        tmp_path / "r",
    )
    normalize(raw, tmp_path / "p", tmp_path / "n.json", params.normalize)
    config = quick(params, epochs=2, max_rows=1000, max_val_rows=100)
    fit = fit_autoencoder(
        tmp_path / "p", tmp_path / "m.pt", tmp_path / "h.json", params.model, config
    )
    assert (fit.train_rows, fit.val_rows) == (1000, 100)
    assert fit.train_sampled and fit.train_rows_total > 2000
    assert fit.train_rows + fit.val_rows < fit.train_rows_total


@pytest.mark.parametrize("kind", ["dense", "denoising", "sparse", "vae"])
def test_every_kind_trains_saves_and_loads(params, kind, tmp_path):
    x = low_rank()
    torch.manual_seed(0)
    model = build_model(
        dataclasses.replace(params.model, kind=kind, latent_dim=3, hidden=(32,)), 10
    )

    def reconstruction_mse():
        with torch.no_grad():
            return float(torch.nn.functional.mse_loss(model.eval()(x[300:]), x[300:]))

    before = reconstruction_mse()
    train(model, x[:300], x[300:], quick(params, epochs=40, lr_schedule="cosine", grad_clip=1.0))
    assert reconstruction_mse() < 0.5 * before
    restored = load_model(save_model(model, tmp_path / "m.pt"))
    assert restored.kind == kind and restored.spec == model.spec
    with torch.no_grad():
        assert torch.equal(restored.encode(x), model.encode(x))
        assert torch.equal(restored.encode(x), restored.encode(x))  # deterministic latents


def test_vae_kl_is_real_and_weighted(params):
    x = low_rank()
    torch.manual_seed(0)
    config = dataclasses.replace(params.model, kind="vae", latent_dim=3, hidden=(16,))
    vae = build_model(config, 10).train()
    assert vae.kl(x) > 0
    vae.epoch = 100  # past the warm-up
    losses = {}
    for beta in (0.0, 1.0, 4.0):
        vae.beta = beta
        torch.manual_seed(1)  # the same reparameterization noise each time
        losses[beta] = vae.loss(x).item()
    kl = vae.kl(x).item() / 10
    assert losses[1.0] - losses[0.0] == pytest.approx(kl, rel=1e-4)
    assert losses[4.0] - losses[0.0] == pytest.approx(4 * kl, rel=1e-4)
    vae.epoch = 0  # warm-up: a tenth of beta in the first of 10 epochs
    assert vae.kl_weight() == pytest.approx(0.4)


def test_denoising_noise_in_training_only(params):
    x = low_rank()
    config = dataclasses.replace(params.model, kind="denoising", hidden=(16,), mask_rate=0.3)
    model = build_model(config, 10)
    model.train()
    assert not torch.equal(model.corrupt(x), x)
    assert float((model.corrupt(x) == 0).float().mean()) == pytest.approx(0.3, abs=0.03)
    assert model.loss(x) != model.loss(x)  # fresh noise each call
    model.eval()
    assert torch.equal(model.corrupt(x), x)
    assert model.loss(x) == model.loss(x)


def test_sparse_penalty_is_added(params):
    x = low_rank()
    sparse = dataclasses.replace(params.model, kind="sparse", hidden=(16,), nested=False)
    model = build_model(sparse, 10).eval()
    with torch.no_grad():
        z = model.encode(x)
        expected = torch.nn.functional.mse_loss(model.decoder(z), x) + 1e-3 * z.abs().mean()
        assert float(model.loss(x)) == pytest.approx(float(expected), rel=1e-6)


def test_compiled_training_matches_eager(params):
    """train.compile: torch.compile'd loss, the same training within float tolerance."""
    x = low_rank()
    histories = []
    for compiled in (False, True):
        torch.manual_seed(0)
        model = DenseAutoencoder(10, 3, (16,))
        result = train(model, x[:300], x[300:], quick(params, epochs=3, compile=compiled))
        histories.append([h["val_loss"] for h in result.history])
    np.testing.assert_allclose(histories[1], histories[0], rtol=1e-3)


def test_config_knows_every_model_kind():
    from aecore.config import KIND_NAMES
    from aecore.models import MODEL_KINDS

    assert tuple(MODEL_KINDS) == KIND_NAMES
