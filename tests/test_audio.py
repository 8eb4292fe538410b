"""Audio: VGGish-exact log-mel patches, `logmel` statistics, VGGish loading and PCA."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torchvggish import torchvggish as tv_model
from torchvggish import vggish_input

from extract.backbones.registry import build_backbone
from extract.backbones.vggish import PCA_NAME, RELEASE_URL, WEIGHTS_NAME
from extract.errors import UserError
from extract.logmel import LOG_MEL_CONFIG, LOG_OFFSET, MIN_SAMPLES, log_mel_patches

TOLERANCE = 1e-4  # max abs difference to torchvggish's log-mel, stated in docs/backbones.md


def tone_and_noise(seconds: float, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    t = np.arange(int(seconds * 16000)) / 16000
    chirp = np.sin(2 * np.pi * (200 + 900 * t) * t)
    return (0.4 * chirp + 0.05 * rng.standard_normal(t.size)).astype(np.float32)


def reference_patches(waveform: np.ndarray) -> np.ndarray:
    examples = vggish_input.waveform_to_examples(waveform, 16000)
    return np.asarray(examples.detach().numpy() if torch.is_tensor(examples) else examples)[:, 0]


@pytest.mark.parametrize("seconds", [0.975, 3.3, 5.0])
def test_log_mel_patches_match_torchvggish(seconds):
    wave = tone_and_noise(seconds)
    patches, times = log_mel_patches(wave)
    reference = reference_patches(wave)
    assert patches.shape == reference.shape and patches.shape[1:] == (96, 64)
    assert patches.dtype == np.float32
    assert np.abs(patches - reference).max() <= TOLERANCE
    np.testing.assert_allclose(times, 0.96 * np.arange(len(patches)), atol=1e-6)


def test_short_waveform_is_zero_padded_to_one_patch():
    short = tone_and_noise(0.3, seed=1)
    patches, times = log_mel_patches(short)
    padded = np.pad(short, (0, MIN_SAMPLES - short.size))
    assert patches.shape == (1, 96, 64) and times.tolist() == [0.0]
    assert np.abs(patches - reference_patches(padded)).max() <= TOLERANCE
    silent, _ = log_mel_patches(np.zeros(0, dtype=np.float32))
    np.testing.assert_allclose(silent, np.full((1, 96, 64), np.log(LOG_OFFSET)), rtol=1e-6)


def test_bad_waveforms_are_rejected():
    with pytest.raises(ValueError, match="mono"):
        log_mel_patches(np.zeros((2, 16000), dtype=np.float32))
    broken = tone_and_noise(1.0)
    broken[10] = np.nan
    with pytest.raises(UserError, match="NaN"):
        log_mel_patches(broken)


def test_logmel_features_are_per_band_mean_and_std():
    patches, _ = log_mel_patches(tone_and_noise(2.5, seed=2))
    backbone = build_backbone({"name": "logmel"}, "audio", "cpu")
    features = backbone(patches)
    assert backbone.dim == 128 and features.shape == (len(patches), 128)
    np.testing.assert_allclose(features[:, :64].numpy(), patches.mean(axis=1), rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(features[:, 64:].numpy(), patches.std(axis=1), rtol=1e-4, atol=1e-5)
    assert backbone.config()["log_mel"] == LOG_MEL_CONFIG
    with pytest.raises(UserError, match="takes no options"):
        build_backbone({"name": "logmel", "bands": 32}, "audio")


@pytest.fixture(scope="module")
def port_model() -> torch.nn.Module:
    """torchvggish's own (randomly initialised, never downloaded) network, as the reference."""
    torch.manual_seed(0)
    return tv_model._vgg(postprocess=False).eval()


@pytest.fixture(scope="module")
def weights_file(port_model, tmp_path_factory):
    path = tmp_path_factory.mktemp("weights") / WEIGHTS_NAME
    torch.save(port_model.state_dict(), path)
    return path


def test_vggish_loads_port_layout_and_matches_port_outputs(port_model, weights_file):
    patches, _ = log_mel_patches(tone_and_noise(3.0, seed=3))
    backbone = build_backbone({"name": "vggish", "weights_file": str(weights_file)}, "audio")
    ours = backbone(patches)
    with torch.inference_mode():
        theirs = port_model(torch.from_numpy(patches)[:, None])
    assert ours.shape == (3, 128) and backbone.dim == 128
    torch.testing.assert_close(ours, theirs, rtol=1e-4, atol=1e-5)
    assert len(backbone.config()["sha256"]) == 64


