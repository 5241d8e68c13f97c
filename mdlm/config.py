"""Typed, frozen settings of one profile: the sections of a `params.yaml` profile block and their defaults.

Every section is a pydantic model that forbids unknown keys and checks types strictly (a YAML string is
never read as a number); validation happens once, when `mdlm.profiles.load_profile` builds a `Profile`.
Library modules take the section they need (e.g. `SampleSettings`) as a plain value; only command modules
hold a whole `Profile`. Defaults live here and nowhere else.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from mdlm.errors import UserError

PositiveInt = Annotated[int, Field(gt=0)]
NonNegativeInt = Annotated[int, Field(ge=0)]
PositiveFloat = Annotated[float, Field(gt=0)]
Fraction01 = Annotated[float, Field(ge=0.0, lt=1.0)]


class Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, strict=True)


class DataSettings(Section):
    sources: list[str | dict[str, Any]] = Field(min_length=1)
    seq_len: Annotated[int, Field(ge=3)]
    wrap: bool
    valid_frac: Fraction01 = 0.0
    test_frac: Fraction01 = 0.0
    valid_docs: PositiveInt | None = None
    max_docs: PositiveInt | None = None

    @model_validator(mode="after")
    def _splits(self) -> DataSettings:
        if self.valid_frac + self.test_frac >= 1:
            raise ValueError("valid_frac + test_frac must be < 1")
        if self.valid_docs is not None and (self.valid_frac or self.test_frac):
            raise ValueError("set valid_docs or valid_frac/test_frac, not both")
        return self


class ModelSettings(Section):
    hidden: PositiveInt
    heads: PositiveInt
    cond_dim: PositiveInt
    heavy_blocks: PositiveInt
    light_blocks: PositiveInt
    dropout: Annotated[float, Field(ge=0.0, lt=1.0)] = 0.0
    time_conditioning: bool = False

    @model_validator(mode="after")
    def _heads_divide(self) -> ModelSettings:
        if self.hidden % self.heads:
            raise ValueError(f"hidden {self.hidden} is not divisible by heads {self.heads}")
        return self

    def blocks(self, which: str) -> int:
        """Number of transformer blocks of the `heavy` or `light` model."""
        return {"heavy": self.heavy_blocks, "light": self.light_blocks}[which]


class CheckpointSettings(Section):
    source: Literal["train", "shipped"] = "train"
    dir: str | None = None  # the shipped pair's folder (source: shipped)
    heavy_hf: str | None = None  # a Hugging Face export of the heavy model (mdlm-owt), used when present

    @model_validator(mode="after")
    def _shipped_dir(self) -> CheckpointSettings:
        if self.source == "shipped" and not self.dir:
            raise ValueError("source: shipped needs dir")
        return self


class TrainSettings(Section):
    steps: PositiveInt
    batch_size: PositiveInt
    lr: Annotated[float, Field(gt=0.0)]
    warmup: NonNegativeInt
    lr_schedule: Literal["constant", "cosine"] = "constant"
    min_lr_frac: Annotated[float, Field(ge=0.0, le=1.0)] = 0.1
    weight_decay: Annotated[float, Field(ge=0.0)] = 0.0
    grad_clip: Annotated[float, Field(gt=0.0)] = 1.0
    ema: Annotated[float, Field(ge=0.0, lt=1.0)] = 0.9999
    eval_every: PositiveInt = 1000
    eval_batches: PositiveInt = 8
    ckpt_every: PositiveInt = 1000
    seed: NonNegativeInt = 0
    num_threads: NonNegativeInt = 0  # 0: torch's default
    unigram_init: bool = True  # output bias starts at the log unigram frequencies of the training data


class SampleSettings(Section):
    steps: PositiveInt
    num_samples: PositiveInt
    batch_size: PositiveInt
    seed: NonNegativeInt = 0
    precision: str = "float64"  # checked against mdlm.sampling_law.PRECISIONS by the sampler
    top_p: Annotated[float, Field(gt=0.0, le=1.0)] = 1.0
    predictor: Literal["ddpm_cache", "ddpm"] = "ddpm_cache"
    noise_removal: bool = True
    # CPU worker processes of `mdlm sample`, one thread each, samples sharded round-robin (docs/sampler.md)
    workers: PositiveInt = 1


class EvaluateSettings(Section):
    judge: str
    batch_size: PositiveInt = 8
    bootstrap: PositiveInt = 2000
    seed: NonNegativeInt = 0
    eos_text: str | None = None  # default: from the profile's tokenizer (mdlm.judge.markers_for)
    bos_text: str | None = None
    # gen-PPL rule (docs/evaluation.md): the suite's, or the reference's (kuleshov-group/mdlm)
    genppl_protocol: Literal["suite", "mdlm"] = "suite"
    retokenize_length: PositiveInt | None = None  # mdlm rule: judge ids kept per sample; default data.seq_len
    drop_remainder: bool = False  # mdlm rule: leave the last N % batch_size samples unscored, as the reference


class ImportanceSettings(Section):
    bins: PositiveInt
    num_sequences: PositiveInt
    batch_size: PositiveInt
    seed: NonNegativeInt = 0
    swap_segments: PositiveInt = 8
    swap_samples: PositiveInt | None = None  # default: search.num_samples
    swap_first_index: NonNegativeInt = 200_000  # swap samples: [swap_first_index, + swap samples)


class SearchSettings(Section):
    segments: PositiveInt
    light: PositiveInt
    num_samples: PositiveInt
    first_index: NonNegativeInt = 100_000  # search samples: [first_index, + num_samples)

    @model_validator(mode="after")
    def _light_fits(self) -> SearchSettings:
        if self.light >= self.segments:
            raise ValueError(f"light {self.light} must be < segments {self.segments}")
        return self


class OptimizeSettings(Section):
    budget: str | Annotated[float, Field(gt=0.0, lt=1.0)] = "sandwich"
    max_light_segments: PositiveInt = 2


FrontierFamily = Literal["sandwich", "light-first", "light-last", "light-middle"]
OPTIMIZED_FAMILY = "optimized"  # the optimizer's schedule at each light fraction of the grid (`optimized: true`)


class FrontierSettings(Section):
    """The quality-compute frontier grid (`mdlm frontier`, docs/frontier.md); checked by `mdlm.frontier`."""

    step_counts: list[int] = Field(min_length=1)  # T of the all-heavy / all-light step-count baselines
    baseline_models: list[Literal["heavy", "light"]] = ["heavy", "light"]
    families: list[FrontierFamily] = Field(min_length=1)  # placement families at the profile's T
    fractions: list[float] = Field(min_length=1)  # light fractions in (0, 1)
    reduced_steps: list[int] = []  # the combination: placement families at these (smaller) T
    # default: all of `families` (and `optimized` when on); may list `optimized` only when `optimized` is true
    reduced_families: list[FrontierFamily | Literal["optimized"]] | None = None
    num_samples: PositiveInt | None = None  # default: sample.num_samples
    max_steps_factor: PositiveInt = 4  # every T must be <= max_steps_factor * sample.steps
    # also run `mdlm optimize`'s placement at each light fraction (needs the importance and search outputs)
    optimized: bool = False

    @model_validator(mode="after")
    def _optimized_switch(self) -> FrontierSettings:
        if OPTIMIZED_FAMILY in (self.reduced_families or []) and not self.optimized:
            raise ValueError("reduced_families lists optimized but optimized is false")
        return self


class ClaimsSettings(Section):
    """The pre-stated tests of the paper's claims (docs/claims.md): margins, error rate and target power."""

    sandwich_margin: Annotated[float, Field(gt=0.0)] = 0.05  # δ on Δ log gen-PPL (non-inferiority, claim b)
    entropy_margin: Annotated[float, Field(gt=0.0)] = 0.05  # ε in nats on Δ unigram entropy (equivalence, claim c)
    alpha: Annotated[float, Field(gt=0.0, lt=0.5)] = 0.05  # family-wise error rate per claim (Holm)
    power: Annotated[float, Field(gt=0.5, lt=1.0)] = 0.8  # for minimum detectable effects and sample counts


