"""Typed configuration: YAML in configs/, validated by pydantic, overridden with `--set a.b=value`.

`load_config(path, overrides)` is the only way configs enter the program; an invalid value fails at
load time with one line naming the field path (`ConfigError: pool.replicas: ...`).
"""
from __future__ import annotations

import argparse
import copy
import os
import sys
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from core.prices import token_prices_per_m
from core.storage import Storage

Fraction = Annotated[float, Field(ge=0, le=1)]
Name = Annotated[str, Field(min_length=1)]  # ids and names that become folder names or keys


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


def _absolute(path: str | None) -> str | None:
    """An interpreter path made absolute against the directory the config is loaded from (Ray starts
    actors elsewhere); not resolved, since a virtual environment's python is a symlink to its base one."""
    return os.path.abspath(path) if path else path


class PriceConfig(Strict):
    """How a pool model is priced. Exactly one of: a declared per-token price (USD per 1M tokens),
    `ref` = a model name in the bundled LiteLLM price table (tokencost), or GPU time."""

    input_per_m: float | None = Field(None, ge=0)
    output_per_m: float | None = Field(None, ge=0)
    ref: str | None = None
    gpu_hour_usd: float | None = Field(None, ge=0)
    gpus: float = Field(1.0, gt=0)
    paper_model: str | None = None  # the paper-scale model whose price this rung borrows

    @field_validator("ref")
    @classmethod
    def _in_the_table(cls, ref: str | None) -> str | None:
        if ref is not None and token_prices_per_m(ref) is None:
            raise ValueError(f"unknown model {ref!r}: no per-token price for it in the LiteLLM price table")
        return ref

    @model_validator(mode="after")
    def _one_way(self) -> PriceConfig:
        declared = self.input_per_m is not None or self.output_per_m is not None
        ways = [declared, self.ref is not None, self.gpu_hour_usd is not None]
        if sum(ways) != 1:
            raise ValueError("give exactly one of input_per_m/output_per_m, ref, gpu_hour_usd")
        if declared and (self.input_per_m is None or self.output_per_m is None):
            raise ValueError("a declared price needs both input_per_m and output_per_m")
        return self


FactsForm = Literal["of", "the", "poss", "what-poss"]  # the surface forms of benchmarks.tasks.facts.FORMS


class FactsConfig(Strict):
    n_entities: int = Field(500, ge=10)
    n_relations: int = Field(48, ge=2)
    zipf: float = Field(0.6, ge=0)
    # query shapes: hop counts and surface forms (benchmarks.tasks.facts.FORMS) of the train and test
    # splits, and shapes held out of every split, label and zoo datum (the generalisation report's)
    hops: list[Annotated[int, Field(ge=1, le=8)]] = Field([1, 2, 3, 4], min_length=1)
    forms: list[FactsForm] = Field(["of", "the", "poss"], min_length=1)
    held_out_hops: list[Annotated[int, Field(ge=1, le=8)]] = [5, 6]
    held_out_forms: list[FactsForm] = ["what-poss"]
    shape_queries: int = Field(200, ge=1)  # queries per shape in the generalisation report
    n_train_chains: int = Field(4000, ge=1)
    n_test_chains: int = Field(1000, ge=1)
    eval_facts_per_bucket: int = Field(400, ge=1)
    popular_fraction: float = Field(0.2, gt=0, lt=1)  # top share of subjects by popularity
    rare_fraction: float = Field(0.5, gt=0, lt=1)  # bottom share of subjects by popularity

    @model_validator(mode="after")
    def _shapes_apart(self) -> FactsConfig:
        for field_, trained, held in (("held_out_hops", self.hops, self.held_out_hops),
                                      ("held_out_forms", self.forms, self.held_out_forms)):
            if set(trained) & set(held):
                raise ValueError(f"{field_}: {sorted(set(trained) & set(held))} also trained on")
        return self


