"""The bundles' configs as MONAI's tools read them: metadata, network, workflow properties, output checks."""

from __future__ import annotations

import json

import pytest
import torch
import yaml
from monai.bundle import ConfigParser, ConfigWorkflow, verify_metadata, verify_net_in_out

from unet_med.inferers import MirroredInferer

BUNDLE_NAMES = ["2d", "3d"]
CONFIGS = ["train.yaml", "evaluate.yaml", "inference.yaml", "multi_gpu_train.yaml", "multi_gpu_evaluate.yaml"]


@pytest.mark.parametrize("name", BUNDLE_NAMES)
def test_inference_refuses_output_beside_inputs(name, bundle_dirs, samples, planned_models):
    configs = bundle_dirs[name] / "configs"
    workflow = ConfigWorkflow(
        config_file=str(configs / "inference.yaml"),
        workflow_type="infer",
        bundle_root=str(bundle_dirs[name]),
        ckpt_dir=str(planned_models[name]),
        output_dir=str(samples / "imagesTr"),
        datalist=str(samples / "imagesTr" / "hippocampus_00[13].nii.gz"),
    )
    with pytest.raises(RuntimeError) as error:
        workflow.initialize()
    assert "holds the input" in str(error.value.__cause__)


@pytest.mark.filterwarnings("ignore:No hash value")
@pytest.mark.parametrize("name", BUNDLE_NAMES)
def test_metadata_verifies_against_project_schema(name, bundle_dirs):
    meta = bundle_dirs[name] / "configs" / "metadata.json"
    verify_metadata(meta_file=str(meta), filepath=str(bundle_dirs[name].parent / "schema" / "meta_schema.json"))
    content = json.loads(meta.read_text())
    assert content["version"] in content["changelog"]
    assert content["network_data_format"]["outputs"]["pred"]["channel_def"] == {
        "0": "background",
        "1": "anterior",
        "2": "posterior",
    }
    assert len(content["network_data_format"]["inputs"]["image"]["spatial_shape"]) == int(name[0])


@pytest.mark.parametrize("name", BUNDLE_NAMES)
def test_network_matches_metadata(name, bundle_dirs, planned_models):
    configs = bundle_dirs[name] / "configs"
    verify_net_in_out(
        net_id="network_def",
        meta_file=str(configs / "metadata.json"),
        config_file=str(configs / "inference.yaml"),
        device="cpu",
        n=1,
        any=1,
        ckpt_dir=str(planned_models[name]),
    )


@pytest.mark.parametrize("name", BUNDLE_NAMES)
def test_network_def_same_in_train_and_inference(name, bundle_dirs):
    configs = bundle_dirs[name] / "configs"
    train, infer = (yaml.safe_load((configs / f).read_text()) for f in ("train.yaml", "inference.yaml"))
    assert train["network_def"] == infer["network_def"]
    assert train["network_def"]["_target_"] == "unet_med.networks.UNet"


@pytest.mark.parametrize("name", BUNDLE_NAMES)
@pytest.mark.parametrize(("workflow_type", "config"), [("train", "train.yaml"), ("infer", "inference.yaml")])
def test_workflow_has_required_properties(name, workflow_type, config, tmp_path, bundle_dirs, planned_models):
    configs = bundle_dirs[name] / "configs"
    workflow = ConfigWorkflow(
        config_file=str(configs / config),
        meta_file=str(configs / "metadata.json"),
        logging_file=str(configs / "logging.conf"),
        workflow_type=workflow_type,
        bundle_root=str(bundle_dirs[name]),
        ckpt_dir=str(planned_models[name]),
        output_dir=str(tmp_path / "out"),
    )
    workflow.initialize()
    assert not workflow.check_properties()


