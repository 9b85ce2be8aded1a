"""The figures: Dice per class, the overlay's crop and aspect, and the plots written as PNGs."""

from __future__ import annotations

import numpy as np
import torch
from matplotlib import image as mpimg

from unet_med.bundle.figures import dice_per_class, plot_dice_per_case, plot_learning_curves, plot_overlay


def test_dice_per_class():
    pred = np.array([0, 1, 1, 2, 0])
    label = np.array([0, 1, 2, 2, 0])
    assert dice_per_class(pred, label, 4)[:2] == [2 / 3, 2 / 3]
    assert np.isnan(dice_per_class(pred, label, 4)[2])  # class 3 in neither


def test_overlay_is_cut_to_the_image_and_drawn_in_millimetres(tmp_path):
    image = torch.zeros(1, 40, 40, 5)  # a 20 x 10 voxel image padded with zeros to 40 x 40
    image[0, 10:30, 15:25] = torch.rand(20, 10, 5) + 0.5
    label = torch.zeros(1, 40, 40, 5)
    label[0, 12:20, 16:20, 2], label[0, 20:28, 18:24, 2] = 1, 2
    pred = torch.nn.functional.one_hot(label[0].long(), 3).permute(3, 0, 1, 2)
    square, tall = tmp_path / "square.png", tmp_path / "tall.png"
    plot_overlay(image, pred, square, label, ["Anterior", "Posterior"], spacing=(1.0, 1.0), case="case_001")
    plot_overlay(image, pred, tall, label, ["Anterior", "Posterior"], spacing=(1.0, 4.0), case="case_001")
    square_px, tall_px = mpimg.imread(square), mpimg.imread(tall)
    assert tall_px.shape[0] > square_px.shape[0]  # 4 mm rows make the same slice taller
    grey = np.all(np.abs(square_px[..., :3] - square_px[..., :1]) < 0.02, axis=-1)  # grey or black, not colour
    assert not grey.all()  # the labels are drawn in colour


def test_curves_and_dice_per_case_are_written(tmp_path):
    history = [{"epoch": 1, "loss": 1.0, "a": None, "m": None}, {"epoch": 2, "loss": 0.5, "a": 0.6, "m": 0.6}]
    plot_learning_curves(history, tmp_path / "curves.png", {"Anterior": "a"}, "m")
    plot_dice_per_case(np.array([[0.8, 0.7], [0.9, np.nan]]), ["Anterior", "Posterior"], tmp_path / "dice.png")
    assert mpimg.imread(tmp_path / "curves.png").shape[1] == 1000
    assert mpimg.imread(tmp_path / "dice.png").ndim == 3


def colour_pixels(path, rgb) -> int:
    """How many pixels of the PNG are within a small distance of ``rgb``."""
    image = mpimg.imread(path)[..., :3]
    return int((np.abs(image - np.array(rgb)).max(axis=-1) < 0.05).sum())


def test_a_kept_model_is_a_line_and_no_epoch_is_starred(tmp_path):
    history = [{"epoch": epoch, "loss": 1.0 / epoch, "a": 0.1 * epoch, "m": 0.1 * epoch} for epoch in (1, 2, 3)]
    plot_learning_curves(history, tmp_path / "best.png", {"Anterior": "a"}, "m")
    plot_learning_curves(history, tmp_path / "kept.png", {"Anterior": "a"}, "m", kept_score=0.45)
    gold, goldenrod = (1.0, 0.843, 0.0), (0.855, 0.647, 0.125)  # the star; the kept model's line
    assert colour_pixels(tmp_path / "best.png", gold) > 20 and colour_pixels(tmp_path / "best.png", goldenrod) == 0
    assert colour_pixels(tmp_path / "kept.png", gold) == 0 and colour_pixels(tmp_path / "kept.png", goldenrod) > 100
