"""Whether to compile the decoder blocks for this run: only when the tokens it will train on pay back the compile.

Compiled blocks make each short-row step faster, but the compile is a fixed cost paid in the first steps (12-16 s
cold for the ~1B and 8B shapes on an H200, 2-3 s with a cached compile, and the recording of CUDA graphs for each
new row length). A small job finishes sooner in eager mode; `torch_compile: auto` compiles only when the expected
training tokens reach the recipe's break-even count for a cold or cached compile, or when the recipe's
activation memory budget needs the compiler.
"""

from __future__ import annotations

from dataclasses import dataclass

from pipeline.recipe import TrainingRecipe


@dataclass(frozen=True)
class CompileDecision:
    compile: bool
    reason: str
    expected_tokens: int
    cached: bool


def expected_training_tokens(lengths: list[int], recipe: TrainingRecipe) -> int:
    """Tokens the run will train on: the examples' token counts (each cut at max_length) over all epochs, or
    max_steps of batches when that stops it sooner."""
    if not lengths:
        return 0
    tokens = sum(min(n, recipe.max_length) for n in lengths)
    total = tokens * recipe.epochs
    if recipe.max_steps > 0:
        per_step = recipe.batch_size * recipe.gradient_accumulation_steps
        # a packed row holds about max_length tokens of several examples
        per_step_tokens = per_step * (recipe.max_length if recipe.packing else tokens / len(lengths))
        return int(min(total, recipe.max_steps * per_step_tokens))
    return int(total)


def decide_compile(recipe: TrainingRecipe, expected_tokens: int, cached: bool, on_gpu: bool) -> CompileDecision:
    """`torch_compile` true or false is obeyed; `auto` compiles on a GPU once the expected tokens reach the
    break-even count (the cached one when a compile cache for this model and GPU is in the store)."""
    setting = recipe.torch_compile
    if setting is True or setting is False:
        return CompileDecision(setting, f"torch_compile is {str(setting).lower()}", expected_tokens, cached)
    if recipe.activation_memory_budget < 1:  # the budget is the compiler's to apply: memory first
        return CompileDecision(True, f"torch_compile auto: activation_memory_budget {recipe.activation_memory_budget:g} "
                               "is applied by compiling the blocks", expected_tokens, cached)
    if not on_gpu:
        return CompileDecision(False, "torch_compile auto: no GPU, compiled blocks do not pay off on a CPU",
                               expected_tokens, cached)
    threshold = recipe.compile_min_tokens_cached if cached else recipe.compile_min_tokens
    kind = "a cached" if cached else "a cold"
    if expected_tokens >= threshold:
        return CompileDecision(True, f"torch_compile auto: {expected_tokens:,} expected tokens reach the "
                               f"{threshold:,} that pay back {kind} compile", expected_tokens, cached)
    return CompileDecision(False, f"torch_compile auto: {expected_tokens:,} expected tokens are under the "
                           f"{threshold:,} that would pay back {kind} compile; eager", expected_tokens, cached)
