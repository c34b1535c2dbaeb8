"""The recipe as a resource: a YAML file by default, editable in the launchpad, validated once."""


import dagster as dg

from pipeline.paths import resolve
from pipeline.recipe import Recipe


class RecipeResource(dg.ConfigurableResource):
    """Loads the typed `Recipe`. `inline` (YAML or JSON text) wins over `path` when set."""

    path: str = "recipes/default.yaml"
    inline: str = ""

    def load(self) -> Recipe:
        return Recipe.from_text(self.inline) if self.inline else Recipe.from_yaml(resolve(self.path))

    @classmethod
    def of(cls, recipe: Recipe) -> "RecipeResource":
        return cls(inline=recipe.model_dump_json())
