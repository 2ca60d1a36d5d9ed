"""Recipes: the commands behind the bundled weights and their figures, as checked-in JSON files
(configs/*/recipe.json) that `nstseg reproduce` runs, and the packaging code those steps call."""
