"""The typed configuration: one YAML file, validated here, strings become enums at this boundary."""
from __future__ import annotations

from enum import Enum
from typing import Optional, Union

from pydantic import Field, field_validator, model_validator

import runtimes as _runtimes
from pipeline.config_check import RegressionBudgets
from pipeline.config_strict import Strict
from pipeline.config_targets import Targets

MAX_INPUT_SIZE = 2048      # px; beyond it one image is 48 MiB as float, a batch no edge model takes


# ---------------------------------------------------------------- enums
class DataKind(str, Enum):
    digits = "digits"
    synthetic_digits = "synthetic-digits"
    imagefolder = "imagefolder"


class Device(str, Enum):
    auto = "auto"
    cpu = "cpu"
    cuda = "cuda"


class Strategy(str, Enum):
    linear_probe = "linear_probe"          # head only, fitted on cached frozen features
    lp_ft = "lp_ft"                        # that probe's head, then every layer at a small lr
    full = "full"
    gradual_unfreeze = "gradual_unfreeze"
    auto = "auto"                          # chosen from the data's size and the probe's accuracy


class Adaptation(str, Enum):
    none = "none"
    dann = "dann"


class Importance(str, Enum):
    l1 = "l1"
    l2 = "l2"
    bn_scale = "bn_scale"
    taylor = "taylor"
    auto = "auto"        # measured: see pipeline.prune.criterion_search


class QuantMethod(str, Enum):
    onnxruntime = "onnxruntime"
    nncf = "nncf"


class CalibMethod(str, Enum):
    minmax = "minmax"
    entropy = "entropy"
    percentile = "percentile"


# Every registered runtime (importing the registry loads no backend): a new runtime module is
# configurable, and measured by default, without a change here.
RuntimeName = Enum("RuntimeName", {name: name for name in _runtimes.RUNTIMES}, type=str)


# ---------------------------------------------------------------- sections
class DataSpec(Strict):
    """Where images come from. `root` is an ImageFolder tree: root/train/<class>/*, root/val/<class>/*."""

    kind: DataKind = DataKind.digits
    root: Optional[str] = None
    skip_corrupt: bool = False
    allow_leakage: bool = Field(False, description="train although val holds copies of training "
                                "images (same pixels); false: refuse, naming the pairs")
    allow_conflicting_labels: bool = Field(False, description="train although one picture is under "
                                           "two labels; false: refuse, naming them")
    near_duplicate_bits: int = Field(4, ge=0, le=32, description="val images whose 64-bit "
                                     "perceptual hash is within this many bits of a training "
                                     "image's are named as near copies (warned, recorded)")
    exclude: Union[list[str], str] = Field(
        default_factory=list, description="images left out of both splits: paths relative to "
        "data.root (train/<class>/<file>), as a list or the path of a text file with one per line; "
        "each must match an image (a config error names the one that does not)")
    synthetic_size: int = Field(3000, ge=10, description="images rendered for synthetic-digits")
    val_fraction: float = Field(0.25, gt=0, lt=1, description="held-out share for built-in datasets")

    @model_validator(mode="after")
    def _root_for_imagefolder(self):
        if self.kind == DataKind.imagefolder and not self.root:
            raise ValueError("data.root is required when data.kind is 'imagefolder' "
                             "(set it to a folder holding train/<class>/ and val/<class>/)")
        if self.exclude and self.kind != DataKind.imagefolder:
            raise ValueError(f"data.exclude names images of an ImageFolder tree, but data.kind is "
                             f"'{self.kind.value}'; remove data.exclude or set data.kind: imagefolder")
        return self


