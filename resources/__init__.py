"""Dagster resources: the only doors to storage, MLflow, the training launcher and the recipe."""

from resources.bucket import Bucket
from resources.io_manager import BucketJsonIOManager
from resources.launcher import TrainingLauncher
from resources.mlflow_registry import ModelRegistry
from resources.recipe import RecipeResource

__all__ = ["Bucket", "BucketJsonIOManager", "TrainingLauncher", "ModelRegistry", "RecipeResource"]
