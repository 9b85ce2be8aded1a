from __future__ import annotations

import shutil
from collections.abc import Sequence
from pathlib import Path

import highdicom
import nibabel as nib
import numpy as np
import pydicom
import pytest
import SimpleITK as sitk  # noqa: N813 (SimpleITK's own convention)
from monai.transforms import Compose, EnsureChannelFirstd, LoadImaged, SaveImaged

import unet_med
from unet_med.bundle.dicom_seg import SaveDicomSegd, check_dicom_seg_inputs, seg_path, write_dicom_seg
from unet_med.bundle.io import AtomicNibabelWriter
from unet_med.bundle.readers import SimpleITKReader, read_scan

CLASSES = ["Anterior", "Posterior"]


@pytest.fixture
def series(scan_formats, tmp_path) -> Path:
    """The DICOM series of ``scan_formats``, its files renamed so that their name order is not their slice order."""
    folder = tmp_path / "series"
    folder.mkdir()
    files = sorted(scan_formats["dicom"].iterdir())
    for file, new_index in zip(files, np.random.default_rng(0).permutation(len(files))):
        shutil.copyfile(file, folder / f"im{new_index:03d}.dcm")
    return folder


@pytest.fixture
def series_grid(series) -> tuple[np.ndarray, np.ndarray]:
    """``(shape, affine)`` of the series as the bundles read it: ``x, y, z`` voxels and their RAS affine."""
    array, meta = SimpleITKReader().get_data(read_scan(series))
    return np.asarray(array.shape), meta["affine"]


def random_labels(shape, seed: int = 1) -> np.ndarray:
    """Labels 0..2 at random: any misplaced, transposed or flipped frame differs from them."""
    return np.random.default_rng(seed).integers(0, 3, size=tuple(shape), dtype=np.uint8)


def seg_labels_by_slice(seg_file: Path, series: Path) -> dict[int, np.ndarray]:
    """The SEG's label frame of every source slice, keyed by the slice's z index in the series as SimpleITK
    places it (from the slice's own ImagePositionPatient, not from its file)."""
    seg = highdicom.seg.segread(seg_file)
    image = read_scan(series)
    frames = {}
    for file in series.iterdir():
        source = pydicom.dcmread(file, stop_before_pixels=True)
        i, j, k = image.TransformPhysicalPointToIndex([float(v) for v in source.ImagePositionPatient])
        assert (i, j) == (0, 0)
        frames[k] = seg.get_pixels_by_source_instance(
            [source.SOPInstanceUID], combine_segments=True, assert_missing_frames_are_empty=True
        )[0]
    return frames


def test_the_seg_holds_the_label_map_voxel_for_voxel_and_references_the_series(series, series_grid, tmp_path):
    shape, _ = series_grid
    labels = random_labels(shape)
    out = write_dicom_seg(labels, series, tmp_path / "case_seg.dcm", CLASSES)
    assert [path.name for path in tmp_path.iterdir() if path.is_file()] == ["case_seg.dcm"]  # no partial file left

    frames = seg_labels_by_slice(out, series)
    assert sorted(frames) == list(range(shape[2]))
    for k, frame in frames.items():
        np.testing.assert_array_equal(frame, labels[:, :, k].T, err_msg=f"slice {k}")  # rows are y, columns x

    seg = pydicom.dcmread(out)
    source = pydicom.dcmread(next(series.iterdir()), stop_before_pixels=True)
    assert seg.SegmentationType == "BINARY"
    assert seg.ReferencedSeriesSequence[0].SeriesInstanceUID == source.SeriesInstanceUID
    assert (seg.StudyInstanceUID, seg.FrameOfReferenceUID) == (source.StudyInstanceUID, source.FrameOfReferenceUID)
    assert [segment.SegmentLabel for segment in seg.SegmentSequence] == CLASSES
    for segment in seg.SegmentSequence:
        assert segment.SegmentAlgorithmType == "AUTOMATIC"
        assert segment.SegmentedPropertyCategoryCodeSequence[0].CodeMeaning == "Tissue"
        algorithm = segment.SegmentationAlgorithmIdentificationSequence[0]
        assert (algorithm.AlgorithmName, algorithm.AlgorithmVersion) == ("unet-med", unet_med.__version__)

    # Each frame lies where its source slice lies.
    sources = [pydicom.dcmread(file, stop_before_pixels=True) for file in series.iterdir()]
    positions = {dataset.SOPInstanceUID: dataset.ImagePositionPatient for dataset in sources}
    for frame in seg.PerFrameFunctionalGroupsSequence:
        uid = frame.DerivationImageSequence[0].SourceImageSequence[0].ReferencedSOPInstanceUID
        assert frame.PlanePositionSequence[0].ImagePositionPatient == positions[uid]


