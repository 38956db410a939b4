"""Training: named recipes, losses, and a resumable, distributed loop (``python -m lipzoo.train``)."""
from .recipes import RECIPES, Recipe, get_recipe

__all__ = ["RECIPES", "Recipe", "get_recipe", "train"]


def train(*args, **kwargs):
    from .loop import train as _train

    return _train(*args, **kwargs)
