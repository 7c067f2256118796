"""The old home of the stages, generation, demo and self-check (split by issue 11): the names
re-exported here keep `from dalle2_md.workflows import ...` working. New code imports from
`stages`, `generation`, `demo`, `selfcheck` and `presets`.
"""

# moved: issue 11
from .demo import DemoConfig, demo_metrics, peak_rss_mb, run_demo  # noqa: F401
from .generation import (GRID_MIN_TILE, GRID_SAMPLES_PER_USER, _label_map, generate, interpolate_users,  # noqa: F401
                         load_generator, write_samples)
from .presets import CPU_CLIP_SIZES, CPU_DECODER_SIZES, CPU_PRIOR_SIZES, CPU_VQGAN_SIZES  # noqa: F401
from .selfcheck import Check, run_checks  # noqa: F401
from .stages import (CLIP_MAX_IMAGE_SIZE, DEFAULT_COLORMAP, DEFAULT_IMAGE_SIZE, STAGES, DataOptions,  # noqa: F401
                     StageResult, check_can_write, display_colormap, embed_dataset, final_path, load_clip_for,
                     load_train_data, log, missing_clip_message, recorded_data_settings, run_train_clip,
                     run_train_decoder, run_train_prior, sub_schedule, train_clip_stage,
                     train_decoder_stage, train_prior_stage, train_two_stage, train_vqgan_stage, with_defaults,
                     with_settings_from)
