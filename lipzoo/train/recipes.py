"""Named training recipes: the :class:`Recipe` fields, and ``RECIPES`` built from the families' declarations.

Each ``lipzoo/models/<family>.py`` declares its recipes as plain data (``Family.recipes``: name -> Recipe fields,
with the comments that explain the values); adding a family's recipe touches only its declaration.
Paper recipes follow the authors' code defaults as recorded in ``shared/notes/anchors-models.md``
(§2.5 SOC, §3.4 LOT, §4.5 Sandwich/LBDN, §5.5 SLL), minus their known bugs: certificate regularisation (CR)
works when ``cr_gamma > 0`` (the improved-techniques repo commented it out), the Sandwich conv ``alpha`` is a
real parameter and is trained, and the *last* checkpoint is evaluated (no test-set selection).
``*_cpu`` recipes train the compact ``*_xs`` models on a 2-core CPU in about 2-3 hours.
Every field can be overridden from the command line (``--epochs 10 --lr 0.01 ...``).
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, Iterator, Mapping

__all__ = ["Recipe", "RECIPES", "get_recipe", "recipe_from_declaration", "family_recipes", "compact_runs"]


@dataclass
class Recipe:
    name: str = "custom"
    model: str = "sll_xs"
    model_args: dict[str, Any] = field(default_factory=dict)
    dataset: str = "cifar10"
    epochs: int = 10
    batch_size: int = 256  # global batch size (kept constant across DDP world sizes)
    optimizer: str = "adam"  # adam | sgd
    lr: float = 0.01
    momentum: float = 0.9
    betas: tuple[float, float] = (0.9, 0.999)
    weight_decay: float = 0.0
    # which parameters get weight decay: "all" | "weights" (names containing "weight" or "kernel", not activations) | "none"
    wd_rule: str = "all"
    no_wd_keywords: tuple[str, ...] = ()
    schedule: str = "triangular"  # triangular (LBDN/SLL "interp") | multistep | cosine | constant
    milestones: tuple[float, ...] = (0.5, 0.75)  # multistep, as fractions of all steps
    warmup_epochs: float = 0.0
    loss: str = "xent"  # xent (offset + temperature) | ce | multimargin
    offset: float = 2.1213203435596424  # sqrt(2) * 1.5
    temperature: float = 0.25
    margin: float = 0.5  # multimargin
    cr_gamma: float = 0.0  # certificate regularisation: loss -= gamma * mean(relu(radius))
    curvature_beta: float = 0.0  # MLP-head curvature regulariser
    grad_clip: float = 0.0
    augment: str = "crop_flip"  # crop_flip | crop_flip_jitter | none
    pad_mode: str = "constant"
    val_split: int = 0  # images carved from the training set for validation (never the test set)
    # weight averaging: an exponential moving average of the parameters, updated after every optimizer step with
    # decay min(ema_decay, (1 + t) / (10 + t)) at update t; the averaged weights are exported, evaluated and
    # certified (0 = off: the trained weights themselves)
    ema_decay: float = 0.0
    seed: int = 0
    checkpoint_minutes: float = 10.0
    fast: bool = True  # channels_last + bf16 autocast on CPU (autocast on GPU); False: float32 NCHW
    description: str = ""

    def replace(self, **overrides: Any) -> "Recipe":
        return dataclasses.replace(self, **overrides)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def recipe_from_declaration(name: str, fields: Mapping[str, Any], family: str = "") -> Recipe:
    """The :class:`Recipe` ``name`` from a family's plain-data declaration (``Family.recipes[name]``: field ->
    value; the name is the key). Raises ``ValueError`` naming the family on a field that ``Recipe`` does not have."""
    known = {f.name for f in dataclasses.fields(Recipe)} - {"name"}
    unknown = sorted(set(fields) - known)
    if unknown:
        where = f" of family {family!r}" if family else ""
        raise ValueError(f"recipe {name!r}{where} declares unknown fields {unknown}; a recipe's fields are "
                         f"{', '.join(sorted(known))} (its name is the key)")
    return Recipe(name=name, **fields)


class _DeclaredRecipes(Mapping[str, Recipe]):
    """Every family's declared recipes (family order, then declaration order), read from the declarations on first
    use: importing this module (the command line's parser) does not import the models, hence not torch."""

    def __init__(self) -> None:
        self._recipes: dict[str, Recipe] | None = None

    def _built(self) -> dict[str, Recipe]:
        if self._recipes is None:
            from ..models import FAMILIES

            self._recipes = {name: recipe_from_declaration(name, fields, family.name)
                             for family in FAMILIES.values() for name, fields in family.recipes.items()}
        return self._recipes

    def __getitem__(self, name: str) -> Recipe:
        return self._built()[name]

    def __iter__(self) -> Iterator[str]:
        return iter(self._built())

    def __len__(self) -> int:
        return len(self._built())

    def __repr__(self) -> str:
        return repr(self._built())


RECIPES: Mapping[str, Recipe] = _DeclaredRecipes()


def get_recipe(name: str) -> Recipe:
    if name not in RECIPES:
        raise KeyError(f"unknown recipe {name!r}; known: {', '.join(sorted(RECIPES))}")
    return RECIPES[name]


def family_recipes(family: str) -> list[Recipe]:
    """The recipes ``family`` declares (``Family.recipes`` in ``lipzoo/models/<family>.py``), in its order."""
    from ..models import FAMILIES

    return [get_recipe(name) for name in FAMILIES[family].recipes]


def compact_runs() -> list[tuple[str, str]]:
    """``(architecture, recipe)``: for each family, the first of its recipes that trains one of its compact
    variants (what ``scripts/train_zoo.sh`` trains and publishes)."""
    from ..models import FAMILIES

    runs = []
    for family in FAMILIES.values():
        cpu = [r for r in family_recipes(family.name) if r.model in family.compact]
        if cpu:
            runs.append((cpu[0].model, cpu[0].name))
    return runs
