"""What the MONAI bundles run on, built on the library: its modules are called from the bundles' configs.

- :mod:`~unet_med.bundle.datalists`: Decathlon datalists, splits, label names, output folder checks.
- :mod:`~unet_med.bundle.dataset_check`: every problem of a data set at once, before anything is built.
- :mod:`~unet_med.bundle.handlers`: ignite handlers: atomic and resumable checkpoints, the training report.
- :mod:`~unet_med.bundle.figures`: the report's figures.
- :mod:`~unet_med.bundle.io`: atomic file writes and weights-only checkpoint files.
- :mod:`~unet_med.bundle.pretrained`: fine-tuning: a training started from another model's matching weights.
- :mod:`~unet_med.bundle.distributed`: the multi-GPU configs' device, process group and rank-0 handlers.
- :mod:`~unet_med.bundle.flags`: command-line flags read as the user means them.
- :mod:`~unet_med.bundle.fingerprint`: a data set's spacings, shapes, intensities and labels, cached as JSON.
- :mod:`~unet_med.bundle.plan`: training and inference planned from the fingerprint, each value with its reason.
- :mod:`~unet_med.bundle.plan_file`: the plan file: written with its reasons, loaded, overridden, validated.
- :mod:`~unet_med.bundle.plan_data`: whether a data set is the data a plan was made from.
- :mod:`~unet_med.bundle.planned`: the bundles' side of the plan: planned when missing, overridden, recorded in
  ``model.pt`` and checked against it; the crop and inferer of 2D and 3D.
- :mod:`~unet_med.bundle.cost`: memory, operations and time of a planned U-Net.
- :mod:`~unet_med.bundle.readers`: DICOM series folders, NRRD and MetaImage scans for MONAI, through SimpleITK.
- :mod:`~unet_med.bundle.dicom_seg`: predictions as DICOM SEG objects that reference their source series.
- :mod:`~unet_med.bundle.scan_check`: scans unlike the training scans (spacing, size, modality): a warning, or
  a refusal with ``--strict_scans true``.
- :mod:`~unet_med.bundle.transforms`: ``PlanNormalized``, the plan's per-channel normalisation; ``IsolatedSpacingd``,
  the inference configs' resampling, safe in MONAI Label.
- :mod:`~unet_med.bundle.inversion`: ``InvertToLabelsd``, predictions back to the scan's grid as a label map, one
  slab at a time.
- :mod:`~unet_med.bundle.options`: the training options, checked before anything is built.
- :mod:`~unet_med.bundle.errors`: user errors, shown as one line at the command line.
- :mod:`~unet_med.bundle.lock`: one training at a time per output folder.
"""
