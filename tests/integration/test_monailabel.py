"""The bundles in a real MONAI Label server, started by scripts/monailabel_server.py on loopback.

The server runs in its own environment (built once, then cached; see the script). It serves copies of the 3D and
2D bundles with freshly initialised weights on a copy of data_samples/imagesTr plus one reoriented scan, with the
3D bundle as its epistemic (dropout) scoring model; the tests ask it for its models, segment scans, score the
unlabelled scans for active learning, submit two labels and train each bundle one epoch, as 3D Slicer or OHIF
would. The environment holds the project's MONAI (1.6), like the one the project is tested with.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
import uuid
from dataclasses import dataclass
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch

pytestmark = pytest.mark.monailabel

MODELS = {dims: f"unet_med_{dims}d_segmentation" for dims in (2, 3)}  # the bundles' folder names
MODEL = MODELS[3]
REORIENTED = "reoriented_001"  # hippocampus_001 stored left-posterior-superior instead of right-anterior-superior
ENV_TIMEOUT_S = 3600  # a first build downloads about 4 GB
READY_TIMEOUT_S = 180
TASK_TIMEOUT_S = 600  # one training or scoring run
SIMULATIONS = 3  # dropout samples per scan in epistemic scoring


@dataclass
class Server:
    """A running server: its address, process, log and the folders it serves."""

    url: str
    process: subprocess.Popen
    log: Path
    studies: Path
    bundles: Path
    app: Path

    def log_tail(self, chars: int = 6000) -> str:
        """The end of the server's output, for failure messages."""
        return self.log.read_text(errors="replace")[-chars:]

    def request(self, method: str, path: str, body: bytes | None = None, headers: dict | None = None) -> bytes:
        """Send one HTTP request; fail the test with the server's log on an error status."""
        call = urllib.request.Request(self.url + path, data=body, method=method, headers=headers or {})
        try:
            with urllib.request.urlopen(call, timeout=300) as response:
                return response.read()
        except urllib.error.HTTPError as error:
            pytest.fail(f"{method} {path}: HTTP {error.code} {error.read()[:500]!r}\n{self.log_tail()}")

    def json(self, method: str, path: str, payload: dict | None = None) -> dict:
        """Send a request with an optional JSON body and decode the JSON answer."""
        body = None if payload is None else json.dumps(payload).encode()
        return json.loads(self.request(method, path, body, {"Content-Type": "application/json"}))


def free_port() -> int:
    """A TCP port on the loopback interface that nothing listens on now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def multipart(field: str, file: Path) -> tuple[bytes, dict]:
    """A multipart/form-data body with one file field, and its Content-Type header."""
    boundary = uuid.uuid4().hex
    head = f'--{boundary}\r\nContent-Disposition: form-data; name="{field}"; filename="{file.name}"\r\n\r\n'
    body = head.encode() + file.read_bytes() + f"\r\n--{boundary}--\r\n".encode()
    return body, {"Content-Type": f"multipart/form-data; boundary={boundary}"}


def ensure_environment(script: Path) -> None:
    """Build the MONAI Label environment, or find it in the cache; fail with the build's output if it cannot."""
    command = [sys.executable, str(script), "env"]
    result = subprocess.run(command, capture_output=True, text=True, timeout=ENV_TIMEOUT_S)
    if result.returncode != 0:
        pytest.fail(f"{command} failed:\n{result.stdout[-3000:]}\n{result.stderr[-8000:]}")


def write_studies(samples: Path, studies: Path) -> None:
    """The sample images, plus hippocampus_001 with its first two axes flipped and an affine to match."""
    shutil.copytree(samples / "imagesTr", studies)
    source = nib.load(studies / "hippocampus_001.nii.gz")
    flip = np.diag([-1.0, -1.0, 1.0, 1.0])
    flip[:2, 3] = np.array(source.shape[:2]) - 1.0
    data = np.asarray(source.dataobj)[::-1, ::-1]
    nib.save(nib.Nifti1Image(data, source.affine @ flip, source.header), studies / f"{REORIENTED}.nii.gz")


def write_bundle(source: Path, bundle: Path, models: Path) -> None:
    """A copy of a bundle whose models/ holds the plan of data_samples and a model.pt of fresh weights with it."""
    shutil.copytree(source, bundle, ignore=shutil.ignore_patterns("models", "runs", "eval", "outputs"))
    shutil.copytree(models, bundle / "models")


