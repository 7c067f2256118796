"""Does generated data help a recogniser? Recipes and the K-shot harness that measures them.

- recipe: `AugmentRecipe` (source, guidance, filter, mixing) and drawing / training by it
- harness: `augmentation_gain` (per seed: K real images, a generator trained on them, recognisers
  with and without generated data), the generator cache and the report
"""