def test_both_bundles_check_save_and_resume_alike(bundle_dirs):
    def entries(dims: str) -> dict:
        path = bundle_dirs[dims] / "configs" / "train.yaml"
        config = yaml.safe_load(path.read_text())
        names = ("dataset_cases", "datalists", "resume", "latest_checkpoint", "training_state", "initialize")
        handlers = config["train"]["handlers"]
        return {name: config[name] for name in names} | {
            "resume loader": handlers[0],
            "state saver": handlers[-1],
            "best model saver": config["validate"]["best_model_saver"],
            "best model saver listed": "@validate#best_model_saver" in config["validate"]["handlers"],
        }

    assert entries("3d") == entries("2d")
    assert entries("3d")["resume loader"]["_target_"] == "unet_med.bundle.handlers.WeightsOnlyCheckpointLoader"
    assert entries("3d")["state saver"]["_target_"] == "unet_med.bundle.handlers.TrainingStateSaver"


@pytest.mark.parametrize("config", CONFIGS)
def test_both_bundles_share_their_configs_but_the_dimensions(config, bundle_dirs):
    """One source: the plan carries what differs, so the configs differ only in spatial_dims and the header."""
    files = {dims: (bundle_dirs[dims] / "configs" / config).read_text().splitlines() for dims in BUNDLE_NAMES}
    assert len(files["2d"]) == len(files["3d"])
    differing = [(two, three) for two, three in zip(files["2d"], files["3d"]) if two != three]
    allowed = [("spatial_dims: 2", "spatial_dims: 3")]
    comments = [pair for pair in differing if pair[0].startswith("#") and pair[1].startswith("#")]
    assert all(pair in allowed or pair in comments for pair in differing), differing
    assert config not in ("train.yaml", "inference.yaml") or allowed[0] in differing


@pytest.mark.parametrize(("name", "axes"), [("2d", (0,)), ("3d", (0,))])
@pytest.mark.parametrize("configs", [["inference.yaml"], ["train.yaml", "evaluate.yaml"]])
def test_tta_mirrors_the_network_axes_around_the_configured_inferer(name, axes, configs, bundle_dirs, planned_models):
    """--tta true mirrors the axis training flips, around the sliding-window (3D) or slice (2D) inferer."""
    key = "evaluator#inferer" if configs == ["inference.yaml"] else "validate#evaluator#inferer"
    inner = key.replace("evaluator#", "")
    for tta, wrapped in [("false", False), ("true", True)]:
        parser = ConfigParser()
        parser.read_config([str(bundle_dirs[name] / "configs" / config) for config in configs])
        parser["tta"] = tta
        parser["ckpt_dir"] = str(planned_models[name])
        inferer = parser.get_parsed_content(key)
        if wrapped:
            assert isinstance(inferer, MirroredInferer) and inferer.spatial_axes == axes
            assert inferer.inner is parser.get_parsed_content(inner)
        else:
            assert inferer is parser.get_parsed_content(inner)


@pytest.mark.parametrize("name", BUNDLE_NAMES)
@pytest.mark.parametrize(("amp", "dtype"), [("true", torch.bfloat16), ("false", torch.float32)])
def test_amp_runs_training_and_validation_under_bfloat16_autocast_on_a_cpu(name, amp, dtype, bundle_dirs,
                                                                           planned_models):
    """MONAI's engines autocast only on CUDA: on a CPU the bundles' inferers do, for the loss in float32."""
    parser = ConfigParser()
    parser.read_config(str(bundle_dirs[name] / "configs" / "train.yaml"))
    parser.update({"amp": amp, "ckpt_dir": str(planned_models[name]), "device": "$torch.device('cpu')"})
    assert parser.get_parsed_content("train#trainer#amp") is False  # CUDA's mixed precision: not on a CPU
    network = parser.get_parsed_content("network")
    seen = []
    network.register_forward_hook(lambda module, args, output: seen.append(output.dtype))
    patch = (1, 1, *[16] * (3 if name == "3d" else 2))  # a training batch; validation takes whole volumes
    for key, shape in (("train#inferer", patch), ("validate#inferer", (1, 1, 16, 16, 16))):
        seen.clear()
        with torch.no_grad() if key.startswith("validate") else torch.enable_grad():
            output = parser.get_parsed_content(key)(torch.rand(shape), network)
        assert seen and set(seen) == {dtype} and output.dtype == torch.float32