class Augment(Strict):
    random_resized_crop: Optional[tuple[float, float]] = Field(
        (0.8, 1.0), description="scale range of RandomResizedCrop; null disables")
    hflip: bool = False
    rotation_deg: float = Field(0.0, ge=0, le=180)
    color_jitter: float = Field(0.0, ge=0, le=1)
    mixup: float = Field(0.0, ge=0, description="Beta(a, a) of mixup, mixing whole images "
                         "(0: off); the batch's labels mix with them")
    cutmix: float = Field(0.0, ge=0, description="Beta(a, a) of cutmix, pasting a box of another "
                          "image (0: off); with mixup too, each batch takes one of the two")


class Train(Strict):
    """Settings of the one training loop shared by every training stage."""

    epochs: int = Field(10, ge=1)
    batch_size: int = Field(64, ge=1)
    lr: float = Field(1e-3, gt=0)
    weight_decay: float = Field(1e-4, ge=0)
    label_smoothing: float = Field(0.0, ge=0, lt=1)
    patience: int = Field(5, ge=1, description="epochs without val improvement before stopping")
    warmup_epochs: int = Field(0, ge=0)
    augment: Augment = Augment()
    ema: Optional[float] = Field(None, gt=0, lt=1, description="decay of an exponential moving "
                                 "average of the weights, per step (e.g. 0.998); the average is "
                                 "what is validated and kept. null: off")
    amp: bool = Field(True, description="mixed precision on CUDA (ignored on CPU)")
    freeze_norm_stats: bool = Field(False, description="BatchNorm keeps its running statistics "
                                    "(eval mode) while its scale and shift still train: small "
                                    "batches of augmented images then cannot drift the statistics "
                                    "the pretrained features and a probed head rely on")
    channels_last: bool = Field(True, description="train in NHWC memory format (faster "
                                "convolution kernels on CPU and GPU)")


class Run(Strict):
    name: str = "default"
    store: str = Field("runs", description="artifact store root")
    seed: int = 0
    device: Device = Device.auto
    threads: Union[int, str] = Field(
        "auto", description="CPU threads for training and evaluation (a number >= 1); auto: the "
        "cores this process may use (affinity mask and cgroup quota)")
    num_workers: int = Field(0, ge=0, description="data-loader worker processes")

    @field_validator("store")
    @classmethod
    def _store(cls, v: str):
        # "" would put the stage folders and the store's lock in whatever folder the run starts in
        if not v.strip():
            raise ValueError(f"run.store {v!r} is empty: set it to the folder the artifact store "
                             f"lives in (default: runs)")
        return v

    @field_validator("threads", mode="before")
    @classmethod
    def _threads(cls, v):
        if v == "auto" or (isinstance(v, int) and not isinstance(v, bool) and v >= 1):
            return v
        raise ValueError(f"run.threads must be a number of threads >= 1 or 'auto', got {v!r}")

    def thread_count(self) -> int:
        """`threads` as a number: `auto` resolves to this machine's usable cores."""
        if self.threads == "auto":
            from runtimes.cpus import usable_cores
            return usable_cores()
        return self.threads


class DannConfig(Strict):
    target: DataSpec = DataSpec(kind=DataKind.digits)
    weight: float = Field(1.0, gt=0, description="final weight of the domain loss (lambda)")
    gamma: float = Field(10.0, gt=0, description="ramp steepness: lambda_p = 2/(1+exp(-gamma p)) - 1")
    hidden: int = Field(256, ge=8, description="domain classifier hidden width")