def test_a_label_map_in_another_orientation_gives_the_same_frames(series, series_grid, tmp_path):
    shape, affine = series_grid
    labels = random_labels(shape, seed=2)
    canonical = nib.as_closest_canonical(nib.Nifti1Image(labels, affine))
    turned = np.asarray(canonical.dataobj)
    assert turned.shape != labels.shape or not np.array_equal(turned, labels), "the test needs another axis order"

    write_dicom_seg(labels, series, tmp_path / "as_read.dcm", CLASSES)
    write_dicom_seg(turned, series, tmp_path / "turned.dcm", CLASSES, affine=canonical.affine)
    as_read, from_turned = seg_labels_by_slice(tmp_path / "as_read.dcm", series), seg_labels_by_slice(
        tmp_path / "turned.dcm", series
    )
    for k in as_read:
        np.testing.assert_array_equal(from_turned[k], as_read[k])


def test_a_label_map_off_the_series_grid_or_with_unnamed_labels_is_refused(series, series_grid, tmp_path):
    shape, affine = series_grid
    labels = random_labels(shape)
    shifted = affine.copy()
    shifted[:3, 3] += affine[:3, :3] @ [0.5, 0.0, 0.0]
    with pytest.raises(ValueError, match=r"35 x 51 x 35 voxels\) is not on the grid .* lies off its voxel centres"):
        write_dicom_seg(labels, series, tmp_path / "x.dcm", CLASSES, affine=shifted)
    with pytest.raises(ValueError, match="lies outside it"):
        write_dicom_seg(labels[:, :, :-1], series, tmp_path / "x.dcm", CLASSES, affine=affine)
    with pytest.raises(ValueError, match=r"holds labels \[0, 1, 2\]: expected whole numbers 0 to 1"):
        write_dicom_seg(labels, series, tmp_path / "x.dcm", CLASSES[:1])
    assert not list(tmp_path.glob("*.dcm"))


def test_dicom_seg_inputs_must_be_series_with_a_frame_of_reference(series, scan_formats, tmp_path):
    nifti = {"image": str(scan_formats["nifti"])}
    check_dicom_seg_inputs([nifti], "false")
    check_dicom_seg_inputs([{"image": str(series)}], "true")
    with pytest.raises(ValueError, match=f"--dicom_seg true: {scan_formats['nifti']} is not a DICOM series folder"):
        check_dicom_seg_inputs([{"image": str(series)}, nifti], True)

    unplaced = tmp_path / "unplaced"
    unplaced.mkdir()
    for file in series.iterdir():
        dataset = pydicom.dcmread(file)
        del dataset.FrameOfReferenceUID
        dataset.save_as(unplaced / file.name)
    with pytest.raises(ValueError, match=f"{unplaced}: slice im\\d+.dcm has no FrameOfReferenceUID"):
        check_dicom_seg_inputs([{"image": str(unplaced)}], "true")


def anonymised_jpeg2000_copy(series: Path, folder: Path, blank: Sequence[str]) -> Path:
    """The series recompressed to JPEG 2000 with the data set's ``blank`` elements emptied and its file meta kept,
    as public anonymised series come."""
    folder.mkdir()
    writer = sitk.ImageFileWriter()
    writer.KeepOriginalImageUIDOn()
    writer.SetUseCompression(True)
    writer.SetCompressor("JPEG2000")
    for file in series.iterdir():
        writer.SetFileName(str(folder / file.name))
        writer.Execute(sitk.ReadImage(str(file)))
    for file in folder.iterdir():
        dataset = pydicom.dcmread(file)
        for name in blank:
            setattr(dataset, name, "")
        dataset.save_as(file)
    return folder


