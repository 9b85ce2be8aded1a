"""The data set fingerprint on real NIfTI files: statistics, RAS reading, channels, the cache."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from unet_med.bundle.datalists import decathlon_datalist
from unet_med.bundle.fingerprint import compute_fingerprint, fingerprint_case


def test_data_samples_statistics_match_the_files(samples):
    fingerprint = compute_fingerprint(samples, workers=2, progress=False)
    cases = decathlon_datalist(samples)
    assert len(fingerprint.cases) == len(cases) == 10
    assert fingerprint.channel_names == ["MRI"] and fingerprint.names_given
    assert fingerprint.labels == [0, 1, 2]
    np.testing.assert_allclose(fingerprint.median_spacing(), [1.0, 1.0, 1.0])
    foreground = []
    for case, found in zip(cases, fingerprint.cases):
        image = nib.as_closest_canonical(nib.load(case["image"]))
        label = np.asarray(nib.as_closest_canonical(nib.load(case["label"])).dataobj)
        data = np.asarray(image.dataobj, dtype=np.float64)
        assert found.shape == list(data.shape) and found.channels == 1
        assert found.label_counts == {str(int(v)): int((label == v).sum()) for v in np.unique(label)}
        foreground.append(data[label > 0])
    foreground = np.concatenate(foreground)
    stats = fingerprint.intensity[0]
    assert stats["mean"] == pytest.approx(foreground.mean(), rel=1e-9)
    assert stats["std"] == pytest.approx(foreground.std(), rel=1e-6)
    # Every hippocampus has fewer foreground voxels than the sample size: the percentiles are exact.
    assert stats["percentile_99_5"] == pytest.approx(np.percentile(foreground, 99.5), rel=1e-5)


def test_a_case_is_read_in_ras_with_its_cropped_shape(tmp_path):
    image = np.zeros((10, 12, 8), np.float32)
    image[2:5, 3:9, 1:7] = 5.0
    label = (image > 0).astype(np.uint8)
    lps = np.diag([-0.5, -0.7, 2.0, 1.0])  # LPS: x and y flipped, spacing from the affine's columns
    for name, array in (("image", image), ("label", label)):
        nib.save(nib.Nifti1Image(array, lps), tmp_path / f"{name}.nii.gz")
    case = fingerprint_case({"image": str(tmp_path / "image.nii.gz"), "label": str(tmp_path / "label.nii.gz")})
    assert case.orientation == "LPS"
    assert case.spacing == pytest.approx([0.5, 0.7, 2.0])
    assert case.cropped_shape == [3, 6, 6]
    assert case.foreground_count == 3 * 6 * 6 and case.foreground_sum == [5.0 * 108]


def _case(shape, channels=1, seed=0):
    rng = np.random.default_rng(seed)
    image = rng.normal(100, 10, (*shape, channels) if channels > 1 else shape).astype(np.float32)
    label = np.zeros(shape, np.uint8)
    label[2:6, 2:6, 2:6] = 1
    return image, label


def test_a_case_with_other_channels_is_refused(write_decathlon):
    folder = write_decathlon([_case((10, 10, 10)), _case((10, 10, 10), channels=2)], [(1, 1, 1)] * 2)
    with pytest.raises(ValueError, match=r"case_001\.nii\.gz: 2 channel\(s\), but the 1 channel names") as error:
        compute_fingerprint(folder, workers=1, progress=False)
    assert "\n" not in str(error.value)


def test_no_channel_names_warns_and_names_them(write_decathlon):
    folder = write_decathlon([_case((10, 10, 10), channels=2)] * 2, [(1, 1, 1)] * 2, channel_names=None)
    with pytest.warns(UserWarning, match="dataset.json: no 'modality' or 'channel_names'"):
        fingerprint = compute_fingerprint(folder, workers=1, progress=False)
    assert fingerprint.channel_names == ["channel_0", "channel_1"] and not fingerprint.names_given


def test_nnunet_channel_names_are_read(write_decathlon):
    folder = write_decathlon([_case((10, 10, 10))] * 2, [(1, 1, 1)] * 2, channel_names=None)
    description = json.loads((folder / "dataset.json").read_text())
    (folder / "dataset.json").write_text(json.dumps({**description, "channel_names": {"0": "CT"}}))
    assert compute_fingerprint(folder, workers=1, progress=False).channel_names == ["CT"]


def test_the_cache_is_reused_and_invalidated_by_a_changed_file(samples, tmp_path):
    folder = tmp_path / "data"
    shutil.copytree(samples, folder)
    cache = tmp_path / "models" / "fingerprint.json"
    first = compute_fingerprint(folder, cache, workers=1, progress=False)
    stored = json.loads(cache.read_text())
    assert stored["fingerprint"]["summary"]["spacing"]["percentile_50"] == [1.0, 1.0, 1.0]
    stored["fingerprint"]["intensity"][0]["mean"] = -123.0  # a mark only a cache hit can return
    cache.write_text(json.dumps(stored))
    assert compute_fingerprint(folder, cache, workers=1, progress=False).intensity[0]["mean"] == -123.0

    image = Path(decathlon_datalist(folder)[3]["image"])
    stat = image.stat()
    os.utime(image, ns=(stat.st_atime_ns, stat.st_mtime_ns + 1_000_000_000))
    again = compute_fingerprint(folder, cache, workers=1, progress=False)
    assert again.intensity[0]["mean"] == pytest.approx(first.intensity[0]["mean"])
    assert json.loads(cache.read_text())["fingerprint"]["intensity"][0]["mean"] != -123.0
