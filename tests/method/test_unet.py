"""The U-Net: any size in, same size out; class conditioning; images processed independently."""

from __future__ import annotations

import pytest
import torch

from medcam_fast.method.unet import UNet, UNetConfig


@pytest.mark.parametrize("size", [(28, 28), (27, 33), (64, 64), (16, 40)])
def test_any_size_in_same_size_out(size):
    net = UNet(UNetConfig(in_channels=3, num_classes=4, width=4, depth=3))
    x = torch.randn(2, 3, *size)
    assert net(x, torch.tensor([0, 3])).shape == (2, 1, *size)


def test_pad_free_core_needs_multiples_and_matches_forward():
    net = UNet(UNetConfig(1, 2, width=4, depth=2))
    x = torch.randn(1, 1, 32, 32)
    t = torch.tensor([1])
    assert torch.equal(net(x, t), net.forward_padded(x, t))


def test_class_embedding_changes_the_mask():
    torch.manual_seed(0)
    net = UNet(UNetConfig(1, 3, width=4, depth=2))
    torch.nn.init.normal_(net.film.weight)
    torch.nn.init.normal_(net.out.weight)
    x = torch.randn(1, 1, 16, 16)
    assert not torch.allclose(net(x, torch.tensor([0])), net(x, torch.tensor([2])))


def test_images_are_processed_independently():
    torch.manual_seed(0)
    net = UNet(UNetConfig(1, 2, width=4, depth=2))
    x = torch.randn(4, 1, 16, 16)
    t = torch.tensor([0, 1, 0, 1])
    batch = net(x, t)
    single = torch.cat([net(x[i : i + 1], t[i : i + 1]) for i in range(4)])
    assert torch.allclose(batch, single, atol=1e-5)


def test_config_round_trip():
    cfg = UNetConfig(3, 8, width=12, depth=2, groups=2, init_bias=-1.0)
    assert UNetConfig.from_dict(cfg.to_dict()) == cfg
    assert cfg.multiple == 4


@pytest.mark.parametrize("size", [(224, 224), (100, 130)])
def test_downsampled_unet_keeps_the_input_size(size):
    from medcam_fast.method.unet import auto_downsample

    cfg = UNetConfig(1, 2, width=4, depth=3, downsample=auto_downsample(max(size)))
    assert cfg.downsample == 4 and cfg.multiple == 32
    net = UNet(cfg)
    assert net(torch.randn(1, 1, *size), torch.tensor([1])).shape == (1, 1, *size)
    assert auto_downsample(64) == 1