def test_an_anonymised_series_with_blank_sop_uids_takes_them_from_the_file_meta(series, series_grid, tmp_path):
    anonymised = anonymised_jpeg2000_copy(series, tmp_path / "anonymised", ["SOPClassUID", "SOPInstanceUID"])
    source = pydicom.dcmread(next(anonymised.iterdir()))
    assert source.file_meta.TransferSyntaxUID == pydicom.uid.JPEG2000Lossless and source.SOPClassUID == ""
    labels = random_labels(series_grid[0])
    out = write_dicom_seg(labels, anonymised, tmp_path / "case_seg.dcm", CLASSES)

    referenced = pydicom.dcmread(out).ReferencedSeriesSequence[0].ReferencedInstanceSequence
    by_file = {pydicom.dcmread(file).file_meta.MediaStorageSOPInstanceUID: file for file in anonymised.iterdir()}
    assert sorted(item.ReferencedSOPInstanceUID for item in referenced) == sorted(by_file)
    assert {item.ReferencedSOPClassUID for item in referenced} == {source.file_meta.MediaStorageSOPClassUID}
    frames = highdicom.seg.segread(out)
    reference_frames = seg_labels_by_slice(write_dicom_seg(labels, series, tmp_path / "plain_seg.dcm", CLASSES), series)
    image = read_scan(anonymised)
    for uid, file in by_file.items():
        k = image.TransformPhysicalPointToIndex([float(v) for v in pydicom.dcmread(file).ImagePositionPatient])[2]
        frame = frames.get_pixels_by_source_instance([uid], combine_segments=True)[0]
        np.testing.assert_array_equal(frame, reference_frames[k], err_msg=f"slice {k}")


def test_a_slice_without_any_sop_class_uid_is_refused(series, tmp_path):
    anonymised = tmp_path / "anonymised"
    anonymised.mkdir()
    for file in series.iterdir():
        dataset = pydicom.dcmread(file)
        dataset.SOPClassUID = ""
        del dataset.file_meta.MediaStorageSOPClassUID
        dataset.save_as(anonymised / file.name, enforce_file_format=False)
    with pytest.raises(ValueError, match=r"anonymised: slice im\d+\.dcm has no SOPClassUID, neither in its data set "
                       r"nor in its file meta \(MediaStorageSOPClassUID\)"):
        check_dicom_seg_inputs([{"image": str(anonymised)}], "true")


def test_save_dicom_segd_writes_beside_the_nifti_what_the_nifti_holds(series, tmp_path):
    out = tmp_path / "out"
    load = Compose([LoadImaged("image", reader=SimpleITKReader, image_only=True), EnsureChannelFirstd("image")])
    data = load({"image": str(series)})
    image = data["image"]
    data["pred"] = image.clone()
    data["pred"].array = random_labels(image.shape, seed=3)
    unsaved = {"pred": data["pred"].clone()}
    save_nifti = SaveImaged(
        "pred", output_dir=out, output_postfix="seg", output_dtype=np.uint8, resample=False, separate_folder=False,
        writer=AtomicNibabelWriter, savepath_in_metadict=True,
    )

    SaveDicomSegd("pred", CLASSES, enabled="false")(save_nifti(dict(data)))
    assert [path.name for path in out.iterdir()] == ["series_seg.nii.gz"]
    SaveDicomSegd("pred", CLASSES, enabled="true")(save_nifti(dict(data)))
    assert sorted(path.name for path in out.iterdir()) == ["series_seg.dcm", "series_seg.nii.gz"]
    assert seg_path(out / "series_seg.nii.gz") == out / "series_seg.dcm"

    nifti = np.asarray(nib.load(out / "series_seg.nii.gz").dataobj)
    for k, frame in seg_labels_by_slice(out / "series_seg.dcm", series).items():
        np.testing.assert_array_equal(frame, nifti[:, :, k].T)

    with pytest.raises(ValueError, match="put it after SaveImaged"):
        SaveDicomSegd("pred", CLASSES)(unsaved)
    with pytest.raises(ValueError, match=r"expected a \(1, X, Y, Z\) label map, got shape \(3, 35, 51, 35\)"):
        SaveDicomSegd("pred", CLASSES)({"pred": data["pred"].repeat(3, 1, 1, 1)})