class ScanConfig(Strict):
    test_fraction: float = Field(0.2, gt=0, lt=1)
    n_test_commands: int = Field(500, ge=1)  # evaluation subsample of the test split
    # clause counts of the train/test commands (1-2: SCAN's 20,910; 3+: `long_commands` drawn per count),
    # and counts held out of both (the generalisation report's shapes, `shape_queries` each)
    clauses: list[Annotated[int, Field(ge=1, le=6)]] = Field([1, 2], min_length=1)
    held_out_clauses: list[Annotated[int, Field(ge=1, le=6)]] = []
    long_commands: int = Field(4000, ge=1)
    shape_queries: int = Field(200, ge=1)

    @model_validator(mode="after")
    def _clauses_apart(self) -> ScanConfig:
        if set(self.clauses) & set(self.held_out_clauses):
            raise ValueError(f"held_out_clauses: {sorted(set(self.clauses) & set(self.held_out_clauses))} also trained on")
        return self


class MusiqueConfig(Strict):
    path: str | None = None  # a MuSiQue JSONL file (default: musique/musique_ans_v1.0_dev.jsonl under R2R_DATA)


class TasksConfig(Strict):
    enabled: list[str] = Field(["facts", "scan"], min_length=1)  # registry names: zoo, labels, SFT, GRPO
    facts: FactsConfig = FactsConfig()
    scan: ScanConfig = ScanConfig()
    musique: MusiqueConfig = MusiqueConfig()


class ZooModelConfig(Strict):
    name: Name
    hidden: int = Field(ge=4)
    layers: int = Field(ge=1)
    heads: int = Field(ge=1)
    intermediate: int = Field(ge=4)
    lr: float = Field(gt=0)
    price: PriceConfig

    @model_validator(mode="after")
    def _heads_divide(self) -> ZooModelConfig:
        if self.hidden % self.heads:
            raise ValueError(f"hidden ({self.hidden}) must be divisible by heads ({self.heads})")
        return self


class ZooMix(Strict):
    """Shares of training sequences: single hops, SCAN clauses, and whole queries of both tasks."""

    facts_hop: float = Field(0.75, ge=0)
    facts_chain: float = Field(0.05, ge=0)
    scan_clause: float = Field(0.12, ge=0)
    scan_command: float = Field(0.08, ge=0)


class ZooConfig(Strict):
    train_tokens: int = Field(3_000_000, ge=1000)  # equal for every model
    batch_size: int = Field(256, ge=1)
    warmup_frac: float = Field(0.05, ge=0, lt=1)
    weight_decay: float = Field(0.0, ge=0)
    workers: int = Field(2, ge=1)  # models trained in parallel processes
    eval_batch_size: int = Field(512, ge=1)
    mix: ZooMix = ZooMix()
    models: list[ZooModelConfig] = []  # none: a pool of real models only (pool.use_zoo: false)
    dir: str | None = None  # where the zoo lives, a path or URI (default: <run_dir>/zoo); configs may share one


class ActorResources(Strict):
    """What one actor asks Ray for: CPUs, GPUs and custom resources (e.g. `{"pool": 0.1}` to pin it to
    nodes started with `--resources '{"pool": 1}'`). An actor uses the GPU Ray gave it, if any."""

    num_cpus: float = Field(0.25, ge=0)
    num_gpus: float = Field(0.0, ge=0)
    resources: dict[str, float] = {}

    def options(self) -> dict:
        return {"num_cpus": self.num_cpus, "num_gpus": self.num_gpus, "resources": dict(self.resources)}

    def bundle(self) -> dict[str, float]:
        """The placement-group bundle of one such actor."""
        return {k: v for k, v in {"CPU": self.num_cpus, "GPU": self.num_gpus, **self.resources}.items() if v}


class LearnerConfig(ActorResources):
    """The learner group: `ranks` DeepSpeed data-parallel ranks, one Ray actor each, in one
    torch.distributed group (gloo on CPU, NCCL on GPU), placed together by a placement group."""

    num_cpus: float = Field(0.5, ge=0)
    ranks: int = Field(1, ge=1)
    placement: Literal["PACK", "SPREAD", "STRICT_PACK", "STRICT_SPREAD"] = "PACK"
    placement_timeout_s: float = Field(120.0, gt=0)  # a group that is not placed by then is an error


