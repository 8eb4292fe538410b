"""Unit tests of the attention cluster and the multimodal network (pure torch, CPU)."""

from __future__ import annotations

import math

import pytest
import torch

from model.attention import UNIT_KINDS, AttentionCluster, masked_softmax
from model.network import AttentionClusterNet, UniformDropout, loss_fn, probabilities

B, L, D, N = 3, 7, 16, 4


def make_inputs(seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    features = torch.randn(B, L, D, generator=generator)
    mask = torch.ones(B, L, dtype=torch.bool)
    mask[1, 5:] = False  # second video has two padded positions
    mask[2, 1:] = False  # third video has a single real position
    return features, mask


@pytest.mark.parametrize("unit", UNIT_KINDS)
@pytest.mark.parametrize("shifting", [True, False])
def test_shapes_and_padding_gets_zero_weight(unit: str, shifting: bool) -> None:
    torch.manual_seed(0)
    cluster = AttentionCluster(D, N, unit=unit, shifting=shifting, hidden=8)
    features, mask = make_inputs()
    output, attention = cluster(features, mask)
    assert output.shape == (B, N * D)
    assert attention.shape == (B, N, L)
    assert torch.all(attention[1, :, 5:] == 0)
    assert torch.all(attention[2, :, 1:] == 0)
    torch.testing.assert_close(attention.sum(-1), torch.ones(B, N))
    # Padding content must not matter at all.
    garbage = features.clone()
    garbage[~mask] = 1e4
    torch.testing.assert_close(cluster(garbage, mask)[0], output)


@pytest.mark.parametrize("unit", UNIT_KINDS)
def test_shifted_units_have_norm_one_over_sqrt_n(unit: str) -> None:
    torch.manual_seed(1)
    cluster = AttentionCluster(D, N, unit=unit, shifting=True, hidden=8)
    features, mask = make_inputs()
    output, _ = cluster(features, mask)
    unit_norms = output.view(B, N, D).norm(dim=-1)
    torch.testing.assert_close(unit_norms, torch.full((B, N), 1 / math.sqrt(N)))
    torch.testing.assert_close(output.norm(dim=-1), torch.ones(B))


def test_shifting_follows_the_formula_and_init() -> None:
    torch.manual_seed(2)
    cluster = AttentionCluster(D, 64, unit="linear", shifting=True)
    expected_std = math.sqrt(1 / math.sqrt(64))
    stds = torch.stack([cluster.alpha.detach(), cluster.beta.detach()]).std()
    assert abs(stds.item() - expected_std) < 0.15
    features, mask = make_inputs()
    plain = AttentionCluster(D, 64, unit="linear", shifting=False)
    plain.load_state_dict(
        {k: v for k, v in cluster.state_dict().items() if k not in ("alpha", "beta")}
    )
    pooled = plain(features, mask)[0].view(B, 64, D)
    shifted = cluster.alpha[:, None] * pooled + cluster.beta[:, None]
    reference = shifted / (8 * shifted.norm(dim=-1, keepdim=True))
    torch.testing.assert_close(cluster(features, mask)[0], reference.flatten(1))


@pytest.mark.parametrize("unit", UNIT_KINDS)
def test_permuting_positions_leaves_output_unchanged(unit: str) -> None:
    torch.manual_seed(3)
    cluster = AttentionCluster(D, N, unit=unit, shifting=True, hidden=8)
    features, mask = make_inputs()
    order = torch.randperm(L)
    output, attention = cluster(features, mask)
    permuted_output, permuted_attention = cluster(features[:, order], mask[:, order])
    torch.testing.assert_close(permuted_output, output)
    torch.testing.assert_close(permuted_attention, attention[:, :, order])


def test_avg_equals_mean_pooling_over_real_positions() -> None:
    cluster = AttentionCluster(D, N, unit="avg", shifting=False)
    features, mask = make_inputs()
    output, _ = cluster(features, mask)
    weights = mask.float()
    mean = (features * weights[..., None]).sum(1) / weights.sum(1, keepdim=True)
    for n in range(N):
        torch.testing.assert_close(output.view(B, N, D)[:, n], mean)


@pytest.mark.parametrize("unit", ["linear", "dot", "mlp", "mlp_shared"])
def test_batched_cluster_equals_per_unit_loop(unit: str) -> None:
    torch.manual_seed(4)
    cluster = AttentionCluster(D, N, unit=unit, shifting=True, hidden=8)
    features, mask = make_inputs()
    output, attention = cluster(features, mask)
    for n in range(N):
        for b in range(B):
            x = features[b][mask[b]]
            if unit == "linear":
                scores = x @ cluster.weight[n] + cluster.bias[n]
            elif unit == "dot":
                scores = x @ cluster.weight[n] / math.sqrt(D)
            elif unit == "mlp_shared":  # one hidden layer, every unit reads it
                hidden = torch.tanh(x @ cluster.hidden_weight.T + cluster.hidden_bias)
                scores = hidden @ cluster.out_weight[n] + cluster.out_bias[n]
            else:
                w1 = cluster.hidden_weight[n * 8 : (n + 1) * 8]
                b1 = cluster.hidden_bias[n * 8 : (n + 1) * 8]
                scores = torch.tanh(x @ w1.T + b1) @ cluster.out_weight[n] + cluster.out_bias[n]
            weights = torch.softmax(scores, dim=0)
            v = weights @ x
            shifted = cluster.alpha[n] * v + cluster.beta[n]
            expected = shifted / (math.sqrt(N) * shifted.norm())
            torch.testing.assert_close(attention[b, n][mask[b]], weights)
            torch.testing.assert_close(output[b].view(N, D)[n], expected)


def test_shared_two_layer_scorer_does_not_grow_with_units() -> None:
    small = AttentionCluster(D, 2, unit="mlp_shared", shifting=False, hidden=16)
    large = AttentionCluster(D, 64, unit="mlp_shared", shifting=False, hidden=16)
    assert small.hidden_weight.shape == large.hidden_weight.shape == (16, D)
    assert large.out_weight.shape == (64, 16)
    private = AttentionCluster(D, 64, unit="mlp", shifting=False, hidden=16)
    assert private.hidden_weight.shape == (64 * 16, D)


def test_all_masked_row_gives_no_nan() -> None:
    scores = torch.randn(2, 3, 5)
    mask = torch.zeros(2, 1, 5, dtype=torch.bool)
    weights = masked_softmax(scores, mask)
    assert torch.all(weights == 0)
    cluster = AttentionCluster(D, N, unit="mlp", shifting=True, hidden=8)
    output, _ = cluster(torch.randn(2, 5, D), torch.zeros(2, 5, dtype=torch.bool))
    assert torch.isfinite(output).all()


def make_net(**overrides: object) -> AttentionClusterNet:
    torch.manual_seed(5)
    arguments: dict = {
        "modalities": {"rgb": (D, 4), "audio": (8, 2)},
        "num_classes": 5,
        "unit": "linear",
        "shifting": True,
        "dropout": 0.5,
        "head": "linear",
        "task": "single",
    }
    arguments.update(overrides)
    return AttentionClusterNet(**arguments)


def net_inputs(audio_present: torch.Tensor) -> dict:
    features, mask = make_inputs()
    audio = torch.randn(B, 6, 8)
    audio_mask = torch.ones(B, 6, dtype=torch.bool)
    return {
        "rgb": (features, mask, torch.ones(B, dtype=torch.bool)),
        "audio": (audio, audio_mask, audio_present),
    }


@pytest.mark.parametrize("head", ["linear", "mlp"])
def test_network_shapes(head: str) -> None:
    net = make_net(head=head).eval()
    logits, attention = net(net_inputs(torch.ones(B, dtype=torch.bool)))
    assert logits.shape == (B, 5)
    assert attention["rgb"].shape == (B, 4, L)
    assert attention["audio"].shape == (B, 2, 6)


def test_absent_modality_no_nan_and_distinct_from_zero_features() -> None:
    net = make_net().eval()
    present = torch.tensor([True, False, False])
    inputs = net_inputs(present)
    audio, audio_mask, _ = inputs["audio"]
    audio[1] = float("nan")  # whatever an absent row holds must not leak
    audio_mask[2] = False
    logits, attention = net(inputs)
    assert torch.isfinite(logits).all()
    assert torch.all(attention["audio"][1:] == 0)
    encoded, _ = net.encode(inputs)
    torch.testing.assert_close(encoded[1, -16:], net.absent["audio"].detach())
    zeros = net_inputs(torch.ones(B, dtype=torch.bool))
    zeros["audio"] = (torch.zeros(B, 6, 8), torch.ones(B, 6, dtype=torch.bool), zeros["audio"][2])
    zero_encoded, _ = net.encode(zeros)
    assert not torch.allclose(encoded[1, -16:], zero_encoded[1, -16:])
    # Gradients stay finite with an absent row full of NaN.
    net.train()
    loss = loss_fn("single")(net(inputs)[0], torch.tensor([0, 1, 2]))
    loss.backward()
    assert all(torch.isfinite(p.grad).all() for p in net.parameters() if p.grad is not None)


@pytest.mark.parametrize("unit", ["linear", "dot", "mlp"])
@pytest.mark.parametrize("head", ["linear", "mlp"])
def test_gradients_reach_every_parameter(unit: str, head: str) -> None:
    net = make_net(unit=unit, head=head, hidden=8)
    inputs = net_inputs(torch.tensor([True, False, True]))
    features, mask, _ = inputs["rgb"]
    inputs["rgb"] = (features, mask, torch.tensor([False, True, True]))  # both absent vectors learn
    logits, _ = net(inputs)
    loss_fn("single")(logits, torch.tensor([0, 3, 4])).backward()
    for name, parameter in net.named_parameters():
        assert parameter.grad is not None, name
        assert parameter.grad.abs().sum() > 0, name


def test_multi_label_loss_and_probabilities() -> None:
    net = make_net(task="multi").eval()
    logits, _ = net(net_inputs(torch.ones(B, dtype=torch.bool)))
    targets = torch.tensor([[1, 0, 1, 0, 0], [0, 0, 0, 0, 1], [1, 1, 1, 1, 1]]).float()
    loss = loss_fn("multi")(logits, targets)
    expected = torch.nn.functional.binary_cross_entropy(torch.sigmoid(logits), targets)
    torch.testing.assert_close(loss, expected)
    assert torch.all((probabilities(logits, "multi") > 0) & (probabilities(logits, "multi") < 1))
    torch.testing.assert_close(probabilities(logits, "single").sum(-1), torch.ones(B))


def test_config_round_trip_rebuilds_the_same_network() -> None:
    net = make_net(unit="mlp", head="mlp", hidden=8).eval()
    rebuilt = AttentionClusterNet.from_config(net.config).eval()
    rebuilt.load_state_dict(net.state_dict())
    inputs = net_inputs(torch.tensor([True, False, True]))
    torch.testing.assert_close(rebuilt(inputs)[0], net(inputs)[0])


def test_invalid_arguments_are_rejected() -> None:
    with pytest.raises(ValueError, match="unknown attention unit"):
        AttentionCluster(D, N, unit="conv")
    with pytest.raises(ValueError, match="unknown head"):
        make_net(head="deep")
    with pytest.raises(ValueError, match="unknown task"):
        loss_fn("regression")


def test_uniform_dropout_keeps_expectation_and_is_identity_in_eval() -> None:
    torch.manual_seed(6)
    dropout = UniformDropout(0.25)
    x = torch.ones(200, 500)
    dropped = dropout(x)
    kept = dropped != 0
    assert abs(kept.float().mean().item() - 0.75) < 0.01
    torch.testing.assert_close(dropped[kept], torch.full_like(dropped[kept], 1 / 0.75))
    assert torch.equal(dropout.eval()(x), x)
    with pytest.raises(ValueError, match="dropout must be in"):
        UniformDropout(1.0)