class TimingSettings(Section):
    """The controlled wall-clock measurement (`mdlm timing`): interleaved rounds of every schedule."""

    rounds: Annotated[int, Field(ge=2)] = 6  # timed rounds; the median's 95% interval needs >= 6
    samples: PositiveInt = 8  # sample indices 0..samples-1 of sample.seed, the same in every round
    threads: PositiveInt = 1  # torch.set_num_threads for the whole measurement, in each worker
    # processes that share the rounds, each timing every schedule (pairs are formed within a worker's round):
    # one per core halves the stage's wall time, and times the schedules as `mdlm sample`'s workers run them,
    # beside another sampling process
    workers: PositiveInt = 1
    warmup: NonNegativeInt = 1  # untimed runs of all-heavy first (allocator, caches, lazy init)
    steps: PositiveInt | None = None  # T (default: sample.steps)
    # seconds a round runs one schedule's calls before it turns to the run least far along: short enough to see
    # the machine the other schedules see, long enough that switching (caches and allocator warmed by another
    # run) costs little; on the project machine slices of 1 call biased all-light's saving by 3 points of
    # all-heavy's time, slices of 20-50 calls (0.1-0.5 s) by under 1
    slice_s: PositiveFloat = 0.25
    # the schedules timed, all-heavy (the reference of every round) among them; None: every schedule of the
    # pipeline (params.yaml `schedules`). A round costs the sum of its schedules' runs, so a profile whose
    # `dvc repro` must fit a time budget can time a few and leave the others to a profile that times them all
    schedules: list[str] | None = Field(default=None, min_length=1)

    @model_validator(mode="after")
    def _reference_timed(self) -> TimingSettings:
        if self.schedules is not None:
            if "all-heavy" not in self.schedules:
                raise ValueError(f"schedules {self.schedules} must include all-heavy, the reference of every round")
            if len(set(self.schedules)) != len(self.schedules):
                raise ValueError(f"schedules {self.schedules} must be distinct")
        return self


