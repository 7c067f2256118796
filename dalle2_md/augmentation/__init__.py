"""Does generated data help a recogniser? Recipes and the K-shot harness that measures them.

- recipe: `AugmentRecipe` (source, guidance, filter, mixing) and drawing / training by it;
  source "respeckle" is the generator-free control (the K real images re-speckled)
- harness: `augmentation_gain` (per seed: K real images, a generator trained on them unless it is
  "none", recognisers with and without generated data), the generator cache and the report
"""