def wait_until_ready(server: Server) -> None:
    """Poll GET /info/ until the server answers; fail with its log if it exits or takes too long."""
    deadline = time.monotonic() + READY_TIMEOUT_S
    while time.monotonic() < deadline:
        if server.process.poll() is not None:
            pytest.fail(f"the MONAI Label server exited with {server.process.returncode}:\n{server.log_tail()}")
        try:
            with urllib.request.urlopen(server.url + "/info/", timeout=5):
                return
        except OSError:
            time.sleep(1)
    pytest.fail(f"the MONAI Label server did not answer within {READY_TIMEOUT_S} s:\n{server.log_tail()}")


def group_alive(pgid: int) -> bool:
    """Whether any process of the process group is left."""
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    return True


def stop(process: subprocess.Popen) -> None:
    """Stop the server and its children (training runs in a child process) through its process group.

    SIGTERM first, which lets the server shut down cleanly; SIGKILL for whatever is left after 30 s.
    """
    os.killpg(process.pid, signal.SIGTERM)
    deadline = time.monotonic() + 30
    while (process.poll() is None or group_alive(process.pid)) and time.monotonic() < deadline:
        time.sleep(0.2)
    if process.poll() is None or group_alive(process.pid):
        os.killpg(process.pid, signal.SIGKILL)
        process.wait(timeout=30)


@pytest.fixture(scope="module")
def server(tmp_path_factory, project_root, samples, bundle_dirs, planned_models) -> Server:
    """A MONAI Label server serving copies of the bundles; stopped by its process id at the end."""
    script = project_root / "scripts" / "monailabel_server.py"
    ensure_environment(script)
    root = tmp_path_factory.mktemp("monailabel")
    write_studies(samples, root / "studies")
    port = free_port()
    command = [sys.executable, str(script), "start", "--studies", str(root / "studies"), "--port", str(port)]
    for dims, source in bundle_dirs.items():
        write_bundle(source, root / "bundles" / source.name, planned_models[dims])
        command += ["--bundle", str(root / "bundles" / source.name)]
    command += ["--app", str(root / "app"), "--conf", "epistemic_model", MODEL]
    command += ["--conf", "epistemic_simulation_size", str(SIMULATIONS)]
    log = root / "server.log"
    with log.open("w") as output:
        # A session of its own: the server's process id is its process group's, which its children share.
        process = subprocess.Popen(command, stdout=output, stderr=subprocess.STDOUT, start_new_session=True)
    server = Server(f"http://127.0.0.1:{port}", process, log, root / "studies", root / "bundles", root / "app")
    try:
        wait_until_ready(server)
        yield server
    finally:
        stop(process)


def segment(server: Server, model: str, image: str, folder: Path) -> np.ndarray:
    """POST /infer/<model>?image=<id>: the label map the server returns, checked against the scan's grid."""
    answer = server.request("POST", f"/infer/{model}?image={image}&output=image")
    (folder / f"{image}.nii.gz").write_bytes(answer)
    pred = nib.load(folder / f"{image}.nii.gz")
    source = nib.load(server.studies / f"{image}.nii.gz")
    assert pred.shape == source.shape
    np.testing.assert_allclose(pred.affine, source.affine, atol=1e-4)
    labels = np.asarray(pred.dataobj)
    assert set(np.unique(labels)) <= {0, 1, 2}
    return labels


@pytest.mark.parametrize("dims", [2, 3])
def test_info_lists_the_bundle_and_its_labels(server, dims, samples):
    info = server.json("GET", "/info/")
    model = info["models"][MODELS[dims]]
    assert model["type"] == "segmentation"
    assert model["dimension"] == dims
    assert model["labels"] == {"anterior": 1, "posterior": 2}
    metadata = json.loads((server.bundles / MODELS[dims] / "configs" / "metadata.json").read_text())
    assert model["version"] == metadata["version"]
    assert MODELS[dims] in info["trainers"]
    assert info["datastore"]["total"] == len(list((samples / "imagesTr").iterdir())) + 1


def test_inference_returns_a_label_map_in_the_image_space(server, tmp_path):
    labels = {image: segment(server, MODEL, image, tmp_path) for image in ("hippocampus_001", REORIENTED)}
    assert len(np.unique(labels["hippocampus_001"])) > 1
    # The same voxels in the other orientation: the server reoriented the scan and turned its answer back.
    np.testing.assert_array_equal(labels[REORIENTED], labels["hippocampus_001"][::-1, ::-1])


