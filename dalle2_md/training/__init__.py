"""Training: the one loop every stage runs through, and the stages built on it.

- loop: `train` and `TrainConfig` (optimizer, warmup, EMA, accelerate, TensorBoard, NaN guard)
- checkpoints, batches: resumable plain-typed checkpoints; the stream order of the data
- fit: in-memory training of each part (`fit_clip`, `fit_decoder`, `fit_upsampler`, `fit_prior`,
  `train_two_stage`)
- presets: CPU model sizes and `GeneratorBudget`
- options: where a run's data is and how it is read (`DataOptions`)
- stages: data set -> trained part -> bundle, behind the training commands
"""
