"""The planner's rules on real NIfTI data sets: MRI samples, a synthetic CT, four channels, bad input, the CLI."""

from __future__ import annotations

import math
import shutil

import nibabel as nib
import numpy as np
import pytest
import torch

from unet_med.bundle import cost
from unet_med.bundle.datalists import decathlon_datalist
from unet_med.bundle.errors import BundleError
from unet_med.bundle.fingerprint import compute_fingerprint
from unet_med.bundle.plan import PlanSettings, main, make_plan, network_topology, plan_dataset
from unet_med.bundle.plan_file import load_plan
from unet_med.bundle.planned import trained_plan

FLOPS = 50e9  # a fixed throughput, so that the plans do not depend on this machine's load


def settings(**kwargs) -> PlanSettings:
    return PlanSettings(**{"flops_per_second": FLOPS, **kwargs})


def test_mri_samples_plan(samples, tmp_path):
    output = tmp_path / "models" / "plan.yaml"
    plan, reasons = plan_dataset(samples, output, settings(), workers=1, progress=False)
    assert plan == load_plan(output)
    assert plan["pixdim"] == [1.0, 1.0, 1.0]
    assert plan["in_channels"] == 1 and plan["channel_names"] == ["MRI"] and plan["num_classes"] == 3
    assert plan["normalization"] == [{"scheme": "zscore", "nonzero": False}]
    shapes = np.array([nib.load(case["image"]).shape for case in decathlon_datalist(samples)])
    assert all(p <= m for p, m in zip(plan["patch_size"], np.median(shapes, axis=0)))
    assert plan["patch_size"] == [32, 48, 32]  # the hand-fitted bundles' patch, now derived
    assert plan["network"]["features"] == [16, 32, 64, 128]
    assert plan["batch_size"] * plan["num_samples"] >= 2
    assert plan["cache"]["policy"] == "ram"
    assert (tmp_path / "models" / "fingerprint.json").is_file()
    text = output.read_text()
    assert all(f"# {reason}" in text for reason in ("median spacing of the 10 cases (mm)", reasons["patch_size"]))


def ct_case(shape, seed):
    """A body of soft tissue (about 40 HU) in air (-1000 HU) with bone, and an organ of about 60 HU labelled 1."""
    rng = np.random.default_rng(seed)
    x, y = np.meshgrid(*[np.linspace(-1, 1, n) for n in shape[:2]], indexing="ij")
    body = (x**2 + y**2 < 0.8)[..., None].repeat(shape[2], axis=2)
    image = np.where(body, rng.normal(40, 20, shape), -1000.0)
    image[(np.abs(x) < 0.1) & (y > 0.6)] = 1200.0  # the spine
    label = np.zeros(shape, np.uint8)
    cx, cy = shape[0] // 2 + seed, shape[1] // 3
    label[cx - 12 : cx + 12, cy - 10 : cy + 10, 4:-4] = 1
    image[label == 1] = rng.normal(60, 10, int(label.sum()))
    return image.astype(np.int16), label


CT_SPACINGS = [(0.8, 0.8, 3.0), (0.8, 0.8, 2.5), (0.8, 0.8, 3.0), (0.8, 0.8, 3.5)]


@pytest.fixture
def ct_dataset(write_decathlon):
    cases = [ct_case((128, 128, 24), seed) for seed in range(len(CT_SPACINGS))]
    return write_decathlon(cases, CT_SPACINGS, channel_names=["CT"], name="ct"), cases


def test_ct_plan(ct_dataset, tmp_path):
    folder, cases = ct_dataset
    foreground = np.concatenate([image[label > 0] for image, label in cases]).astype(np.float64)
    fingerprint = compute_fingerprint(folder, workers=2, progress=False, samples=10**6)
    budget = 0.5
    plan, _ = make_plan(fingerprint, settings(device="cuda", memory_budget_gb=budget, ram_budget_gb=0.001))

    (entry,) = plan["normalization"]
    assert entry["scheme"] == "ct"
    np.testing.assert_allclose(entry["clip"], np.percentile(foreground, [0.5, 99.5]), rtol=1e-5)
    assert entry["mean"] == pytest.approx(foreground.mean(), rel=1e-5)
    assert entry["std"] == pytest.approx(foreground.std(), rel=1e-5)

    # Anisotropic (3 mm / 0.8 mm > 3): the coarse axis takes its 10th percentile, not the median.
    assert plan["pixdim"][:2] == [0.8, 0.8]
    assert plan["pixdim"][2] == pytest.approx(np.percentile([s[2] for s in CT_SPACINGS], 10))
    strides, kernels = plan["network"]["strides"], plan["network"]["kernel_size"]
    assert strides[0] == [2, 2, 1] and kernels[0] == [3, 3, 1]  # 2.65 mm > 2 x 0.8 mm: not pooled yet
    assert strides[1][2] == 2 and kernels[1][2] == 3  # 1.6 mm in plane: the coarse axis has caught up
    assert len(plan["network"]["features"]) == len(strides) + 1 == len(kernels)

    patch = plan["patch_size"]
    totals = [math.prod(s[a] for s in strides) for a in range(3)]
    assert all(p % t == 0 for p, t in zip(patch, totals))
    memory = cost.training_memory_bytes(patch, 2, plan["network"]["features"], strides, kernels, 1, 2)
    assert memory <= budget * 1e9 and plan["cost"]["memory_gb"] <= budget
    median = np.median([np.array(c[0].shape) * np.array(s) / np.array(plan["pixdim"])
                        for c, s in zip(cases, CT_SPACINGS)], axis=0)
    assert all(p <= m for p, m in zip(patch, median))
    assert math.prod(patch) < math.prod(median) / 2  # the budget, not the image, set this patch
    assert plan["cache"]["policy"] == "disk"
    unconstrained, _ = make_plan(fingerprint, settings(device="cuda", ram_budget_gb=100))
    assert unconstrained["cache"]["policy"] == "ram"
    assert math.prod(unconstrained["patch_size"]) > math.prod(patch)


