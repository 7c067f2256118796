"""The networks, built on dalle2-pytorch and x-clip, and their self-describing files.

- embedding: the x-clip embedding model trained on spectrogram <-> user ID (`MicroDopplerClip`)
- prior: `UserConditionedDiffusionPrior`, image embeddings sampled for a user
- decoder: `MicroDopplerDecoder`, a U-Net (or `dit` transformer) from embedding to spectrogram,
  in pixels or over a `vqgan` latent; `guidance`: its classifier-free guidance; `schedules`: its
  prediction target, noise schedule end point and loss weighting; `edm`: the EDM formulation
- upsampler: `MicroDopplerUpsampler`, the decoder's low-res spectrogram -> the data's own size
  (cascaded diffusion on a two-U-Net dalle2-pytorch `Decoder`)
- chain: `MicroDopplerDALLE2`, user -> prior -> decoder [-> upsampler] -> spectrogram
- single_stage: the label-conditioned decoder the chain is judged against
- bundle: weights files of plain types (loaded with `weights_only=True`)
- compat: every reach into dalle2-pytorch's, x-clip's and accelerate's internals
Imports only `dalle2_md.data`, `sampling`, `defaults` and `utils`; training lives in `training`.
"""
