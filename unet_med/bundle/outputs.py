"""The output folder of inference: this run's predictions, never mixed unmarked with an earlier run's.

An inference run stopped part-way (Ctrl-C, an error, a full disk) and started again into the same folder would
leave its new predictions among the old ones, with nothing to tell them apart. So before anything is built,
:func:`claim_output_dir` locks ``output_dir`` (:func:`unet_med.bundle.lock.lock_folders`: one inference at a
time writes there, and the ``.partial-*`` files of writes cut short are deleted), then refuses a folder that
holds predictions of an earlier run, unless ``--overwrite true``: they are then moved into
``previous/<time>/`` beside them (:func:`unet_med.bundle.io.move_aside`), so that the folder holds this run's
predictions only, and nothing is lost.

MONAI Label runs the bundles' preprocessing, inferer and postprocessing without their ``initialize`` and
without ``SaveImaged``, keeping its outputs itself: none of this concerns it.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

from unet_med.bundle.errors import BundleError
from unet_med.bundle.flags import as_bool
from unet_med.bundle.io import move_aside
from unet_med.bundle.lock import lock_folders

__all__ = ["PREDICTION_SUFFIXES", "claim_output_dir", "earlier_predictions"]

PREDICTION_SUFFIXES = ("_seg.nii.gz", "_seg.dcm")
"""How the files inference writes end: ``<case>_seg.nii.gz``, and ``<case>_seg.dcm`` with ``--dicom_seg true``."""
logger = logging.getLogger(__name__)


def earlier_predictions(folder: str | os.PathLike) -> list[Path]:
    """The predictions in ``folder`` (not in its subfolders), sorted; none when it does not exist."""
    folder = Path(folder)
    if not folder.is_dir():
        return []
    return sorted(
        path for path in folder.iterdir()
        if path.is_file() and not path.name.startswith(".") and path.name.endswith(PREDICTION_SUFFIXES)
    )


def claim_output_dir(output_dir: str | os.PathLike, overwrite: bool | str = False) -> None:
    """Lock ``output_dir`` for this inference run and make sure it will hold this run's predictions only.

    Args:
        output_dir: the folder predictions go to; created when missing (and removed again at exit if the run
            writes nothing).
        overwrite: move the predictions of an earlier run into ``output_dir/previous/<time>/`` instead of
            refusing them (``--overwrite true``).

    Raises:
        BundleError: if another inference writes to the folder, or it holds earlier predictions and
            ``overwrite`` is false.
    """
    folder = Path(output_dir)
    replace = as_bool(overwrite, "overwrite")
    lock_folders([folder], run="inference", options="--output_dir")
    found = earlier_predictions(folder)
    if not found:
        return
    if not replace:
        names = ", ".join(path.name for path in found[:3]) + (", ..." if len(found) > 3 else "")
        raise BundleError(
            f"output_dir {folder} already holds {len(found)} prediction(s) of an earlier run ({names}); "
            f"--overwrite true moves them into {folder / 'previous'} first, or choose another --output_dir."
        )
    kept = move_aside(found)
    logger.info(f"Moved the {len(kept)} earlier prediction(s) of {folder} to {kept[0].parent}")