class PolicyEngineConfig(ActorResources):
    """The vLLM engine actor of one router policy in one rollout worker (`train.sampler: vllm`; see
    `actors.policy_engine`). `python`: the interpreter Ray starts the actor with (runtime_env
    `py_executable`), e.g. a virtual environment holding vllm with this cluster's Python and Ray versions
    and this project; default: the rollout worker's. `engine_args`: vLLM `AsyncEngineArgs` fields
    (`max_model_len`, `gpu_memory_utilization`, `kv_cache_memory_bytes`, `dtype` (default float32, the
    learner's precision), ...). A GPU engine asks for `num_gpus`."""

    python: str | None = None
    engine_args: dict[str, Any] = {}

    @field_validator("python")
    @classmethod
    def _python_absolute(cls, v: str | None) -> str | None:
        return _absolute(v)


class ModelShape(Strict):
    """What the memory model needs of a transformer (from its HF config.json): parameters in billions,
    layers, KV heads and head size (the KV cache per token is 2 x layers x kv_heads x head_dim values)."""

    params_b: float = Field(gt=0)
    layers: int = Field(ge=1)
    kv_heads: int = Field(ge=1)
    head_dim: int = Field(ge=1)


class LaunchConfig(Strict):
    """A vLLM OpenAI-compatible server that the run starts itself for an `openai` pool model (`pool_session`
    starts it before the pool and stops it after): `python` (an interpreter with vllm, e.g. .venv-vllm's)
    runs `vllm.entrypoints.openai.api_server` on the host and port of the model's `url`, serving its `path`
    under its `remote_model` name. `args`: extra server flags as `{flag: value}` (`max-model-len: 2048`;
    `true` for a bare flag)."""

    python: str
    args: dict[str, Any] = {}
    startup_timeout_s: float = Field(300.0, gt=0)

    @field_validator("python")
    @classmethod
    def _python_absolute(cls, v: str) -> str:
        return _absolute(v)


class PoolModelConfig(Strict):
    """A pool model served by one of the backends. The zoo's models join the pool by default."""

    id: Name
    backend: Literal["hf", "openai", "vllm"] = "hf"
    path: str | None = None  # local HF folder (hf, vllm); openai: optional, its tokenizer counts tokens of
    # calls whose usage the endpoint does not report
    url: str | None = None  # OpenAI-compatible base URL, e.g. http://127.0.0.1:8000/v1 (openai)
    remote_model: str | None = None  # the model name at that endpoint (default: id)
    api_key_env: str | None = None  # env var holding the API key (openai)
    timeout_s: float = Field(30.0, gt=0)
    max_retries: int = Field(3, ge=0)
    price: PriceConfig
    replicas: int | None = Field(None, ge=1)
    chat: bool = False  # an instruct model: each prompt is one user turn (hf: through its tokenizer's chat
    # template; openai: sent to /v1/chat/completions, where the server applies the template)
    engine_args: dict[str, Any] = {}  # vllm: AsyncEngineArgs fields (max_model_len, dtype, kv_cache_memory_bytes, ...)
    python: str | None = None  # the interpreter of this model's server actors (Ray py_executable; default: Ray's)
    shape: ModelShape | None = None  # a self-hosted model's shape, for the memory model (pipelines.train --dry-run)
    # another pool model that answers this one's prompts when a call to it fails for good (openai: after
    # its max_retries); checked at pool start (it must exist; no cycles)
    fallback: str | None = None
    launch: LaunchConfig | None = None  # openai: a vLLM server the run starts for this model (see LaunchConfig)

    @field_validator("python")
    @classmethod
    def _python_absolute(cls, v: str | None) -> str | None:
        return _absolute(v)

    @model_validator(mode="after")
    def _where(self) -> PoolModelConfig:
        if self.backend == "openai" and not self.url:
            raise ValueError("an openai backend needs url")
        if self.backend in ("hf", "vllm") and not self.path:
            raise ValueError(f"a {self.backend} backend needs path")
        if self.launch is not None and (self.backend != "openai" or not self.path):
            raise ValueError("launch: only an openai backend's server is launched, and it serves the model in path")
        return self


