"""Recipes, each a config with its command and measured result: `python -m experiments.<name> --workdir=...`.

Each module's `main` is `cnn_jax.run.main(recipe)`, which sets up the process and runs the recipe as its flags
change it; everything a recipe needs lives in `cnn_jax.run`, so a pip-installed cnn_jax runs a recipe of one's own.
"""
