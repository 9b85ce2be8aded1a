"""The bundles read the plan: one models/plan.yaml, overridden from the command line, recorded in model.pt."""

from __future__ import annotations

import shutil
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch
import yaml
from ignite.engine import Engine
from monai.bundle import ConfigParser
from monai.data import CacheDataset, PersistentDataset
from monai.transforms import LoadImaged

from unet_med.bundle.errors import BundleError
from unet_med.bundle.io import CheckpointError
from unet_med.bundle.plan import PlanSettings, plan_dataset
from unet_med.bundle.plan_file import load_plan, read_plan_text, render_plan
from unet_med.bundle.planned import (
    PlanRecord,
    PlanWriter,
    cached_dataset,
    check_dataset_against_plan,
    trained_plan,
    training_plan,
)
from unet_med.bundle.transforms import normalize_channels


def bundle_config(bundle: Path, config: str, plan: dict) -> ConfigParser:
    """A bundle config as MONAI's bundle runner reads it, with ``plan`` in place of the file's."""
    parser = ConfigParser()
    parser.read_config(str(bundle / "configs" / config))
    parser["plan"] = plan
    return parser


def copy_models(planned: Path, tmp_path: Path) -> Path:
    return Path(shutil.copytree(planned, tmp_path / "models"))


@pytest.mark.parametrize("dims", ["2d", "3d"])
def test_training_and_inference_preprocess_a_case_bit_identically(dims, bundle_dirs, planned_models, samples):
    plan = load_plan(planned_models[dims] / "plan.yaml")
    loading = bundle_config(bundle_dirs[dims], "train.yaml", plan).get_parsed_content("loading")
    preprocessing = bundle_config(bundle_dirs[dims], "inference.yaml", plan).get_parsed_content("preprocessing")
    case = "hippocampus_001.nii.gz"
    data = {"image": str(samples / "imagesTr" / case), "label": str(samples / "labelsTr" / case)}
    for transform in loading:
        data = transform(data)
    inferred = preprocessing({"image": str(samples / "imagesTr" / case)})["image"]
    trained = data["image"]
    assert all(t >= p for t, p in zip(trained.shape[1:], plan["patch_size"]))  # no padding on this case
    assert trained.dtype == inferred.dtype == torch.float32
    assert torch.equal(trained.as_tensor(), inferred.as_tensor())
    assert abs(float(trained.mean())) < 1e-3 and abs(float(trained.std()) - 1) < 1e-2  # z-scored


def test_an_edited_plan_builds_its_network_and_crop(bundle_dirs, planned_models, tmp_path):
    models = copy_models(planned_models["3d"], tmp_path)
    text = (models / "plan.yaml").read_text()
    text = text.replace("patch_size: [32, 48, 32]", "patch_size: [16, 24, 16]")
    text = text.replace("features: [16, 32, 64, 128]", "features: [8, 16, 32, 64]")
    (models / "plan.yaml").write_text(text)
    parser = ConfigParser()
    parser.read_config(str(bundle_dirs["3d"] / "configs" / "train.yaml"))
    parser["ckpt_dir"] = str(models)
    network = parser.get_parsed_content("network_def")
    assert list(network.features) == [8, 16, 32, 64]
    crop = parser.get_parsed_content("train#augmentation")[0]
    assert list(crop.cropper.spatial_size) == [16, 24, 16]
    assert list(parser.get_parsed_content("validate#inferer").inferer.roi_size) == [16, 24, 16]  # in CPUInferer


def test_overrides_win_and_are_checked(planned_models, tmp_path, samples):
    models = copy_models(planned_models["3d"], tmp_path)
    plan = training_plan(models / "plan.yaml", samples, 3, "cpu",
                         {"patch_size": [24, 32, 24], "epochs": 3, "inference.overlap": None})
    assert plan["patch_size"] == [24, 32, 24] and plan["epochs"] == 3 and plan["inference"]["overlap"] == 0.25
    with pytest.raises(BundleError) as error:
        training_plan(models / "plan.yaml", samples, 3, "cpu", {"patch_size": "[30,48,32]"})
    assert str(error.value) == (f"{models / 'plan.yaml'} with --patch_size: patch_size = [30, 48, 32]: the network's "
                                "strides need multiples of [8, 8, 8] per axis")
    with pytest.raises(BundleError, match=r"plan.yaml: spatial_dims = 3: this is the 2D bundle; delete it"):
        training_plan(models / "plan.yaml", samples, 2, "cpu")