class Finetune(Strict):
    backbone: str = "efficientnet_lite2"
    weights: str = Field("pretrained", description="pretrained | none | path to a checkpoint "
                         "(.safetensors, or a torch state dict); its content is part of the cache key")
    allow_partial_weights: bool = Field(False, description="train on when a weights checkpoint "
                                        "fills fewer than half of the backbone's tensors (the rest "
                                        "start random); false: refuse, naming the counts")
    input_size: Optional[int] = Field(None, ge=16, le=MAX_INPUT_SIZE,
                                      description="override the backbone's input size")
    crop_pct: Optional[float] = Field(None, gt=0, le=1, description="override the centre-crop share")
    strategy: Strategy = Strategy.full
    unfreeze_every: int = Field(1, ge=1, description="gradual_unfreeze: epochs between unfreezing a block")
    layer_decay: float = Field(1.0, gt=0, le=1, description="layer-wise lr decay (1.0: off)")
    drop_rate: float = Field(0.2, ge=0, lt=1)
    drop_path_rate: float = Field(0.0, ge=0, lt=1, description="stochastic depth: the chance a "
                                  "residual block is skipped in training (timm backbones)")
    probe_l2: list[float] = Field(default_factory=lambda: [1e-3, 1e-2, 0.1, 0.3, 1.0], min_length=1,
                                  description="L2 strengths the linear probe tries; the best on "
                                  "val is kept")
    train: Train = Train()
    adaptation: Adaptation = Adaptation.none
    dann: DannConfig = DannConfig()
    negative_transfer_check: bool = False


class Distill(Strict):
    student: str = Field("efficientnet_lite0", description="student backbone, or auto: the one of "
                         "student_candidates with the fewest MACs whose frozen-feature probe on val "
                         "is within student_within points of the teacher")
    student_candidates: list[str] = Field(
        default_factory=lambda: ["efficientnet_lite0", "efficientnet_lite1"], min_length=1,
        description="student: auto tries these (pretrained); any with as many MACs as the "
        "teacher is left out")
    student_within: float = Field(1.0, ge=0, description="student: auto: points of val top-1 the "
                                  "student's probe may lose against the teacher")
    weights: str = "pretrained"
    temperature: float = Field(4.0, gt=0)
    alpha: float = Field(0.7, ge=0, le=1, description="weight of the soft (teacher) loss")
    drop_rate: float = Field(0.2, ge=0, lt=1)
    probe_init: bool = Field(False, description="start both students from a linear probe of "
                             "their frozen features (the LP of LP-FT) instead of a random head")
    unlabelled_root: Optional[str] = Field(None, description="a folder of unlabelled images (any "
                                           "depth): each training step adds a batch of them, "
                                           "learnt from the teacher's soft targets only")
    compare_alone: bool = Field(True, description="also train the student alone, same budget")
    train: Train = Train()

    @model_validator(mode="after")
    def _auto_is_pretrained(self):
        if self.student == "auto" and self.weights != "pretrained":
            raise ValueError(f"distill.student: auto compares pretrained backbones; distill.weights "
                             f"'{self.weights}' belongs to one of them: name that student instead")
        return self


class Prune(Strict):
    importance: Importance = Field(Importance.l2, description="channel importance criterion; auto: "
                                   "taylor, l2 and bn_scale, each global and uniform, tried on copies "
                                   "and the one losing the fewest val points per ms saved is used "
                                   "(global_pruning is then chosen too)")
    global_pruning: bool = False
    ratio: Optional[float] = Field(0.5, gt=0, lt=1, description="fraction of MACs to remove "
                                   "(latency_budget_ms, when set, decides instead)")
    latency_budget_ms: Optional[float] = Field(None, gt=0, description="p50 latency to meet on "
                                               "budget_runtime; the least pruning that meets it wins")
    budget_runtime: RuntimeName = RuntimeName.onnxruntime
    budget_threads: int = Field(2, ge=1)
    budget_device: str = Field("cpu", description="device of budget_runtime: cpu, cuda, ...")
    budget_batch: int = Field(1, ge=1, description="batch size latency is measured (and budgeted) at")
    budget_max_ratio: float = Field(0.8, gt=0, lt=1,
                                    description="latency-budget mode: the most MACs the search may remove")
    budget_search_steps: int = Field(5, ge=1, description="bisections of the ratio in latency-budget mode")
    measure_seconds: float = Field(0.3, gt=0, description="timed seconds per model per measurement round")
    measure_rounds: int = Field(10, ge=1, description="short alternating rounds per model; the median "
                                "round is reported, ratios and intervals are taken over rounds (2 or more)")
    steps: int = Field(3, ge=1)
    max_accuracy_drop: Optional[float] = Field(
        1.0, ge=0, description="points of val top-1 the pruned model may lose against the "
        "unpruned student after recovery; pruning stops at the last step that keeps it, down to "
        "no pruning at all. null: no limit")
    round_to: int = Field(8, ge=1)
    ignored_layers: list[str] = Field(default_factory=list)
    layer_ratios: dict[str, float] = Field(default_factory=dict,
                                           description="layer name -> share of its channels to remove")
    refit_head: bool = Field(True, description="after each step, also try the classifier refitted "
                             "on the pruned network's frozen features (a linear probe, seconds), "
                             "before and after recovery; the best on val is kept")
    recover: Train = Train(epochs=3, lr=2e-4)

    @model_validator(mode="after")
    def _one_target(self):
        if self.ratio is None and self.latency_budget_ms is None:
            raise ValueError("prune needs prune.ratio or prune.latency_budget_ms")
        bad = {k: v for k, v in self.layer_ratios.items() if not 0 <= v < 1}
        if bad:
            raise ValueError(f"prune.layer_ratios {bad}: each ratio must be in [0, 1)")
        return self