class PoolConfig(Strict):
    use_zoo: bool = True  # add every zoo model (hf backend) to the pool
    # a pool shared by several jobs on one cluster: a job joins the running pool of this name, else starts it
    # under this name; either way it keeps running after the job (until killed, or the cluster stops)
    name: str | None = Field(None, min_length=1)
    models: list[PoolModelConfig] = []
    replicas: int = Field(1, ge=1)  # default replicas per model
    batch_window_ms: float = Field(5.0, ge=0)
    max_batch: int = Field(64, ge=1)
    server: ActorResources = ActorResources()  # each model server (replica)
    # small hf models share one server process (replica r of each in server r) instead of one each: one
    # torch import and one process for all of them, which is what a CPU pool of tiny models wants
    colocate: bool = False
    dispatcher: ActorResources = ActorResources(num_cpus=0)  # the ModelPool actor

    @model_validator(mode="after")
    def _shared(self) -> PoolConfig:
        if self.name and any(m.launch for m in self.models):
            raise ValueError("name: a shared pool outlives the job, a server the job launches (models[].launch) "
                             "does not; start that server yourself and give its url")
        return self


class ReasonConfig(Strict):
    """The chain's procedural review: a step whose `alpha`-quantile token probability is below `tau`
    is re-run on the next tier up (at most `max_escalations` times). A step whose model returned no
    log-probs (a hosted chat API that does not give them) has confidence `confidence_without_logprobs`:
    1.0, the default, trusts its answer (never escalated); 0.0 always escalates it."""

    alpha: float = Field(0.1, ge=0, le=1)
    tau: float = Field(0.5, ge=0, le=1)
    confidence_without_logprobs: float = Field(1.0, ge=0, le=1)
    max_escalations: int = Field(1, ge=0)
    max_steps: int = Field(6, ge=1)
    decompose_max_tokens: int = Field(24, ge=1)
    step_max_tokens: int | None = Field(None, ge=1)  # each pool call's answer budget (default: the task's own)
    escalation: Literal["next", "top"] = "next"  # one tier up, or straight to the largest model


class RewardConfig(Strict):
    """r = correct - lam * cost / cost_ref + beta * format_ok. `cost_ref` (USD per query) defaults to
    the reference method's (every step on the largest model) mean cost per query on the same task."""

    lam: float = Field(0.5, ge=0)
    beta: float = Field(0.1, ge=0)
    cost_ref: float | None = Field(None, gt=0)


class RllibConfig(Strict):
    """The `rllib-ppo` baseline (pipelines.bandit): a table of which pool model solves which gold subtask
    of `train_queries` train queries per task (and of the evaluated test queries) at what cost, then RLlib
    PPO on one-step episodes over it (a contextual bandit) on CPU env runners."""

    train_queries: int = Field(200, ge=1)  # per task, a seeded sample of the train split
    iterations: int = Field(10, ge=1)  # PPO training iterations
    batch: int = Field(1000, ge=1)  # env steps (= episodes) per iteration
    minibatch: int = Field(250, ge=1)
    epochs: int = Field(4, ge=1)
    lr: float = Field(1e-2, gt=0)
    entropy_coeff: float = Field(0.01, ge=0)
    hidden: list[int] = [32]  # the policy's MLP
    env_runners: int = Field(1, ge=0)  # 0: sample on the driver
    envs_per_runner: int = Field(64, ge=1)  # vectorised: one-step episodes are cheap, RLlib's per-step overhead is not
    cpus_per_env_runner: float = Field(0.5, gt=0)


class EvalConfig(Strict):
    methods: list[Name] = ["single:*", "all:*", "random", "task-router", "cascade", "two-tier"]
    tasks: list[str] = ["facts", "scan"]
    limit: int = Field(500, ge=1)  # test queries per task
    # the validation split: queries per task carved from the train split (at most half of it), kept out
    # of labels, SFT, GRPO, cost_ref and the trained baselines; every knob is chosen on it
    val_queries: int = Field(200, ge=1)
    # a knob method's setting: its cheapest whose validation accuracy is within `val_tolerance` of the
    # reference's (all:<largest>@<router>), else its most accurate
    val_tolerance: Fraction = 0.01
    # each knob method's sweep (its candidate settings, and its cost-accuracy curve on test, for AIQ): the
    # review threshold tau, the task-router's cumulative-probability threshold, random's share of steps
    # on the largest model
    sweep_tau: list[Fraction] = [0.3, 0.7, 0.95]
    sweep_threshold: list[Fraction] = [0.5, 0.8, 0.95]
    sweep_mix: list[Fraction] = [0.0, 0.5, 1.0]
    task_router_train: int = Field(400, ge=1)  # train queries per task labelled for the task-router
    router: Name = "r2"  # the headline router: baselines also run on its decomposer, the reference is all:<largest>@it
    rllib: RllibConfig = RllibConfig()  # the rllib-ppo baseline