def test_a_budget_below_the_smallest_patch_is_refused(ct_dataset):
    folder, _ = ct_dataset
    fingerprint = compute_fingerprint(folder, workers=1, progress=False)
    with pytest.raises(ValueError, match=r"^memory_budget 0.001 GB is too small for .*ct: the smallest") as error:
        make_plan(fingerprint, settings(device="cuda", memory_budget_gb=0.001), folder)
    assert "\n" not in str(error.value)


def test_cpu_plan_is_narrower_and_weighs_time(ct_dataset):
    folder, _ = ct_dataset
    fingerprint = compute_fingerprint(folder, workers=1, progress=False)
    gpu, _ = make_plan(fingerprint, settings(device="cuda"))
    cpu, reasons = make_plan(fingerprint, settings(device="cpu", max_step_gflop=20))
    assert gpu["network"]["features"][0] == 32 and max(gpu["network"]["features"]) <= 320
    assert cpu["network"]["features"][0] == 16 and max(cpu["network"]["features"]) <= 128
    assert cpu["batch_size"] * cpu["num_samples"] == 4 and cpu["cost"]["step_gflop"] <= 20
    assert math.prod(cpu["patch_size"]) < math.prod(gpu["patch_size"])
    assert "to fit a CPU step of 20 GFLOP" in reasons["patch_size"]
    assert cpu["cost"]["step_seconds"] == pytest.approx(cpu["cost"]["step_gflop"] * 1e9 / FLOPS, rel=1e-2)
    assert cpu["inference"]["overlap"] < gpu["inference"]["overlap"]


def test_four_channels(write_decathlon):
    rng = np.random.default_rng(0)
    cases = []
    for _ in range(3):
        image = np.zeros((24, 24, 20, 4), np.float32)
        image[2:22, 2:22, 2:18] = rng.normal([100, 500, 1000, 50], [10, 50, 100, 5], (20, 20, 16, 4))
        label = np.zeros((24, 24, 20), np.uint8)
        label[8:16, 8:16, 6:14] = 1
        cases.append((image, label))
    names = ["FLAIR", "T1w", "T1gd", "T2w"]
    folder = write_decathlon(cases, [(1, 1, 1)] * 3, channel_names=names, name="brats")
    fingerprint = compute_fingerprint(folder, workers=1, progress=False)
    plan, reasons = make_plan(fingerprint, settings())
    assert plan["in_channels"] == 4 and plan["channel_names"] == names
    assert len(plan["normalization"]) == 4
    # Cropping to nonzero keeps (20*20*16)/(24*24*20) = 56% of each image: z-score over the nonzero voxels.
    assert all(entry == {"scheme": "zscore", "nonzero": True} for entry in plan["normalization"])
    assert all(reasons[f"normalization.{i}"].startswith(name) for i, name in enumerate(names))
    means = [stats["mean"] for stats in fingerprint.intensity]
    np.testing.assert_allclose(means, [100, 500, 1000, 50], rtol=0.05)


def test_wildly_different_spacings_are_refused(write_decathlon):
    case = (np.ones((12, 12, 12), np.float32), np.pad(np.ones((4, 4, 4), np.uint8), 4))
    folder = write_decathlon([case] * 4, [(1, 1, 1)] * 3 + [(12, 12, 12)])
    fingerprint = compute_fingerprint(folder, workers=1, progress=False)
    with pytest.raises(ValueError, match=r"case_003\.nii\.gz: spacing 12 x 12 x 12 mm is more than 10x off") as err:
        make_plan(fingerprint, settings(), folder)
    assert "\n" not in str(err.value)


def test_topology_rules():
    strides, kernels = network_topology([160, 160, 48], [0.7, 0.7, 3.0], max_levels=6)
    assert strides[:2] == [[2, 2, 1], [2, 2, 1]]  # 3 mm > 2 x 0.7 and > 2 x 1.4 mm
    assert strides[2] == [2, 2, 2] and kernels[2] == [3, 3, 3]  # 2.8 mm in plane: caught up
    assert kernels[:2] == [[3, 3, 1], [3, 3, 1]]
    assert len(kernels) == 6  # capped
    strides, kernels = network_topology([32, 48, 32], [1.0, 1.0, 1.0], max_levels=6)
    assert strides == [[2, 2, 2]] * 3 and len(kernels) == 4  # 32 -> 4 voxels
    # An axis that stops pooling because its map is small keeps its kernel of 3 and does not make the others
    # look coarse: the CT example's 3 mm grid with 28 slices.
    strides, kernels = network_topology([112, 96, 28], [3.0, 3.0, 3.0], max_levels=6)
    assert strides == [[2, 2, 2], [2, 2, 2], [2, 2, 1], [2, 2, 1]]
    assert kernels == [[3, 3, 3]] * 5