class Calibration(Strict):
    size: int = Field(300, ge=1)
    seed: int = 0
    method: CalibMethod = CalibMethod.minmax


class QuantScheme(str, Enum):
    auto = "auto"                        # u8s8 where the CPU has VNNI, else 7-bit weights
    u8s8 = "u8s8"
    u8s8_reduce_range = "u8s8_reduce_range"
    u8u8 = "u8u8"
    s8s8 = "s8s8"                        # zero-point-0 activations: what TensorRT accepts


class PTQVariant(str, Enum):
    """Other ways of quantizing, tried when plain PTQ misses the budget (exporters.quant_variants)."""
    percentile = "percentile"                      # calibration ranges at the 99.999th percentile
    # Ranges by KL divergence. Not a default: ONNX Runtime's entropy calibrator histograms into
    # as many bins as it quantizes to (128), which reproduces the min-max ranges (measured: the
    # same file as plain PTQ on a trashnet5 subset, after three minutes of calibration).
    entropy = "entropy"
    nncf_bias_correction = "nncf_bias_correction"  # NNCF's PTQ with bias correction (needs nncf)


class QAT(Strict):
    """Quantization-aware fine-tuning, tried when every PTQ option misses the budget."""
    enabled: bool = True
    epochs: int = Field(3, ge=1, description="passes over augmented views of the training images")
    lr: float = Field(1e-5, gt=0, description="Adam learning rate: small, the float model is already trained")
    max_seconds: float = Field(300.0, gt=0, description="time limit of the fine-tuning itself")
    batch_size: int = Field(32, ge=1)


class Quantize(Strict):
    method: QuantMethod = QuantMethod.onnxruntime
    scheme: QuantScheme = QuantScheme.auto
    calibration: Calibration = Calibration()
    per_channel: bool = True
    max_accuracy_drop: float = Field(1.0, ge=0, description="points of val top-1")
    variants: list[PTQVariant] = Field(
        default_factory=lambda: [PTQVariant.percentile, PTQVariant.nncf_bias_correction],
        description="PTQ variants tried when plain PTQ misses max_accuracy_drop, chosen by agreement "
                    "with FP32 on augmented training views ([] to skip)")
    selection_views: int = Field(256, ge=1, description="augmented training views that choose among the variants")
    max_float_layers: int = Field(10, ge=0, description="most layers the accuracy search keeps in float")
    rank_candidates: int = Field(64, ge=1, description="layers ranked by reverting each, each costing one "
                                 "quantization (with more layers: the first and last, then the noisiest by "
                                 "a cheap rounding-noise proxy)")
    sensitivity_samples: int = Field(256, ge=1, description="val images the layer ranking looks for flips in")
    qat: QAT = QAT()