class RouterConfig(Strict):
    """Which router `route`, `serve router` and evaluation use. A trained router lives in `path`
    (`decomposer/` and `allocator/` HF folders); without one, untrained policies start from the zoo
    checkpoint `init`, and `decomposer: gold` keeps the task's own decomposition."""

    path: str | None = None
    init: str | None = None  # zoo model name (default: the smallest)
    templates: Literal["tiny", "chat"] = "tiny"
    decomposer: Literal["policy", "gold"] = "gold"
    temperature: float = Field(0.0, ge=0)
    # the router's own tokens' price; default: interpolated by its policies' size on the zoo's price ladder
    price: PriceConfig | None = None


class LabelsConfig(Strict):
    """SFT label search (pipelines.labels). Label search spends real pool calls, so its budget is
    limited: labels for `fraction` of the training queries (at most `max_per_task`)."""

    fraction: float = Field(0.1, gt=0, le=1)  # queries that get an allocation label (search)
    decomposition_fraction: float = Field(0.25, gt=0, le=1)  # queries that get a decomposition label
    max_per_task: int = Field(2000, ge=1)
    # every decomposition length (steps of a query's candidate parse) gets at least this many decomposition
    # labels, or all the train split has (`pipelines.labels.top_up`); 0 = the uniform draw only
    min_per_length: int = Field(0, ge=0)
    # GPT-4-turbo's decompositions (R2R_DATA/decompositions/<task>.json, benchmarks.tasks.decompositions) as
    # the decomposition label of each query that has one, taken as given (a teacher's label, not searched);
    # queries without one are searched as usual
    given_decompositions: bool = False
    # the whole query as one step: a candidate scored like the others (`scored`, the paper's rule), or the
    # target only when no decomposition is solved (`fallback`)
    whole_query: Literal["scored", "fallback"] = "scored"
    w_concise: float = 0.2  # decomposition score weights: fewer steps,
    w_practical: float = 1.0  # solved by the reference model at few tokens,
    w_coherent: float = 0.1  # adjacent steps linked
    token_norm: float = Field(100.0, gt=0)
    difficulty_thresholds: list[Fraction] = [0.9, 0.6, 0.3]  # base-model confidence -> initial tier
    max_search_rounds: int = Field(6, ge=1)


class LoraConfig(Strict):
    """LoRA adapters (PEFT) on the router policies: only the adapters train, the base stays frozen, and a
    saved policy has its adapters merged (a plain HF folder)."""

    r: int = Field(8, ge=1)
    alpha: float = Field(16.0, gt=0)
    dropout: float = Field(0.0, ge=0, lt=1)
    target_modules: list[str] | None = None  # default: PEFT's choice for the architecture (q_proj, v_proj)

    def peft_kwargs(self) -> dict:
        return {"r": self.r, "lora_alpha": self.alpha, "lora_dropout": self.dropout,
                "target_modules": self.target_modules}


class DynamicSamplingConfig(Strict):
    """DAPO-style dynamic sampling of a GRPO step: groups without reward spread carry no learning signal,
    so the step samples further rounds of `queries_per_step` fresh queries (deterministic in seed, step
    and round) until it holds `queries_per_step` groups with spread, or `max_rounds` rounds (the first
    included) have run; it trains on those groups (fewer when the budget ran out)."""

    enabled: bool = False
    max_rounds: int = Field(3, ge=1)


