"""The network: shapes, the paper preset's size, attention placement by resolution."""

import pytest
import torch

from palette.config import preset
from palette.unet import AttentionBlock, UNet, UNetConfig, count_parameters

SMALL = dict(image_size=32, base_channels=16, channel_mult=(1, 2, 2), num_res_blocks=1, head_channels=16)


def test_paper_preset_has_552_8M_parameters():
    config = preset("paper").model
    assert (config.image_size, config.in_channels, config.out_channels) == (256, 6, 3)
    assert count_parameters(config) == pytest.approx(552.8e6, rel=0.005)


@pytest.mark.parametrize("channels", [1, 3])
def test_output_has_the_shape_of_the_target(channels):
    net = UNet(UNetConfig(**SMALL, channels=channels, attention_resolutions=(16,)))
    x = torch.randn(2, channels, 32, 32)
    assert net(x, x, torch.rand(2)).shape == (2, channels, 32, 32)


def test_attention_sits_at_the_named_resolutions():
    net = UNet(UNetConfig(**SMALL, attention_resolutions=(16, 8)))
    seen = []
    for module in net.modules():
        if isinstance(module, AttentionBlock):
            module.register_forward_hook(lambda m, inp, out: seen.append(out.shape[-1]))
    x = torch.randn(1, 3, 32, 32)
    net(x, x, torch.rand(1))
    # down: one block at 16 and 8; middle at 8; up: num_res_blocks + 1 at 16 and 8
    assert sorted(seen) == sorted([16, 8, 8] + [8, 8, 16, 16])


def test_no_attention_where_no_resolution_is_named():
    net = UNet(UNetConfig(**SMALL, attention_resolutions=(64,)))
    assert sum(isinstance(m, AttentionBlock) for m in net.modules()) == 1  # the middle block always attends


def test_output_layer_starts_at_zero():
    net = UNet(UNetConfig(**SMALL, attention_resolutions=(8,)))
    x = torch.randn(2, 3, 32, 32)
    assert torch.count_nonzero(net(x, x, torch.rand(2))) == 0


def test_noise_level_changes_the_output():
    torch.manual_seed(0)
    net = UNet(UNetConfig(**SMALL, attention_resolutions=(8,)))
    for p in net.parameters():  # leave the zero initialisation so the output depends on the input
        torch.nn.init.normal_(p, std=0.05)
    x = torch.randn(1, 3, 32, 32)
    assert not torch.allclose(net(x, x, torch.tensor([0.5])), net(x, x, torch.tensor([0.51])))


def test_image_size_must_divide_by_the_levels():
    with pytest.raises(ValueError, match="divisible"):
        UNet(UNetConfig(**{**SMALL, "image_size": 30}))


def test_gradient_checkpointing_gives_the_same_gradients():
    torch.manual_seed(0)
    net = UNet(UNetConfig(**SMALL, attention_resolutions=(8,)))
    for p in net.parameters():
        torch.nn.init.normal_(p, std=0.05)
    x = torch.randn(2, 3, 32, 32)
    grads = []
    for flag in (False, True):
        net.zero_grad()
        net.gradient_checkpointing = flag
        net(x, x, torch.rand(2, generator=torch.Generator().manual_seed(1))).square().mean().backward()
        grads.append(torch.cat([p.grad.flatten() for p in net.parameters()]))
    torch.testing.assert_close(grads[0], grads[1])


def test_low_precision_norm_runs_groupnorm_in_the_autocast_dtype_and_stays_close():
    from palette.unet import GroupNorm

    torch.manual_seed(0)
    norm = GroupNorm(4, 16)
    torch.nn.init.normal_(norm.weight)
    torch.nn.init.normal_(norm.bias)
    x = torch.randn(2, 16, 8, 8) * 3 + 1
    reference = norm(x)
    norm.low_precision = True
    assert torch.equal(norm(x), reference)  # outside autocast the flag changes nothing
    with torch.autocast("cpu", dtype=torch.bfloat16):
        low = norm(x)
        norm.low_precision = False
        default = norm(x)
    # a float32 activation stays float32 under autocast's rule (CUDA autocast also casts bf16 ones up; CPU's does not)
    assert low.dtype == torch.bfloat16 and default.dtype == torch.float32
    torch.testing.assert_close(low.float(), reference, atol=0.05, rtol=0.02)


def test_low_precision_norm_network_matches_the_float32_norm_network_under_autocast():
    torch.manual_seed(0)
    net = UNet(UNetConfig(**SMALL, attention_resolutions=(8,)))
    for p in net.parameters():
        torch.nn.init.normal_(p, std=0.05)
    x, gamma = torch.randn(2, 3, 32, 32), torch.rand(2, generator=torch.Generator().manual_seed(1))
    outputs, grads = [], []
    for flag in (False, True):
        net.zero_grad()
        net.low_precision_norm = flag
        assert net.low_precision_norm is flag
        with torch.autocast("cpu", dtype=torch.bfloat16):
            out = net(x, x, gamma)
        out.float().square().mean().backward()
        outputs.append(out.float())
        grads.append(torch.cat([p.grad.flatten() for p in net.parameters()]))
    assert not torch.equal(outputs[0], outputs[1])  # the flag did change the computation
    assert (outputs[0] - outputs[1]).abs().max() < 0.05 * outputs[0].abs().max()
    assert torch.nn.functional.cosine_similarity(grads[0], grads[1], dim=0) > 0.99


@pytest.mark.parametrize("checkpointing", [False, True])
def test_network_traces_as_one_graph_for_torch_compile(checkpointing):
    """--compile fuses the norms and activations only if dynamo captures the whole network: no graph breaks, with
    gradient checkpointing and the bf16 GroupNorm under autocast (tracing only; nothing is compiled)."""
    import torch._dynamo

    net = UNet(UNetConfig(**SMALL, attention_resolutions=(8,))).train()
    net.gradient_checkpointing = checkpointing
    net.low_precision_norm = True

    def step(x, gamma):
        with torch.autocast("cpu", dtype=torch.bfloat16):
            return net(x, x, gamma)

    torch._dynamo.reset()
    explained = torch._dynamo.explain(step)(torch.randn(2, 3, 32, 32), torch.rand(2))
    assert (explained.graph_count, explained.graph_break_count) == (1, 0), explained.break_reasons
