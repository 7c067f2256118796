"""The old home of the stages, generation, demo and self-check (split by issue 11): the names
re-exported here keep `from dalle2_md.workflows import ...` working. New code imports from
`core`, `options`, `stages`, `generation`, `demo`, `selfcheck` and `presets`.
"""

# moved: issue 11
from .core import CLIP_MAX_IMAGE_SIZE, TwoStageModels, train_two_stage  # noqa: F401
from .demo import DemoConfig, demo_metrics, peak_rss_mb, run_demo  # noqa: F401
from .generation import (GRID_MIN_TILE, GRID_SAMPLES_PER_USER, _label_map, generate, interpolate_users,  # noqa: F401
                         load_generator, write_samples)
from .presets import CPU_CLIP_SIZES, CPU_DECODER_SIZES, CPU_PRIOR_SIZES, CPU_VQGAN_SIZES  # noqa: F401
from .selfcheck import Check, run_checks  # noqa: F401
from .options import (DEFAULT_COLORMAP, DEFAULT_IMAGE_SIZE, DataOptions, display_colormap, load_train_data,  # noqa: F401
                      recorded_data_settings, with_defaults, with_settings_from)
from .stages import (STAGES, StageResult, check_can_write, embed_dataset, final_path, load_clip_for,  # noqa: F401
                     missing_clip_message, run_train_clip, run_train_decoder, run_train_prior, sub_schedule,
                     train_clip_stage, train_decoder_stage, train_prior_stage, train_vqgan_stage)
from .utils import say as log  # noqa: F401