class TrainConfig(Strict):
    """SFT then alternating GRPO (pipelines.sft, pipelines.train)."""

    init: str | None = None  # zoo model both policies start from (default: the largest)
    init_decomposer: str | None = None  # the decomposer's own (default: init)
    init_allocator: str | None = None  # the allocator's own (default: init)
    zero_stage: int = Field(1, ge=0, le=2)
    sft_epochs: int = Field(8, ge=1)  # allocator
    sft_epochs_decomposer: int = Field(50, ge=1)
    # dynamic NTK factor for decomposer inputs longer than its SFT data (policies.positions); 1 = off
    length_extrapolation: float = Field(1.0, ge=1.0)
    sft_lr: float = Field(5e-3, gt=0)  # peak; linear warmup, then cosine decay to 0
    sft_warmup_steps: int = Field(50, ge=0)
    sft_batch: int = Field(64, ge=1)
    micro_batch: int | None = Field(None, ge=1)  # items per forward/backward; a step accumulates gradients
    lora: LoraConfig | None = None  # train LoRA adapters instead of every weight (pretrained policies)
    label_smoothing: float = Field(0.2, ge=0, lt=1)
    weight_decay: float = Field(0.01, ge=0)
    grpo_steps: int = Field(40, ge=0)
    alternate_every: int = Field(10, ge=1)  # K: steps on one policy before switching
    queries_per_step: int = Field(32, ge=1)
    group_size: int = Field(4, ge=2)  # G
    grpo_lr: float = Field(1e-3, gt=0)
    grpo_lr_decomposer: float | None = Field(None, gt=0)  # default: grpo_lr
    clip: float = Field(0.2, gt=0)
    kl_coef: float = Field(0.2, ge=0)
    temperature: float = Field(1.0, gt=0)
    rollout_workers: int = Field(2, ge=1)
    rollout: ActorResources = ActorResources()  # each rollout worker
    sampler: Literal["hf", "vllm"] = "hf"  # how rollout workers sample the policies: transformers or vLLM engines
    vllm: PolicyEngineConfig = PolicyEngineConfig()  # each policy engine (sampler: vllm)
    learner: LearnerConfig = LearnerConfig()
    weight_sync: Literal["object_store", "collective"] = "object_store"  # collective: NCCL/gloo broadcast
    sync_backend: Literal["auto", "nccl", "gloo"] = "auto"  # auto: nccl with a GPU, else gloo
    sync_timeout_s: float = Field(300.0, gt=0)  # a weight sync that takes longer is an error naming the worker
    # one-step off-policy overlap: the next step's rollouts (sampled with the weights published before this
    # step's update, at most one version behind) run while the learner updates on this step's
    pipelined: bool = False
    dynamic_sampling: DynamicSamplingConfig = DynamicSamplingConfig()
    checkpoint_every: int = Field(10, ge=1)
    keep_checkpoints: int = Field(2, ge=1)  # complete checkpoints kept (older ones are removed)
    cost_ref_queries: int = Field(100, ge=1)
    seed: int = 0  # GRPO's sampling seed (the world keeps `seed`); seed k > 0 writes `*-seed{k}` outputs
    # GRPO runs of the main job (their spread is reported): seed 0 writes `r2`, seed k `r2-seed{k}`
    demo_seeds: list[Annotated[int, Field(ge=0)]] = Field([0, 1, 2], min_length=1)

    @model_validator(mode="after")
    def _sampler_sync(self) -> TrainConfig:
        if self.sampler == "vllm" and self.weight_sync != "object_store":
            raise ValueError("sampler vllm takes its weights through the object store (weight_sync: object_store); "
                             "a broadcast into the engines is not implemented")
        if self.sampler == "vllm" and self.lora is not None:
            raise ValueError("sampler vllm reloads whole weights: LoRA adapters (train.lora) need sampler hf")
        return self

    @property
    def suffix(self) -> str:
        return f"-seed{self.seed}" if self.seed else ""