class Profile(Section):
    """One profile block of params.yaml, validated; `name` is the block's key."""

    name: str
    tokenizer: Literal["gpt2", "bert-base-uncased", "bpe-8k"]
    assets: list[str] = Field(default_factory=list)
    data: DataSettings
    model: ModelSettings
    checkpoints: CheckpointSettings = CheckpointSettings()
    train: TrainSettings
    sample: SampleSettings
    evaluate: EvaluateSettings
    importance: ImportanceSettings | None = None
    search: SearchSettings | None = None
    optimize: OptimizeSettings = OptimizeSettings()
    frontier: FrontierSettings | None = None
    claims: ClaimsSettings = ClaimsSettings()

    @model_validator(mode="after")
    def _disjoint_sample_ranges(self) -> Profile:
        message = overlap_message(self.sample_ranges())
        if message:
            raise ValueError(message)
        return self

    def sample_ranges(self, swap_samples: int | None = None) -> dict[str, tuple[int, int]]:
        """{label: (start, stop)} of the evaluation, search and swap-sensitivity sample indices.

        Every stage samples with `sample.seed`, keyed by (seed, sample_index): disjoint index ranges are
        independent samples, so selection (search, swap sensitivity, optimizer calibration) never sees the
        evaluation samples [0, sample.num_samples) of the numbers it is judged by (docs/claims.md).
        """
        ranges = {"evaluation (sample.num_samples)": (0, self.sample.num_samples)}
        if self.frontier is not None and (self.frontier.num_samples or 0) > self.sample.num_samples:
            # the frontier evaluates on [0, frontier.num_samples): the evaluation range, extended
            ranges = {"evaluation (frontier.num_samples)": (0, self.frontier.num_samples)}
        if self.search is not None:
            s = self.search
            ranges["search (search.first_index)"] = (s.first_index, s.first_index + s.num_samples)
        if self.importance is not None:
            imp = self.importance
            n = swap_samples or imp.swap_samples or (self.search.num_samples if self.search else 0)
            if n:
                ranges["swap sensitivity (importance.swap_first_index)"] = (imp.swap_first_index,
                                                                             imp.swap_first_index + n)
        return ranges
    timing: TimingSettings = TimingSettings()

    def require(self, section: str) -> Any:
        """The section ``section``, or a clear error when this profile does not define it."""
        value = getattr(self, section)
        if value is None:
            raise UserError(f"params.yaml: profiles.{self.name} has no `{section}` section")
        return value


def overlap_message(ranges: dict[str, tuple[int, int]]) -> str | None:
    """None when the named half-open ranges {label: (start, stop)} are pairwise disjoint, else the first clash."""
    items = sorted(ranges.items(), key=lambda kv: kv[1])
    for (a, (a0, a1)), (b, (b0, b1)) in zip(items, items[1:], strict=False):
        if b0 < a1:
            return (f"sample-index ranges overlap: {a} [{a0}, {a1}) and {b} [{b0}, {b1}); selection and "
                    f"evaluation must use disjoint sample indices")
    return None
