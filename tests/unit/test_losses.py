import pytest
import torch
from monai.losses import DiceCELoss
from torch.nn.functional import cross_entropy

from unet_med import WeightedCELoss, WeightedDiceCELoss


def sample(spatial=(6, 5, 4), classes=3):
    torch.manual_seed(0)
    logits = torch.randn(2, classes, *spatial, requires_grad=True)
    target = torch.randint(0, classes, (2, 1, *spatial))
    return logits, target


def test_unit_weights_give_plain_cross_entropy():
    logits, target = sample()
    plain = cross_entropy(logits, target[:, 0])
    torch.testing.assert_close(
        WeightedCELoss()(logits, target, torch.ones_like(target, dtype=torch.float)), plain
    )
    torch.testing.assert_close(WeightedCELoss()(logits, target), plain)


def test_weights_scale_each_voxel():
    logits, target = sample()
    weight = torch.rand(2, 1, 6, 5, 4) * 5
    per_voxel = cross_entropy(logits, target[:, 0], reduction="none")
    torch.testing.assert_close(WeightedCELoss("none")(logits, target, weight), per_voxel * weight[:, 0])
    torch.testing.assert_close(
        WeightedCELoss("sum")(logits, target, weight), (per_voxel * weight[:, 0]).sum()
    )
    doubled = WeightedCELoss()(logits, target, 2 * weight)
    torch.testing.assert_close(doubled, 2 * WeightedCELoss()(logits, target, weight))


def test_weight_packed_in_the_target_as_a_trainer_passes_it():
    logits, target = sample()
    weight = torch.rand(2, 1, 6, 5, 4)
    packed = torch.cat([target.float(), weight], dim=1)
    for loss in (WeightedCELoss(), WeightedDiceCELoss()):
        torch.testing.assert_close(loss(logits, packed), loss(logits, target, weight))
    with pytest.raises(ValueError, match="not both"):
        WeightedCELoss()(logits, packed, weight)


def test_gradient_flows_and_zero_weight_voxels_get_none():
    logits, target = sample(spatial=(8, 8), classes=2)
    weight = torch.ones(2, 1, 8, 8)
    weight[:, :, :4] = 0
    WeightedDiceCELoss(lambda_dice=0.0)(logits, target, weight).backward()
    assert logits.grad[:, :, 4:].abs().sum() > 0
    assert torch.all(logits.grad[:, :, :4] == 0)


def test_dice_ce_with_unit_weights_matches_monai():
    logits, target = sample()
    expected = DiceCELoss(to_onehot_y=True, softmax=True, lambda_dice=0.7, lambda_ce=1.3)(logits, target)
    ours = WeightedDiceCELoss(lambda_dice=0.7, lambda_ce=1.3)(logits, target, torch.ones(2, 1, 6, 5, 4))
    torch.testing.assert_close(ours, expected)
