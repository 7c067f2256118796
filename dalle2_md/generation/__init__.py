"""Drawing spectrograms from trained generators.

- samples: `load_generator` (with the upsampler beside the decoder), `write_samples` (PNGs and
  grids, at the data's size when upsampled), `write_interpolation`, `sample_tensors` (N per user
  in model space, for any generator with `sample_users`)
- variations: DALL-E 2's image variations and SDEdit from real spectrograms
- curate, filters: curated data sets, drawn until N per user pass the filters
- fastpath: GPU fast paths (bf16, channels-last, torch.compile)
"""
