"""Old import path of the evaluation: everything moved (issue 11) to one file per concept.

- `recogniser.py`: the identity recogniser, its training (augmentations, mixup) and cache;
- `metrics.py`: identity accuracy, domain FID, diversity, memorisation, kinematic fidelity;
- `report.py`: `evaluate_samples` (metrics.json, report.md, plots) and `load_generated_folder`.

Kept so that `from dalle2_md.evaluate import ...` in users' code and old scripts still works;
new code imports from the modules above.
"""

from __future__ import annotations

from .metrics import (  # noqa: F401  moved: issue 11
    KINEMATIC_FIELDS,
    accuracy,
    diversity,
    domain_fid,
    kinematic_fidelity,
    memorisation,
    min_fid_samples,
    read_kinematics_batch,
    to_scalar_images,
)
from .recogniser import (  # noqa: F401  moved: issue 11
    CACHE_KEY_VERSION,
    LEGACY_RECOGNISER_TRAIN,
    SYNTHETIC_STREAM_OFFSET,
    Recogniser,
    RecogniserConfig,
    RecogniserTrainConfig,
    _augment,
    _check_labelled,
    cached_recogniser,
    default_num_users,
    extract_features,
    predict,
    recogniser_cache_key,
    train_recogniser,
)
from .report import GENERATED_NAME_RE, _plain_floats, evaluate_samples, load_generated_folder  # noqa: F401  moved: issue 11