class TensorRT(Strict):
    precisions: list[str] = Field(default_factory=lambda: ["fp16", "int8"])
    optimization_level: int = Field(3, ge=0, le=5)
    workspace_mb: int = Field(1024, ge=16)
    use_trtexec: bool = False


class Export(Strict):
    opset: int = Field(18, ge=17)
    dynamic_batch: bool = False
    openvino_precisions: list[str] = Field(default_factory=lambda: ["fp32", "fp16", "int8"])
    tensorrt: TensorRT = TensorRT()
    golden_inputs: int = Field(8, ge=1)


class Benchmark(Strict):
    runtimes: list[RuntimeName] = Field(default_factory=lambda: list(RuntimeName))
    batch_sizes: list[int] = Field(default_factory=lambda: [1])
    warmup: int = Field(10, ge=0)
    min_iterations: int = Field(50, ge=1)
    min_seconds: float = Field(2.0, ge=0, description="timed seconds per row in all, spread over the rounds")
    rounds: int = Field(8, ge=2, description="interleaved rounds: every row timed once per round in a "
                        "shuffled order; ratios and their intervals are taken round by round, so "
                        "more rounds narrow them (cost: about warmup + 2 runs per row per round)")
    threads: int = Field(2, ge=1)
    cuda: bool = Field(True, description="also benchmark on a CUDA GPU when one is present")
    accuracy_images: Optional[int] = Field(None, ge=1, description="val images scored per artifact "
                                           "and runtime (null: the whole val split)")
    openvino_pin_precision: bool = Field(
        True, description="compile OpenVINO at the artifact's precision (f32 for fp32 and int8 "
        "artifacts, f16 for fp16 where the device computes in f16, else f32); false: the device "
        "default (bf16 on CPUs with AVX512-BF16 or AMX)")
    target: str = Field("cpu", description="device of the headline: the deployed model is picked "
                        "among rows on this device ('cpu', 'cuda')")
    deploy_tolerance: float = Field(1.0, ge=0, description="points of val top-1 the deployed model "
                                    "may lose against the teacher; the fastest (p90) artifact "
                                    "within it is the deployed model")

    @model_validator(mode="after")
    def _batches(self):
        if not self.batch_sizes or any(b < 1 for b in self.batch_sizes):
            raise ValueError(f"benchmark.batch_sizes {self.batch_sizes} must be a non-empty list of "
                             "sizes >= 1, e.g. [1, 8]")
        return self


class Check(RegressionBudgets):
    min_accuracy: Optional[float] = Field(None, description="val top-1 (%) of the deployed model")
    max_accuracy_drop: Optional[float] = Field(None, description="points below the teacher")
    max_p90_ms: dict[str, float] = Field(
        default_factory=dict, description="'runtime/device' -> ms: p90 at the headline batch of the "
        "fastest artifact on that runtime and device within benchmark.deploy_tolerance")
    max_p90_vs_teacher: dict[str, float] = Field(
        default_factory=dict, description="'runtime/device' -> ratio: p90 of that same artifact "
        "over the teacher's p90 in PyTorch eager FP32 (0.5: at least twice as fast)")
    max_size_mb: Optional[float] = None
    max_leaked_images: Optional[int] = Field(
        None, ge=0, description="val images with an exact or near copy in train (the data "
        "audit's count; exact copies reach the gate only under data.allow_leakage)")
    junit: str = "check-junit.xml"


class Config(Strict):
    run: Run = Run()
    data: DataSpec = DataSpec()
    finetune: Finetune = Finetune()
    distill: Distill = Distill()
    prune: Prune = Prune()
    quantize: Quantize = Quantize()
    export: Export = Export()
    benchmark: Benchmark = Benchmark()
    check: Check = Check()
    targets: Targets = Field(default_factory=list, description="machines measured besides this "
                             "one (see pipeline/config_targets.py); empty: this machine only")