def test_the_effective_plan_is_written_back_with_its_reason(planned_models, tmp_path, samples):
    models = copy_models(planned_models["3d"], tmp_path)
    before, reasons, header = read_plan_text(models / "plan.yaml")
    assert render_plan(before, reasons, header) == (models / "plan.yaml").read_text()  # the file reads back whole
    plan = training_plan(models / "plan.yaml", samples, 3, "cpu", {"num_samples": 1})
    PlanWriter(plan, models / "plan.yaml")(_engine())
    after, reasons, _ = read_plan_text(models / "plan.yaml")
    assert after == plan and list(after) == list(before)
    assert reasons["num_samples"] == "set on the command line (the file had 2)"
    assert reasons["pixdim"] == read_plan_text(planned_models["3d"] / "plan.yaml")[1]["pixdim"]


def _engine():
    return Engine(lambda engine, batch: None)


def test_inference_refuses_a_model_of_another_plan(planned_models, tmp_path):
    models = copy_models(planned_models["3d"], tmp_path)
    plan_file, model_file = models / "plan.yaml", models / "model.pt"
    assert trained_plan(plan_file, model_file, 3, {"inference.sw_batch_size": 8})["inference"]["sw_batch_size"] == 8
    with pytest.raises(BundleError) as error:
        trained_plan(plan_file, model_file, 3, {"patch_size": [16, 16, 16]})
    assert str(error.value).startswith(f"{model_file}: trained with another plan than {plan_file} with --patch_size: "
                                       "patch_size = [32, 48, 32] in the model, [16, 16, 16] in the plan")
    plan_file.write_text(plan_file.read_text().replace("nonzero\": false", "nonzero\": true"))
    with pytest.raises(BundleError, match=r"normalization\.0\.nonzero = false in the model, true in the plan"):
        trained_plan(plan_file, model_file, 3)
    plan_file.unlink()
    with pytest.raises(BundleError, match=r"plan.yaml: no plan file: evaluation and inference read the plan"):
        trained_plan(plan_file, model_file, 3)
    torch.save(torch.load(model_file, weights_only=True)["model"], model_file)
    with pytest.raises(BundleError, match=r"model.pt: records no plan"):
        trained_plan(plan_file, model_file, 3)
    model_file.unlink()
    with pytest.raises(CheckpointError, match=r"no checkpoint file at"):
        trained_plan(plan_file, model_file, 3)


def test_resuming_with_another_plan_is_refused(planned_models):
    plan = load_plan(planned_models["3d"] / "plan.yaml")
    record = PlanRecord(plan, "models/plan.yaml")
    record.load_state_dict({**plan, "epochs": 9})  # a longer run: same model
    with pytest.raises(BundleError, match=r"saved with another plan than models/plan.yaml: pixdim = \[2"):
        record.load_state_dict({**plan, "pixdim": [2.0, 2.0, 2.0]})


