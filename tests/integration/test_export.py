"""Both bundles exported through `python -m monai.bundle onnx_export` and `ckpt_export`, the commands of
docs/bundles.md, then run on a real scan: onnxruntime and TorchScript must segment it as PyTorch does."""

from __future__ import annotations

import shutil
import subprocess
import sys

import numpy as np
import onnxruntime
import pytest
import torch
from monai.bundle import ConfigParser

pytestmark = pytest.mark.bundle_cli

CASE = "hippocampus_001.nii.gz"
# As docs/bundles.md writes them: a batch axis of any size, so that the inferers' window batches run.
ONNX_OPTIONS = (
    "--converter_kwargs",
    "{'input_names': ['image'], 'output_names': ['logits'], "
    "'dynamic_axes': {'image': {0: 'batch'}, 'logits': {0: 'batch'}}}",
)
TIE_MARGIN = 1e-3  # logits closer than this may change their order between runtimes
EXPORT_TIMEOUT_S = 600  # a loaded 2-core machine needs minutes for one ONNX export


def export(command: str, bundle, out, child_env, *options: str) -> None:
    """Run one export command of the bundle command line in the bundle folder."""
    suffix = {"onnx_export": "onnx", "ckpt_export": "ts"}[command]
    call = [sys.executable, "-m", "monai.bundle", command, "network_def", "--filepath", str(out / f"model.{suffix}")]
    call += ["--ckpt_file", str(out / "models" / "model.pt"), "--key_in_ckpt", "model"]
    call += ["--ckpt_dir", str(out / "models"), "--meta_file", "configs/metadata.json"]
    call += ["--config_file", "configs/inference.yaml", *options]
    result = subprocess.run(call, cwd=bundle, env=child_env, capture_output=True, text=True, timeout=EXPORT_TIMEOUT_S)
    assert result.returncode == 0, f"{call} failed:\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}"


@pytest.fixture(scope="module", params=["2d", "3d"])
def exported(request, tmp_path_factory, bundle_dirs, child_env, planned_models):
    """A bundle's inference config and network with seeded fresh weights, exported to ONNX and TorchScript."""
    bundle, out = bundle_dirs[request.param], tmp_path_factory.mktemp(f"export_{request.param}")
    shutil.copytree(planned_models[request.param], out / "models")
    parser = ConfigParser()
    parser.read_config(str(bundle / "configs" / "inference.yaml"))
    parser["ckpt_dir"] = str(out / "models")
    parser["amp"] = False  # float32 windows, as the exports compute: no bfloat16 autocast on CPUs with its units
    torch.manual_seed(0)
    network = parser.get_parsed_content("network_def").eval()
    torch.save({"model": network.state_dict(), "plan": parser.get_parsed_content("plan")}, out / "models" / "model.pt")
    export("onnx_export", bundle, out, child_env, *ONNX_OPTIONS)
    export("ckpt_export", bundle, out, child_env)
    return parser, network, out


def logits(parser: ConfigParser, predictor, image: torch.Tensor) -> torch.Tensor:
    """The bundle's inferer (sliding windows in 3D, slices in 2D) run with ``predictor`` on one scan."""
    with torch.no_grad():
        return parser.get_parsed_content("inferer", instantiate=True)(image, predictor)


def assert_same_label_map(reference: torch.Tensor, other: torch.Tensor) -> None:
    """Same argmax wherever the reference's two best classes are not tied within TIE_MARGIN."""
    top2 = reference.topk(2, dim=1).values
    decided = (top2[:, 0] - top2[:, 1]) > TIE_MARGIN
    assert decided.float().mean() > 0.99, "too many near-ties for a meaningful comparison"
    expected, found = reference.argmax(1)[decided], other.argmax(1)[decided]
    assert torch.equal(expected, found), f"{int((expected != found).sum())} voxels differ"
    assert len(expected.unique()) > 1, "a single class everywhere proves nothing"


def test_onnx_and_torchscript_segment_a_scan_as_pytorch_does(exported, samples):
    parser, network, out = exported
    image = parser.get_parsed_content("preprocessing")({"image": str(samples / "imagesTr" / CASE)})["image"][None]
    reference = logits(parser, network, image)

    session = onnxruntime.InferenceSession(str(out / "model.onnx"), providers=["CPUExecutionProvider"])
    assert [i.name for i in session.get_inputs()] == ["image"]

    def onnx_predictor(batch: torch.Tensor) -> torch.Tensor:
        return torch.from_numpy(session.run(["logits"], {"image": batch.numpy()})[0])

    for runtime, predictor in (("onnxruntime", onnx_predictor), ("torchscript", torch.jit.load(out / "model.ts"))):
        found = logits(parser, predictor, image)
        assert found.shape == reference.shape, runtime
        np.testing.assert_allclose(found.numpy(), reference.numpy(), atol=1e-3, err_msg=runtime)
        assert_same_label_map(reference, found)