def test_cli_writes_the_plan_and_prints_the_decisions(samples, tmp_path, capsys):
    output = tmp_path / "plan.yaml"
    # A GPU plan: without a GPU here its throughput is assumed, so the test times no network.
    assert main([str(samples), "--output", str(output), "--device", "cuda", "--workers", "1"]) == 0
    printed = capsys.readouterr().out
    assert "patch_size" in printed and "pixdim" in printed and f"plan written to {output}" in printed
    plan = load_plan(output)
    assert plan["device"] == "cuda" and plan["network"]["features"][0] == 32 and plan["cost"]["step_seconds"] > 0


def test_cli_runs_the_data_check_first(samples, tmp_path, capsys):
    folder = tmp_path / "data"
    folder.mkdir()
    (folder / "dataset.json").write_text('{"labels": {"0": "background"}, "training": [{"image": "./a.nii.gz", '
                                         '"label": "./b.nii.gz"}]}')
    assert main([str(folder), "--output", str(tmp_path / "plan.yaml")]) == 1
    assert "missing image" in capsys.readouterr().err
    assert not (tmp_path / "plan.yaml").exists()


def test_cli_never_overwrites_the_plan_of_a_trained_model(samples, planned_models, tmp_path, capsys):
    models = tmp_path / "models"
    shutil.copytree(planned_models["3d"], models)
    before = (models / "plan.yaml").read_bytes()
    assert main([str(samples), "--output", str(models / "plan.yaml"), "--device", "cuda", "--workers", "1"]) == 1
    assert capsys.readouterr().err.splitlines() == [
        f"unet-med: --output {models / 'plan.yaml'}: {models / 'model.pt'} is a trained model and this is its plan "
        f"(evaluation, inference and --resume read it): plan into another folder, e.g. --output "
        f"{tmp_path / 'new_plan' / 'plan.yaml'}; model.pt keeps the plan it was trained with, and --from_model "
        f"{models / 'model.pt'} --output {models / 'plan.yaml'} writes it back"
    ]
    assert (models / "plan.yaml").read_bytes() == before
    # Without its plan file the folder still belongs to the model: no plan it was not trained with is put there.
    (models / "plan.yaml").unlink()
    assert main([str(samples), "--output", str(models / "plan.yaml")]) == 1
    assert not (models / "plan.yaml").exists()


def test_cli_writes_back_the_plan_a_model_was_trained_with(planned_models, tmp_path, capsys):
    models = tmp_path / "models"
    shutil.copytree(planned_models["3d"], models)
    plan_file, model_file = models / "plan.yaml", models / "model.pt"
    replaced = plan_file.read_text().replace("pixdim: [1.0, 1.0, 1.0]", "pixdim: [1.5, 1.5, 1.5]")
    plan_file.write_text(replaced)  # a plan the model was not trained with: evaluation and inference refuse it
    with pytest.raises(BundleError, match=f"--from_model {model_file} --output {plan_file} writes it back"):
        trained_plan(plan_file, model_file, 3)
    assert main(["--from_model", str(model_file), "--output", str(plan_file)]) == 0
    assert f"the plan {model_file} was trained with written to {plan_file}" in capsys.readouterr().out
    assert trained_plan(plan_file, model_file, 3) == torch.load(model_file, weights_only=True)["plan"]
    assert [path.read_text() for path in models.glob("previous/*/plan.yaml")] == [replaced]
    assert main(["--from_model", str(model_file), str(tmp_path)]) == 1  # a data set too: which one is meant?
    assert main([]) == 1
    assert capsys.readouterr().err.splitlines() == [
        "unet-med: give DATASET_DIR to plan from a data set, or --from_model MODEL to write back the plan a trained "
        "model records"] * 2


@pytest.mark.parametrize("where", ["under_a_file", "a_folder"])
def test_cli_refuses_an_output_it_cannot_write_in_one_line(where, samples, tmp_path, capsys):
    (tmp_path / "some_file.txt").write_text("not a folder")
    output = tmp_path / "some_file.txt" / "plan.yaml" if where == "under_a_file" else tmp_path
    assert main([str(samples), "--output", str(output), "--workers", "1"]) == 1
    expected = {
        "under_a_file": f"unet-med: --output {output}: output folder {output.parent} cannot be created: "
                        f"{output.parent} is a file.",
        "a_folder": f"unet-med: --output {output} is a folder: name the plan file, e.g. {output / 'plan.yaml'}",
    }
    assert capsys.readouterr().err.splitlines() == [expected[where]]
    assert (tmp_path / "some_file.txt").read_text() == "not a folder"