def ct_like(shape: tuple[int, int, int], seed: int) -> tuple[np.ndarray, np.ndarray]:
    """A body of soft tissue (40 HU) with a bone (1000 HU) in air (-1024 HU), labels on the tissue."""
    rng = np.random.default_rng(seed)
    image = np.full(shape, -1024.0, dtype=np.float32)
    label = np.zeros(shape, dtype=np.uint8)
    x, y, z = shape
    image[x // 4: 3 * x // 4, y // 4: 3 * y // 4] = 40 + rng.normal(0, 20, (x // 2, y // 2, z))
    label[x // 3: 2 * x // 3, y // 3: 2 * y // 3] = 1
    image[x // 2 - 2: x // 2 + 2, y // 2 - 2: y // 2 + 2] = 3000.0
    return image, label


def test_a_ct_data_set_is_clipped_and_scaled_by_the_plan(write_decathlon, bundle_dirs, tmp_path):
    cases = [ct_like((64, 64, 20), seed) for seed in range(3)]
    folder = write_decathlon(cases, [(0.8, 0.8, 3.0)] * 3, channel_names=["CT"])
    plan, _ = plan_dataset(folder, tmp_path / "models" / "plan.yaml", PlanSettings(), workers=1, progress=False)
    entry = plan["normalization"][0]
    assert entry["scheme"] == "ct" and -1024 < entry["clip"][0] < entry["clip"][1] <= 3000
    preprocessing = bundle_config(bundle_dirs["3d"], "inference.yaml", plan).get_parsed_content("preprocessing")
    image = preprocessing({"image": str(folder / "imagesTr" / "case_000.nii.gz")})["image"]
    low, high = ((value - entry["mean"]) / entry["std"] for value in entry["clip"])
    assert float(image.min()) == pytest.approx(low, rel=1e-4) and float(image.max()) == pytest.approx(high, rel=1e-4)


def test_four_channels_build_four_inputs_each_normalised(write_decathlon, bundle_dirs, tmp_path):
    rng = np.random.default_rng(0)
    cases = []
    for _ in range(2):
        image = np.zeros((40, 40, 24, 4), dtype=np.float32)
        image[5:35, 5:35, 2:22] = rng.normal([100, 500, 2000, 10], [10, 50, 300, 2], (30, 30, 20, 4))
        label = np.zeros((40, 40, 24), dtype=np.uint8)
        label[15:25, 15:25, 8:16] = 1
        cases.append((image, label))
    folder = write_decathlon(cases, [(1.0, 1.0, 1.0)] * 2, channel_names=["FLAIR", "T1w", "T1gd", "T2w"])
    plan, _ = plan_dataset(folder, tmp_path / "models" / "plan.yaml", PlanSettings(), workers=1, progress=False)
    assert plan["in_channels"] == 4 and [entry["scheme"] for entry in plan["normalization"]] == ["zscore"] * 4
    network = bundle_config(bundle_dirs["3d"], "train.yaml", plan).get_parsed_content("network_def")
    assert network(torch.zeros(1, 4, *plan["patch_size"])).shape == (1, plan["num_classes"], *plan["patch_size"])
    image = torch.as_tensor(cases[0][0]).permute(3, 0, 1, 2)
    normalised = normalize_channels(image, [{"scheme": "zscore", "nonzero": True}] * 4)
    body = image[0] != 0
    for channel in normalised:
        assert abs(float(channel[body].mean())) < 1e-4 and abs(float(channel[body].std()) - 1) < 1e-2
        assert float(channel[~body].abs().max()) == 0


def test_plan_file_sections_read_back(planned_models):
    plan, reasons, header = read_plan_text(planned_models["2d"] / "plan.yaml")
    assert plan == yaml.safe_load((planned_models["2d"] / "plan.yaml").read_text())
    assert header.startswith("Planned by python -m unet_med.bundle.plan")
    assert reasons["network.strides"].startswith("per pooling and axis")
    assert reasons["normalization.0"].startswith("MRI: intensities without a unit")


def test_a_plan_for_other_channels_or_classes_is_named(planned_models, samples):
    plan = load_plan(planned_models["3d"] / "plan.yaml")
    for key, value, found in (("num_classes", 4, "has 3 labels"), ("in_channels", 2, "has 1 channels (MRI)")):
        with pytest.raises(BundleError) as error:
            check_dataset_against_plan(samples, {**plan, key: value}, "models/plan.yaml")
        assert str(error.value).startswith(f"models/plan.yaml: {key} = {value}: {samples} {found}")
        assert "delete it to plan again" in str(error.value) and "\n" not in str(error.value)


def test_the_cache_follows_the_plan(planned_models, tmp_path):
    plan = load_plan(planned_models["3d"] / "plan.yaml")
    assert isinstance(cached_dataset([], None, plan, tmp_path), CacheDataset)
    on_disk = {**plan, "cache": {"policy": "disk"}}
    dataset = cached_dataset([], None, on_disk, tmp_path)
    assert isinstance(dataset, PersistentDataset) and dataset.cache_dir.parent == tmp_path
    other = cached_dataset([], None, {**on_disk, "pixdim": [2.0, 2.0, 2.0]}, tmp_path)
    assert other.cache_dir != dataset.cache_dir  # another preprocessing, another folder


def test_the_disk_cache_prepares_a_label_edited_in_place_again(planned_models, write_decathlon, tmp_path):
    plan = {**load_plan(planned_models["3d"] / "plan.yaml"), "cache": {"policy": "disk"}}
    label = np.zeros((8, 8, 8), np.uint8)
    label[2:4], label[5:7] = 1, 2
    folder = write_decathlon([(np.ones((8, 8, 8), np.float32), label)], [(1.0, 1.0, 1.0)],
                             labels=("background", "left", "right"))
    case = {key: str(folder / f"{key}sTr" / "case_000.nii.gz") for key in ("image", "label")}
    loading = LoadImaged(keys=["image", "label"], reader="NibabelReader", image_only=True)
    first = cached_dataset([case], loading, plan, tmp_path / "cache")[0]["label"]
    swapped = np.where(label == 1, 2, np.where(label == 2, 1, 0)).astype(np.uint8)
    nib.save(nib.Nifti1Image(swapped, np.eye(4)), case["label"])  # in place, as an editor saves it
    again = cached_dataset([case], loading, plan, tmp_path / "cache")[0]["label"]
    assert np.array_equal(np.asarray(first), label) and np.array_equal(np.asarray(again), swapped)


@pytest.mark.parametrize("saves_a_better_model", [False, True])
def test_the_plan_file_follows_the_model_it_belongs_to(saves_a_better_model, planned_models, tmp_path, samples):
    models = copy_models(planned_models["3d"], tmp_path)
    plan_file, model_file = models / "plan.yaml", models / "model.pt"
    before = plan_file.read_bytes()
    plan = training_plan(plan_file, samples, 3, "cpu", {"patch_size": [48, 48, 48]})  # a fine-tune's patch
    written_in_epoch_1 = []

    def step(engine, batch):  # stands for the trainer, its validation saving model.pt when it beats the kept one
        written_in_epoch_1.append(plan_file.read_bytes())
        if saves_a_better_model:
            torch.save({"model": torch.load(model_file, weights_only=True)["model"], "plan": plan}, model_file)

    engine = Engine(step)
    PlanWriter(plan, plan_file, model_file).attach(engine)
    engine.run([0], max_epochs=2)
    assert written_in_epoch_1[0] == before  # until a model of this plan is saved, the file is the kept model's
    if saves_a_better_model:
        assert load_plan(plan_file)["patch_size"] == [48, 48, 48]
        assert [path.read_bytes() for path in models.glob("previous/*/plan.yaml")] == [before]
    else:
        assert plan_file.read_bytes() == before and not (models / "previous").exists()
    assert trained_plan(plan_file, model_file, 3)  # evaluation and inference accept the pair


def test_planning_shows_a_table_with_the_command_lines_values(tmp_path, samples, capsys):
    plan = training_plan(tmp_path / "models" / "plan.yaml", samples, 3, "cpu", {"epochs": 16})
    table = capsys.readouterr().out.splitlines()
    header = next(index for index, line in enumerate(table) if line.startswith("decision "))
    rows = table[header:table.index(f"plan written to {tmp_path / 'models' / 'plan.yaml'}")]
    column = rows[0].index("reason")
    assert rows[0].split() == ["decision", "value", "reason"]
    keys = [row.split()[0] for row in rows[1:] if not row.startswith(" ")]
    assert keys[:3] == ["pixdim", "normalization", "patch_size"] and "epochs" in keys
    for row in rows[1:]:  # every reason starts in its column, continued lines too, and none is cut
        assert row[column - 2:column] == "  " and row[column] != " " and not row.endswith("...")
    epochs = next(row for row in rows if row.startswith("epochs "))
    assert epochs.split()[1] == "16" and epochs[column:].startswith("set on the command line (the file had ")
    assert plan["epochs"] == 16


def test_a_one_case_data_set_is_refused_before_planning(tmp_path, write_decathlon):
    volume = np.zeros((8, 8, 8), np.float32)
    volume[2:6, 2:6, 2:6] = 1
    dataset = write_decathlon([(volume, volume.astype(np.uint8))], [(1.0, 1.0, 1.0)])
    with pytest.raises(BundleError) as error:
        training_plan(tmp_path / "models" / "plan.yaml", dataset, 3, "cpu")
    assert str(error.value) == (f"{dataset / 'dataset.json'} lists 1 training case(s): training needs at least 2, "
                                "cases to train on and one to validate on")
    assert not (tmp_path / "models").exists()
