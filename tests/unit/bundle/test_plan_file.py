"""The plan file: readable, editable, overridable, and refused with one line when edited into nonsense."""

from __future__ import annotations

import re

import pytest
import yaml

from unet_med.bundle.plan import PlanSettings, plan_dataset
from unet_med.bundle.plan_file import load_plan, render_plan


@pytest.fixture(scope="module")
def written(samples, tmp_path_factory):
    """A plan of data_samples, written once: ``(path, text)``."""
    path = tmp_path_factory.mktemp("plan") / "plan.yaml"
    plan_dataset(samples, path, PlanSettings(flops_per_second=50e9), workers=1, progress=False)
    return path, path.read_text()


def edited(tmp_path, text, key, value):
    """The plan with one line's value replaced, its comment kept."""
    pattern = re.compile(rf"^(\s*{re.escape(key)}: )[^#\n]*?(  #.*)?$", re.MULTILINE)
    assert pattern.search(text), key
    path = tmp_path / "edited.yaml"
    path.write_text(pattern.sub(lambda m: f"{m.group(1)}{value}{m.group(2) or ''}", text, count=1))
    return path


def test_every_value_has_a_reason(written):
    _, text = written
    for line in text.splitlines():
        if line.startswith("#"):
            continue
        assert "  # " in line, line


def test_render_loads_back_into_plain_values():
    plan = {"a": [1, 2.5], "b": {"c": "x", "d": None}, "e": [{"scheme": "ct", "clip": [-1.0, 2.0]}]}
    text = render_plan(plan, {"a": "why a", "b.c": "why c", "e.0": "why e"}, header="title")
    assert yaml.safe_load(text) == plan
    assert "a: [1, 2.5]  # why a" in text and '- {"scheme": "ct", "clip": [-1.0, 2.0]}  # why e' in text


def test_an_edited_plan_is_honoured_and_an_override_wins(written, tmp_path):
    path, text = written
    path = edited(tmp_path, text, "patch_size", "[16, 24, 16]")
    assert load_plan(path)["patch_size"] == [16, 24, 16]
    plan = load_plan(path, {"patch_size": "[24, 24, 24]", "network.features": [8, 16, 32, 64], "epochs": 3})
    assert plan["patch_size"] == [24, 24, 24] and plan["network"]["features"] == [8, 16, 32, 64]
    assert plan["epochs"] == 3


@pytest.mark.parametrize(
    ("key", "value", "message"),
    [
        ("pixdim", "[1.0, -1.0, 1.0]", r"pixdim = \[1.0, -1.0, 1.0\]: must be 3 positive spacings in mm"),
        ("patch_size", "[30, 48, 32]", r"patch_size = \[30, 48, 32\]: the network's strides need multiples of "
                                       r"\[8, 8, 8\] per axis"),
        ("strides", "[[2, 2, 2], [2, 2, 2]]", r"network.strides = .*: needs one entry per pooling"),
        ("kernel_size", "[[3, 3, 3], [3, 3, 3], [3, 3, 3], [2, 3, 3]]", r"network.kernel_size = .*: each entry must "
                                                                        r"be an odd int"),
        ("batch_size", "0", r"batch_size = 0: must be a positive integer"),
        ("overlap", "1.5", r"inference.overlap = 1.5: must lie in \[0, 1\)"),
        ("policy", "swap", r'cache.policy = "swap": must be one of ram, disk'),
        ("version", "7", r"version = 7: this unet-med reads plan version 1"),
        ("median_spacing", "[1.0, 1.0]", r"fingerprint.median_spacing = \[1.0, 1.0\]: must be 3 positive spacings"),
    ],
)
def test_nonsense_is_refused_in_one_line(written, tmp_path, key, value, message):
    path, text = written
    path = edited(tmp_path, text, key, value)
    with pytest.raises(ValueError, match=rf"^{re.escape(str(path))}: {message}") as error:
        load_plan(path)
    assert "\n" not in str(error.value)


def test_unknown_normalisation_is_refused(written, tmp_path):
    _, text = written
    bad = tmp_path / "bad.yaml"
    bad.write_text(text.replace('"scheme": "zscore"', '"scheme": "minmax"'))
    with pytest.raises(ValueError, match=rf'^{re.escape(str(bad))}: normalization.0.scheme = "minmax": unknown'):
        load_plan(bad)


def test_a_plan_without_its_fingerprint_still_loads_and_a_broken_one_is_named(written, tmp_path):
    _, text = written
    old = tmp_path / "old.yaml"
    old.write_text(text[: text.index("fingerprint:")])  # planned before plans recorded their data
    assert "fingerprint" not in load_plan(old)
    broken = tmp_path / "broken.yaml"
    broken.write_text(text.replace('"median": ', '"middle": '))
    with pytest.raises(ValueError, match=rf"^{re.escape(str(broken))}: fingerprint.intensity.0 = .*: must give "
                                         "percentile_00_5, median, percentile_99_5 as numbers$"):
        load_plan(broken)


def test_bad_files_and_overrides_are_refused(written, tmp_path):
    path, _ = written
    with pytest.raises(ValueError, match=r"no plan file: run python -m unet_med.bundle.plan"):
        load_plan(tmp_path / "missing.yaml")
    with pytest.raises(ValueError, match=r"cannot override 'network.width': the plan has no such value"):
        load_plan(path, {"network.width": 3})
    broken = tmp_path / "broken.yaml"
    broken.write_text("patch_size: [32, 48\n")
    with pytest.raises(ValueError, match=r"broken.yaml: not valid YAML"):
        load_plan(broken)
    listed = tmp_path / "list.yaml"
    listed.write_text("- 1\n")
    with pytest.raises(ValueError, match=r"list.yaml: a plan is a YAML mapping, found list"):
        load_plan(listed)