def test_vggish_file_problems_are_clear_errors(tmp_path, monkeypatch):
    wrong_shape = tmp_path / "wrong_shape.pth"
    torch.save({"embeddings.4.weight": torch.zeros(64, 4096)}, wrong_shape)
    with pytest.raises(UserError, match=r"wrong_shape\.pth.*wrong shapes.*embeddings\.4\.weight"):
        build_backbone({"name": "vggish", "weights_file": str(wrong_shape)}, "audio")
    wrong_keys = tmp_path / "wrong_keys.pth"
    torch.save({"convs.0.weight": torch.zeros(64, 1, 3, 3)}, wrong_keys)
    with pytest.raises(UserError, match=r"wrong_keys\.pth.*missing keys"):
        build_backbone({"name": "vggish", "weights_file": str(wrong_keys)}, "audio")
    # no path given and nothing in ./weights or the torch hub cache: names file, places, URL
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    with pytest.raises(UserError) as info:
        build_backbone({"name": "vggish"}, "audio")
    message = str(info.value)
    assert WEIGHTS_NAME in message and RELEASE_URL in message and "weights/" in message
    assert str(tmp_path / "torch") in message


def test_vggish_found_in_default_weights_folder(tmp_path, weights_file, monkeypatch):
    (tmp_path / "weights").mkdir()
    (tmp_path / "weights" / WEIGHTS_NAME).symlink_to(weights_file)
    monkeypatch.chdir(tmp_path)
    backbone = build_backbone({"name": "vggish"}, "audio")
    assert backbone.config()["weights_file"] == str(tmp_path / "weights" / WEIGHTS_NAME)


def save_pca(path, vectors: np.ndarray, means: np.ndarray) -> None:
    """The released file holds numpy arrays; keep that format in the fixture."""
    torch.save({"pca_eigen_vectors": vectors, "pca_means": means.reshape(-1, 1)}, path)


def test_identity_pca_leaves_embeddings_or_only_quantises(tmp_path, weights_file):
    pca = tmp_path / PCA_NAME
    save_pca(pca, np.eye(128), np.zeros(128))
    patches, _ = log_mel_patches(tone_and_noise(2.0, seed=4))
    raw = build_backbone({"name": "vggish", "weights_file": str(weights_file)}, "audio")(patches)
    spec = {"name": "vggish", "weights_file": str(weights_file), "pca_file": str(pca)}
    projected = build_backbone(spec, "audio")(patches)
    torch.testing.assert_close(projected, raw)
    quantised = build_backbone({**spec, "quantize": True}, "audio")(patches)
    expected = torch.round((raw.clamp(-2, 2) + 2) * 255 / 4)
    torch.testing.assert_close(quantised, expected)
    assert quantised.min() >= 0 and quantised.max() <= 255


def test_pca_matches_port_postprocessor(tmp_path, weights_file):
    rng = np.random.default_rng(5)
    vectors, means = rng.standard_normal((128, 128)) * 0.05, rng.standard_normal(128) * 0.1
    pca = tmp_path / "pca.pth"
    save_pca(pca, vectors, means)
    patches, _ = log_mel_patches(tone_and_noise(2.0, seed=6))
    spec = {"name": "vggish", "weights_file": str(weights_file), "pca_file": str(pca)}
    backbone = build_backbone({**spec, "quantize": True}, "audio")
    raw = build_backbone({"name": "vggish", "weights_file": str(weights_file)}, "audio")(patches)
    reference = object.__new__(tv_model.Postprocessor)  # its __init__ would download
    reference._pca_matrix = torch.as_tensor(vectors).float()
    reference._pca_means = torch.as_tensor(means.reshape(-1, 1)).float()
    torch.testing.assert_close(backbone(patches), reference.postprocess(raw), atol=1.0, rtol=0)
    assert backbone.config()["postprocess"].startswith("pca + 8-bit")

    bad = tmp_path / "bad_pca.pth"
    torch.save({"pca_eigen_vectors": np.eye(64)}, bad)
    with pytest.raises(UserError, match=r"bad_pca\.pth: not a VGGish PCA file"):
        build_backbone({**spec, "pca_file": str(bad)}, "audio")
    with pytest.raises(UserError, match="quantize needs pca"):
        build_backbone({"name": "vggish", "weights_file": str(weights_file), "quantize": True},
                       "audio")  # fmt: skip