class PlanConfig(Strict):
    """The memory model behind the placement plan (`python -m pipelines.train --dry-run`): bf16 weights
    plus the KV cache of `concurrent_sequences` x `context_tokens` per vLLM engine, the learner's
    weights, reference copies, gradients and AdamW state per ZeRO shard, all on one kind of GPU."""

    gpu: str = "A100-80GB"
    gpu_memory_gb: float = Field(80.0, gt=0)
    memory_utilization: float = Field(0.9, gt=0, le=1)  # the share of a GPU an engine or rank may fill
    overhead_gb: float = Field(4.0, ge=0)  # CUDA context, activations, graphs: per GPU
    context_tokens: int = Field(4096, ge=1)
    concurrent_sequences: int = Field(32, ge=1)  # per vLLM engine
    max_tensor_parallel: int = Field(8, ge=1)  # GPUs per node
    policy: ModelShape | None = None  # the decomposer's and allocator's shape (train.init)
    rollout_gpus: float = Field(1.0, ge=0)  # GPUs per rollout worker (its two policies in bf16)


class ServeConfig(Strict):
    """The HTTP endpoints (pipelines.serve). Requests with a body over `max_body_bytes` get a 413 and
    ones asking for more than `max_tokens_limit` new tokens a 400. With `api_key_env` set, the named
    environment variable holds the API key every request must carry (`Authorization: Bearer KEY`);
    without it the endpoint is open, so binding a non-loopback `host` logs a warning."""

    host: str = "127.0.0.1"
    port: int = Field(8000, ge=1, le=65535)
    max_body_bytes: int = Field(1 << 20, ge=1024)
    max_tokens_limit: int = Field(2048, ge=1)
    api_key_env: str | None = None


class WandbConfig(Strict):
    mode: Literal["online", "offline", "disabled"] = "offline"
    project: str = "r2-reasoner"


class Config(Strict):
    name: Name = "tiny"
    run_dir: Name = "runs/tiny"  # a path, or a URI (s3://, gs://, file://, ...): see core.storage
    seed: int = 0
    tasks: TasksConfig = TasksConfig()
    zoo: ZooConfig = ZooConfig()
    pool: PoolConfig = PoolConfig()
    reason: ReasonConfig = ReasonConfig()
    reward: RewardConfig = RewardConfig()
    router: RouterConfig = RouterConfig()
    labels: LabelsConfig = LabelsConfig()
    train: TrainConfig = TrainConfig()
    eval: EvalConfig = EvalConfig()
    plan: PlanConfig = PlanConfig()
    serve: ServeConfig = ServeConfig()
    wandb: WandbConfig = WandbConfig()

    @model_validator(mode="after")
    def _pool_has_models(self) -> Config:
        if not (self.pool.use_zoo and self.zoo.models) and not self.pool.models:
            raise ValueError("pool: no models (give pool.models, or zoo.models with pool.use_zoo: true)")
        return self

    @model_validator(mode="after")
    def _steps_cover_chains(self) -> Config:
        facts = self.tasks.facts
        longest = max([*facts.hops, *facts.held_out_hops]) if "facts" in self.tasks.enabled else 0
        if self.reason.max_steps < longest:
            raise ValueError(f"reason.max_steps: {self.reason.max_steps} steps cannot decompose the longest facts "
                             f"chain ({longest} hops, tasks.facts.hops / held_out_hops)")
        return self

    @model_validator(mode="after")
    def _every_task_in_a_step(self) -> Config:
        n = len(self.tasks.enabled)
        if self.train.grpo_steps and self.train.queries_per_step < n:
            raise ValueError(f"train.queries_per_step: {self.train.queries_per_step} queries per GRPO step cannot "
                             f"cover the {n} enabled tasks (tasks.enabled); a step draws as many of each")
        return self

    @property
    def run_path(self) -> Path:
        """The run directory on this machine: `run_dir` itself, or the staging copy of a URI (core.storage)."""
        return Storage(self.run_dir).local

    @property
    def zoo_dir(self) -> Path:
        return Storage(self.zoo.dir).local if self.zoo.dir else self.run_path / "zoo"

    def pool_ids(self) -> list[str]:
        """The pool's model ids as the config declares them (zoo models first, when they join)."""
        zoo = [m.name for m in self.zoo.models] if self.pool.use_zoo else []
        return zoo + [m.id for m in self.pool.models]


class ConfigError(ValueError):
    pass