def test_2d_bundle_segments_a_volume_slice_by_slice(server, tmp_path):
    assert len(np.unique(segment(server, MODELS[2], REORIENTED, tmp_path))) > 1


def wait_for_task(server: Server, kind: str) -> dict:
    """Poll GET /<kind>/ (train or scoring) until the latest task has ended; return it."""
    task = server.json("GET", f"/{kind}/")
    deadline = time.monotonic() + TASK_TIMEOUT_S
    while task["status"] in ("SUBMITTED", "RUNNING") and time.monotonic() < deadline:
        time.sleep(2)
        task = server.json("GET", f"/{kind}/")
    return task


def test_epistemic_scoring_scores_every_unlabelled_scan(server):
    """Active learning: the 3D bundle with MONAI Label's dropout (network_def#dropout), sampled per scan.

    The server scores every unlabelled scan when it starts; scores are kept until models/model.pt changes.
    """
    assert MODEL in server.json("GET", "/info/")["scoring"]
    task = wait_for_task(server, "scoring")
    assert task["status"] == "DONE", f"scoring ended as {task['status']}:\n{server.log_tail()}"
    images = sorted(path.name.removesuffix(".nii.gz") for path in server.studies.glob("*.nii.gz"))
    summary = server.json("POST", f"/scoring/{MODEL}?run_sync=true")
    assert summary["total"] == summary["skipped"] == len(images) and summary["executed"] == 0

    model_ts = int((server.bundles / MODEL / "models" / "model.pt").stat().st_mtime)
    entropies = []
    for image in images:
        info = server.json("GET", f"/datastore/image/info?image={image}")
        assert info["epistemic_ts"] == model_ts
        entropies.append(info["epistemic_entropy"])
    assert np.isfinite(entropies).all()
    assert f"EPISTEMIC:: {REORIENTED} => iters: {SIMULATIONS};" in server.log.read_text()


@pytest.fixture(scope="module")
def labelled(server, samples) -> Server:
    """The server after two final labels were submitted, as an annotator saves corrected segmentations."""
    for case in ("hippocampus_001", "hippocampus_003"):
        body, headers = multipart("label", samples / "labelsTr" / f"{case}.nii.gz")
        saved = json.loads(server.request("PUT", f"/datastore/label?image={case}&tag=final", body, headers))
        assert saved == {"image": case, "label": case}
    assert server.json("GET", "/datastore/?output=stats")["label_tags"] == {"final": 2}
    return server


def same_weights(first: dict, second: dict) -> bool:
    """Whether two state dicts hold the same tensors under the same names."""
    return first.keys() == second.keys() and all(torch.equal(first[name], second[name]) for name in first)


@pytest.mark.parametrize("dims", [3, 2])
def test_submitted_labels_train_the_bundle(labelled, dims):
    server, model = labelled, MODELS[dims]
    models = server.bundles / model / "models"
    weights = models / "model.pt"
    before, written = torch.load(weights, weights_only=True), weights.stat().st_mtime_ns
    # One epoch on one case, validated on the other, starting from models/model.pt.
    server.json("POST", f"/train/{model}", {"max_epochs": 1, "val_split": 0.5})
    task = wait_for_task(server, "train")
    assert task["status"] == "DONE", f"training ended as {task['status']}:\n{server.log_tail()}"

    served = server.app / "model" / model / "models" / "model.pt"  # the bundle as MONAI Label sees it
    assert f"Restored all variables from {served}" in server.log.read_text(), "training ignored models/model.pt"
    trained = torch.load(models / "checkpoint_latest.pt", weights_only=True)
    assert trained["plan"] == before["plan"] and not same_weights(trained["model"], before["model"])
    # model.pt is replaced by the trained model only if it scored better on the validation case than model.pt
    # did before (one epoch from fresh weights may not): a kept model.pt is not even rewritten.
    after = torch.load(weights, weights_only=True)
    assert after.keys() == {"model", "plan"} and after["plan"] == before["plan"]
    if "model.pt kept: it scored" in (server.bundles / model / "runs" / "training.log").read_text():
        assert same_weights(after["model"], before["model"]) and weights.stat().st_mtime_ns == written
    else:
        assert same_weights(after["model"], trained["model"]) and weights.stat().st_mtime_ns > written
