from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from unet_med.bundle import datalists as data


def test_decathlon_datalist_resolves_pairs_from_folder_and_json(samples):
    from_folder = data.decathlon_datalist(samples)
    assert from_folder == data.decathlon_datalist(samples / "dataset.json")
    assert len(from_folder) == 10
    for item in from_folder:
        assert Path(item["image"]).is_absolute() and Path(item["image"]).is_file()
        assert Path(item["label"]).parent.name == "labelsTr"
        assert Path(item["image"]).name == Path(item["label"]).name


def test_missing_folder_json_or_file_is_named(tmp_path, samples):
    with pytest.raises(ValueError, match=str(tmp_path / "nowhere")):
        data.decathlon_datalist(tmp_path / "nowhere")
    with pytest.raises(ValueError, match=r"dataset\.json"):
        data.decathlon_datalist(tmp_path)
    shutil.copy(samples / "dataset.json", tmp_path / "dataset.json")
    with pytest.raises(ValueError, match=r"hippocampus_001\.nii\.gz"):
        data.decathlon_datalist(tmp_path)
    (tmp_path / "dataset.json").write_text("[1, 2]")
    with pytest.raises(ValueError, match="JSON object"):
        data.load_dataset_json(tmp_path)


def test_split_is_deterministic_and_disjoint(samples):
    datalist = data.decathlon_datalist(samples)
    train, val = data.split_datalist(datalist, val_fraction=0.2, seed=3)
    assert (train, val) == data.split_datalist(datalist, val_fraction=0.2, seed=3)
    assert len(val) == 2 and len(train) == 8
    assert not {d["image"] for d in train} & {d["image"] for d in val}
    assert len(data.split_datalist(datalist, num_val=3)[1]) == 3
    assert data.split_datalist(datalist, seed=0) != data.split_datalist(datalist, seed=1)
    with pytest.raises(ValueError, match="cannot hold out"):
        data.split_datalist(datalist, num_val=10)
    with pytest.raises(ValueError, match="val_fraction"):
        data.split_datalist(datalist, val_fraction=1.5)


def test_train_val_datalists_and_label_names(samples):
    lists = data.train_val_datalists(samples, num_val=4)
    assert [len(lists["training"]), len(lists["validation"])] == [6, 4]
    assert data.label_names(samples) == {0: "background", 1: "Anterior", 2: "Posterior"}


def test_label_names_missing(tmp_path):
    (tmp_path / "dataset.json").write_text(json.dumps({"training": []}))
    with pytest.raises(ValueError, match="labels"):
        data.label_names(tmp_path)


def test_image_datalist_from_folder_glob_and_files(tmp_path, samples):
    folder = data.image_datalist(samples / "imagesTr")
    assert len(folder) == 10 and folder == sorted(folder, key=lambda d: d["image"])
    pattern = data.image_datalist(str(samples / "imagesTr" / "hippocampus_00[13].nii.gz"))
    assert [Path(d["image"]).name for d in pattern] == ["hippocampus_001.nii.gz", "hippocampus_003.nii.gz"]
    assert data.image_datalist([d["image"] for d in pattern]) == pattern
    with pytest.raises(ValueError, match="no images found"):
        data.image_datalist(str(tmp_path / "*.nii.gz"))
    with pytest.raises(ValueError, match="missing"):
        data.image_datalist([str(tmp_path / "x.nii.gz")])


def test_check_output_dir_refuses_input_folder(tmp_path, samples):
    images = data.image_datalist(samples / "imagesTr")
    data.check_output_dir(tmp_path, images)
    with pytest.raises(ValueError, match="holds the input"):
        data.check_output_dir(samples / "imagesTr", images)


def test_check_output_dir_refuses_a_folder_in_a_dicom_series_input(tmp_path, scan_formats):
    series = [{"image": str(scan_formats["dicom"])}]
    data.check_output_dir(tmp_path / "out", series)
    for inside in (scan_formats["dicom"], scan_formats["dicom"] / "predictions"):
        with pytest.raises(ValueError, match=f"output_dir {inside} lies in the DICOM series folder"):
            data.check_output_dir(inside, series)


def test_check_output_dir_refuses_folders_that_cannot_be_written(tmp_path):
    blocker = tmp_path / "predictions"
    blocker.write_text("a file where the folder should go")
    for folder in (blocker, blocker / "nested"):
        with pytest.raises(ValueError, match=f"output folder {folder} cannot be created: {blocker} is a file"):
            data.check_output_dir(folder)
    data.check_output_dir(tmp_path / "new" / "folder")
    assert not (tmp_path / "new").exists()  # checked, not created


@pytest.mark.skipif(not Path("/sys/kernel").is_dir(), reason="needs Linux's sysfs, which nobody may write to")
def test_check_output_dir_names_an_unwritable_folder():
    with pytest.raises(ValueError, match=r"output folder /sys/kernel/unet_med cannot be written: .* in /sys/kernel"):
        data.check_output_dir("/sys/kernel/unet_med")


def test_check_output_dir_refuses_inputs_whose_outputs_would_collide(tmp_path, samples):
    images = data.image_datalist(samples / "imagesTr")[:1]
    twin = tmp_path / "elsewhere" / Path(images[0]["image"]).name.replace(".nii.gz", ".nii")
    twin.parent.mkdir()
    twin.write_bytes(b"")
    with pytest.raises(ValueError, match=f"the inputs {images[0]['image']} and {twin} have the same name"):
        data.check_output_dir(tmp_path / "out", [*images, {"image": str(twin)}])


def test_image_datalist_skips_hidden_files_and_names_an_empty_folder(tmp_path, samples):
    shutil.copy(samples / "imagesTr" / "hippocampus_001.nii.gz", tmp_path)
    (tmp_path / "._hippocampus_001.nii.gz").write_bytes(b"\x00\x05\x16\x07")
    assert [Path(d["image"]).name for d in data.image_datalist(tmp_path)] == ["hippocampus_001.nii.gz"]
    (tmp_path / "empty").mkdir()
    empty = f"in folder {tmp_path / 'empty'}"
    with pytest.raises(ValueError, match=rf"no images \(\.nii, .* DICOM series folders\) {empty}"):
        data.image_datalist(tmp_path / "empty")


def test_image_datalist_lists_every_scan_format_and_dicom_series_folders(scan_formats):
    folder = scan_formats["nifti"].parent
    listed = [Path(d["image"]).name for d in data.image_datalist(folder)]
    assert listed == ["scan.mha", "scan.nii.gz", "scan.nrrd"]  # dicom/ holds a series folder, not a series
    series = [{"image": str(scan_formats["dicom"])}]
    assert data.image_datalist(folder / "dicom") == series  # its series folders
    assert data.image_datalist(scan_formats["dicom"]) == series  # a series folder itself
    assert data.image_datalist([scan_formats["dicom"], scan_formats["nrrd"]])[0] == series[0]


def test_decathlon_datalist_names_every_missing_file(tmp_path, samples):
    shutil.copy(samples / "dataset.json", tmp_path / "dataset.json")
    with pytest.raises(ValueError, match="lists 20 file") as error:
        data.decathlon_datalist(tmp_path)
    assert str(tmp_path / "labelsTr" / "hippocampus_044.nii.gz") in str(error.value)
    assert len(data.decathlon_datalist(tmp_path, check_files=False)) == 10


def test_train_val_datalists_take_listed_cases(samples):
    cases = data.decathlon_datalist(samples)
    assert data.train_val_datalists(cases, num_val=2) == data.train_val_datalists(samples, num_val=2)