def _set_path(tree: dict[str, Any], dotted: str, value: Any) -> None:
    keys = dotted.split(".")
    node: Any = tree
    for i, key in enumerate(keys[:-1]):
        if isinstance(node, list):
            node = node[int(key)]
            continue
        node = node.setdefault(key, {})
        if not isinstance(node, (dict, list)):
            raise ConfigError(f"{'.'.join(keys[: i + 1])}: is not a section, cannot set {dotted}")
    last = keys[-1]
    if isinstance(node, list):
        node[int(last)] = value
    else:
        node[last] = value


def parse_override(text: str) -> tuple[str, Any]:
    if "=" not in text:
        raise ConfigError(f"override {text!r}: expected key.path=value")
    key, raw = text.split("=", 1)
    return key.strip(), yaml.safe_load(raw) if raw.strip() else ""


def _format_error(err: ValidationError) -> str:
    first = err.errors()[0]
    where = ".".join(str(p) for p in first["loc"]) or "<root>"
    got = first.get("input")
    got_text = "" if isinstance(got, (dict, list)) or got is None else f" (got {got!r})"
    more = f" [+{err.error_count() - 1} more]" if err.error_count() > 1 else ""
    return f"{where}: {first['msg']}{got_text}{more}"


def _merge(base: dict, over: dict) -> dict:
    out = dict(base)
    for k, v in over.items():
        out[k] = _merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def _read_tree(path: Path, seen: tuple[Path, ...] = ()) -> dict:
    """A config file's tree; `base: other.yaml` (relative to the file) starts from that config."""
    if path.resolve() in seen:
        raise ConfigError(f"base: a cycle of configs: {' -> '.join(str(p) for p in (*seen, path))}")
    try:
        tree = yaml.safe_load(path.read_text()) or {}
    except (OSError, yaml.YAMLError) as err:
        raise ConfigError(f"cannot read config {path}: {err}") from None
    if not isinstance(tree, dict):
        raise ConfigError(f"config {path}: expected a mapping of fields, got {type(tree).__name__}")
    base = tree.pop("base", None)
    if base is None:
        return tree
    base_path = path.parent / base
    if not base_path.exists():
        raise ConfigError(f"base: config file not found: {base_path} (named in {path})")
    return _merge(_read_tree(base_path, (*seen, path.resolve())), tree)


def load_config(path: str | Path, overrides: list[str] | None = None) -> Config:
    path = Path(path)
    if not path.exists():
        raise ConfigError(f"config file not found: {path}")
    return config_from_tree(_read_tree(path), overrides)


def config_from_tree(tree: dict, overrides: list[str] | None = None) -> Config:
    """A validated config from a tree of fields (a config file's, or a stored `Config.model_dump()`)."""
    tree = copy.deepcopy(tree)
    for item in overrides or []:
        key, value = parse_override(item)
        _set_path(tree, key, value)
    try:
        cfg = Config.model_validate(tree)
    except ValidationError as err:
        raise ConfigError(_format_error(err)) from None
    _check_model_references(cfg)
    return cfg


def _check_model_references(cfg: Config) -> None:
    """Evaluation methods that name a model (`single:<id>`, `all:<id>`) name one of the pool's."""
    ids = cfg.pool_ids()
    for i, method in enumerate(cfg.eval.methods):
        model = method.partition(":")[2].partition("@")[0]
        if model and model != "*" and model not in ids:
            raise ConfigError(f"eval.methods.{i}: unknown model {model!r} in {method!r}; the pool: {ids}")


def add_config_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", default="configs/tiny.yaml", help="YAML config (default: %(default)s)")
    parser.add_argument(
        "--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
        help="override a config field, e.g. --set pool.replicas=2 (repeatable)",
    )


def config_parser(doc: str | None) -> argparse.ArgumentParser:
    """The argument parser every entry point starts from: its docstring plus --config and --set."""
    parser = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_config_args(parser)
    return parser


CONFIG_ERROR_EXIT = 2  # a usage error, as argparse's own


def config_from_args(args: argparse.Namespace) -> Config:
    """The entry points' config; a bad one ends the program with one line naming the field, exit code 2."""
    try:
        return load_config(args.config, args.overrides)
    except ConfigError as err:
        print(f"config error: {err}", file=sys.stderr)
        raise SystemExit(CONFIG_ERROR_EXIT) from None
