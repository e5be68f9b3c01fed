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
