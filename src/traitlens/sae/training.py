"""``traitlens train``: train one SAE or a sweep of SAEs on one shuffled stream of a store layer.

Every SAE of a sweep sees the same batches (read once per step). Checkpoints hold everything the
future depends on — weights, optimizer moments, dead-latent counters, RNG, step (which is also the
reader's position, since the shuffled stream can start at any batch) — so ``--resume`` after a
kill ends identical to an uninterrupted run. Under torchrun each worker takes a slice of every
global batch and gradients are averaged, which matches one process with the same global batch.
"""

from __future__ import annotations

import json
import logging
import shutil
import zlib
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, get_args

import torch
import torch.distributed as dist
from safetensors import SafetensorError
from safetensors.torch import load_file
from tqdm import tqdm

from traitlens.atomic import atomic_write_json, save_tensors
from traitlens.distributed import Workers, workers_from_env
from traitlens.errors import DataError, TraitlensError
from traitlens.optim_state import load_optimizer_tensors, optimizer_tensors
from traitlens.output_folder import OWNER_FILE, claim_output_folder
from traitlens.sae.config import (
    PRECISIONS,
    Normalization,
    SAEConfig,
    SAEConfigError,
    check_choice,
    check_int,
    check_number,
    is_int,
)
from traitlens.sae.encoding import Encoding
from traitlens.sae.init import BiasInit, initialize_from_data, set_normalization
from traitlens.sae.io import (
    CONFIG,
    check_finite,
    first_line,
    read_sae_config,
    save_sae,
)
from traitlens.sae.logging_sinks import LOG_FILE, SINKS, MetricSinks
from traitlens.sae.metrics import DENSE_FREQUENCY, explained_variance
from traitlens.sae.model import SparseAutoencoder
from traitlens.sae.schedule import learning_rate, sparsity_coefficient
from traitlens.sae.sparse import SparseCodes, decode_codes, preactivations_at
from traitlens.store import ActivationStore, ShuffleConfig

log = logging.getLogger(__name__)

CHECKPOINT_DIR = "checkpoint"
CHECKPOINT_STATE = "state.json"


class TrainingError(TraitlensError):
    """Training cannot start or continue as asked."""


@dataclass(frozen=True)
class RunConfig:
    """One SAE of a sweep: its architecture, learning rate and sparsity penalty (L1 for ``relu``,
    L0 for ``jumprelu``; TopK-family SAEs need none)."""

    sae: SAEConfig
    lr: float = 3e-4
    sparsity_coefficient: float = 0.0

    def __post_init__(self) -> None:
        if not isinstance(self.sae, SAEConfig):
            raise TrainingError(f"a run needs an SAEConfig, got {type(self.sae).__name__}")
        check_number("lr", self.lr, TrainingError, positive=True)
        check_number("sparsity coefficient", self.sparsity_coefficient, TrainingError)

    @property
    def name(self) -> str:
        cfg = self.sae
        parts = [cfg.activation, f"w{cfg.width}"]
        parts += [f"k{cfg.k}"] if cfg.is_sparse_coded else [f"c{self.sparsity_coefficient:g}"]
        # nesting is named unless the architecture nests by default
        parts += ["matryoshka"] if cfg.nested_widths and not cfg.architecture.default_matryoshka_widths(cfg.width) else []
        return "_".join([*parts, f"lr{self.lr:g}"])

    def to_dict(self) -> dict[str, Any]:
        return {"sae": self.sae.to_dict(), "lr": self.lr, "sparsity_coefficient": self.sparsity_coefficient}


@dataclass(frozen=True)
class TrainConfig:
    acts: Path
    layer: str
    out: Path
    runs: tuple[RunConfig, ...]
    n_tokens: int
    batch_size: int = 4096
    seed: int = 0
    warmup_steps: int = 50
    final_lr_fraction: float = 0.0
    sparsity_warmup_steps: int = 100
    grad_clip: float = 1.0
    aux_k: int = 512
    aux_coefficient: float = 1 / 32
    dead_after_tokens: int = 1_000_000
    bias_init: BiasInit = "geometric_median"
    data_init: bool = False
    init_sample_tokens: int = 16384
    checkpoint_every: int = 100
    log_every: int = 10
    strict: bool = False
    device: str = "auto"
    log_to: tuple[str, ...] = ()
    precision: str = "float32"

    def __post_init__(self) -> None:
        if not isinstance(self.runs, tuple) or not all(isinstance(run, RunConfig) for run in self.runs):
            raise TrainingError("runs must be a tuple of RunConfig")
        if not self.runs:
            raise TrainingError("nothing to train: no SAE configurations given")
        for name in ("n_tokens", "batch_size", "aux_k", "dead_after_tokens", "init_sample_tokens", "checkpoint_every", "log_every"):
            check_int(name, getattr(self, name), 1, TrainingError)
        for name in ("seed", "warmup_steps", "sparsity_warmup_steps"):
            check_int(name, getattr(self, name), 0, TrainingError)
        check_number("final_lr_fraction", self.final_lr_fraction, TrainingError, at_most=1.0)
        check_number("grad_clip", self.grad_clip, TrainingError, positive=True)
        check_number("aux_coefficient", self.aux_coefficient, TrainingError)
        check_choice("bias init", self.bias_init, get_args(BiasInit), TrainingError)
        check_choice("precision", self.precision, PRECISIONS, TrainingError)
        for sink in self.log_to:
            check_choice("metrics sink", sink, SINKS, TrainingError)

    @property
    def total_steps(self) -> int:
        return max(1, -(-self.n_tokens // self.batch_size))

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data.update(acts=str(self.acts), out=str(self.out), runs=[run.to_dict() for run in self.runs], log_to=list(self.log_to))
        return data


@dataclass
class _Run:
    """One SAE being trained, with the state that goes into checkpoints."""

    config: RunConfig
    sae: SparseAutoencoder
    optimizer: torch.optim.Adam
    tokens_since_fired: torch.Tensor
    fires_in_window: torch.Tensor
    tokens_in_window: int = 0
    last_metrics: dict[str, float] = field(default_factory=dict)

    def state_tensors(self, prefix: str) -> dict[str, torch.Tensor]:
        tensors = {f"{prefix}.model.{k}": v for k, v in self.sae.state_dict().items()}
        tensors.update(optimizer_tensors(self.optimizer, f"{prefix}.optim"))
        tensors[f"{prefix}.tokens_since_fired"] = self.tokens_since_fired
        tensors[f"{prefix}.fires_in_window"] = self.fires_in_window
        return tensors

    def load_state_tensors(self, prefix: str, tensors: dict[str, torch.Tensor]) -> None:
        model = {k[len(prefix) + 7 :]: v for k, v in tensors.items() if k.startswith(f"{prefix}.model.")}
        self.sae.load_state_dict(model, strict=True)
        load_optimizer_tensors(self.optimizer, f"{prefix}.optim", tensors)
        self.tokens_since_fired = tensors[f"{prefix}.tokens_since_fired"].clone()
        self.fires_in_window = tensors[f"{prefix}.fires_in_window"].clone()


def _reduce(tensor: torch.Tensor, workers: Workers, op: Any = None) -> torch.Tensor:
    if workers.world_size > 1:
        dist.all_reduce(tensor, op=op or dist.ReduceOp.SUM)
    return tensor


class Trainer:
    """Trains the runs of a :class:`TrainConfig` on one worker (one of several under torchrun)."""

    def __init__(self, config: TrainConfig, workers: Workers, resume: bool) -> None:
        self.config = config
        self.workers = workers
        self.device = workers.device(config.device)
        self.store = ActivationStore(config.acts)
        self.layer = self.store.layer(config.layer)
        for run in config.runs:
            if run.sae.d_in != self.layer.width:
                raise TrainingError(f"SAE input width {run.sae.d_in} does not match layer {self.layer.name} "
                                    f"of {config.acts} (width {self.layer.width})")
        if config.batch_size % workers.world_size:
            raise TrainingError(f"--batch-size {config.batch_size} must divide evenly over {workers.world_size} workers")
        names = [run.name for run in config.runs]
        if len(set(names)) != len(names):
            raise TrainingError(f"the sweep repeats a configuration: {', '.join(names)}")
        self.stats = self.store.stats(self.layer.name)
        if self.stats.count == 0:
            raise TrainingError(f"layer {self.layer.name} of {config.acts} has no finite tokens to train on "
                                f"({self.layer.n_tokens} stored, {self.stats.n_nonfinite} NaN/Inf)")
        checkpoint = config.out / CHECKPOINT_DIR / CHECKPOINT_STATE
        if workers.is_main:
            self._claim_output(resume, checkpoint)
        workers.barrier()
        self.step = 0
        self.n_nonfinite = 0
        self.runs = [self._new_run(run) for run in config.runs]
        self.complete = resume and not checkpoint.is_file() and self._finished()
        if resume and checkpoint.is_file():
            self._load_checkpoint(checkpoint)
        elif not self.complete:
            self._initialize_from_data()

    def _claim_output(self, resume: bool, checkpoint: Path) -> None:
        """``--out`` must be new, empty or this command's own; an earlier run is continued only
        with ``resume`` (a folder holding nothing but the ownership mark is a run that never began),
        and only when it is this configuration's: saved SAEs of another one are never mixed in."""
        out = self.config.out
        earlier = claim_output_folder(out, "train", resumable=True, own_files=(LOG_FILE, CHECKPOINT_DIR), error=TrainingError)
        if not earlier or not any(path.name != OWNER_FILE for path in out.iterdir()):
            return
        if not resume:
            hint = "train(..., resume=True) continues it" if checkpoint.is_file() else "it is kept as it is"
            raise TrainingError(f"{out} already holds training output ({hint}); use another --out")
        # saved SAEs of this configuration (a sweep killed while saving) are its own: trained again
        # to the same bytes; those of any other configuration or store are never mixed in
        for path in (out / CONFIG, *out.glob(f"*/{CONFIG}")):
            if path.is_file() and not self._is_own(path.parent):
                raise TrainingError(f"{out} already holds training output of another configuration or store "
                                    f"({path.parent}); use another --out")

    def _finished(self) -> bool:
        """Whether every SAE of this configuration is saved; a finished run of another
        configuration in ``--out`` is refused rather than taken for this one."""
        if not all((directory / CONFIG).is_file() for directory in self.result_dirs):
            return False
        for directory in self.result_dirs:
            if not self._is_own(directory):
                raise TrainingError(f"{directory} holds an SAE trained with a different configuration or on another store; "
                                    "use another --out")
        return True

    def _store_identity(self) -> dict[str, Any]:
        """What the tokens trained on are: a store extracted again with another model or images is another run."""
        return {"model": self.store.model.spec, "weights_fingerprint": self.store.model.weights_fingerprint,
                "dataset_fingerprint": self.store.dataset.fingerprint, "tokens_kind": self.store.tokens}

    def _is_own(self, directory: Path) -> bool:
        """Whether the SAE saved in ``directory`` was trained by this configuration on this store
        (fields an older traitlens did not record are not compared)."""
        saved = read_sae_config(directory)
        training = saved.get("training")
        if not isinstance(training, dict) or _identity(training) != self._checkpoint_identity():
            return False
        return all(saved.get(key, value) == value for key, value in self._store_identity().items())

    @property
    def result_dirs(self) -> list[Path]:
        """Where each SAE is saved: ``out`` itself for one SAE, ``out/<run name>`` in a sweep."""
        if len(self.config.runs) == 1:
            return [self.config.out]
        return [self.config.out / run.name for run in self.config.runs]

    # -- set-up ----------------------------------------------------------------------------------
    def _run_seed(self, run: RunConfig) -> int:
        """A run's own seed, from its name: an SAE starts the same alone or inside a sweep."""
        return self.config.seed * 1_000_003 + zlib.crc32(run.name.encode())

    def _new_run(self, run: RunConfig) -> _Run:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(self._run_seed(run))
            sae = SparseAutoencoder(run.sae)
        set_normalization(sae, self.stats)
        sae.to(self.device)
        optimizer = torch.optim.Adam(sae.parameters(), lr=run.lr, betas=(0.9, 0.999))
        zeros = torch.zeros(run.sae.width, dtype=torch.int64, device=self.device)
        return _Run(run, sae, optimizer, zeros.clone(), zeros.clone())

    def _initialize_from_data(self) -> None:
        sample_nd = self._sample(self.config.init_sample_tokens)
        for run in self.runs:
            generator = torch.Generator().manual_seed(self._run_seed(run.config))
            initialize_from_data(run.sae, sample_nd, self.config.bias_init, self.config.data_init, generator)

    def _sample(self, n_tokens: int) -> torch.Tensor:
        """The first tokens of a separately seeded stream, the same on every worker: read row by row
        (uniform mode), whatever the store's row order, so that it spans the whole store."""
        config = ShuffleConfig(batch_size=min(n_tokens, self.layer.n_tokens), seed=self.config.seed + 7919, mode="uniform")
        sample_nd = next(self.store.shuffled(self.layer.name, config).batches())
        sample_nd = sample_nd[torch.isfinite(sample_nd).all(dim=1)]
        if not len(sample_nd):
            raise TrainingError(f"the {config.batch_size} tokens sampled from layer {self.layer.name} of {self.config.acts} "
                                "to initialize the SAEs are all NaN/Inf")
        return sample_nd.to(self.device)

    # -- one step --------------------------------------------------------------------------------
    def _clean(self, batch_nd: torch.Tensor) -> torch.Tensor:
        finite_n = torch.isfinite(batch_nd).all(dim=1)
        bad = int((~finite_n).sum())
        if bad:
            if self.config.strict:
                raise DataError(f"{bad} tokens with NaN/Inf in batch {self.step} of {self.config.acts} (--strict)")
            self.n_nonfinite += bad
            return batch_nd[finite_n]
        return batch_nd

    def _dead_latents(self, run: _Run) -> torch.Tensor | None:
        """The run's dead latents as a bool mask, None when none is dead (or AuxK does not apply)."""
        if not run.config.sae.is_sparse_coded:
            return None
        dead_w = run.tokens_since_fired >= self.config.dead_after_tokens
        return dead_w if bool(dead_w.any()) else None

    def _aux_loss(self, run: _Run, xn_nd: torch.Tensor, encoding: Encoding, recon_nd: torch.Tensor) -> torch.Tensor:
        """AuxK: the dead latents' top ``aux_k`` pre-activations reconstruct the residual error."""
        if encoding.dead is None:
            return torch.zeros((), device=xn_nd.device)
        residual_nd = (xn_nd - recon_nd).detach()
        values = preactivations_at(encoding.dead, xn_nd - run.sae.b_dec, run.sae.W_enc, run.sae.b_enc)
        codes = SparseCodes(encoding.dead.rows, encoding.dead.cols, values.relu(), xn_nd.shape[0], run.sae.config.width)
        aux_nd = decode_codes(codes, run.sae.W_dec)
        return (aux_nd - residual_nd).square().sum(1).mean() / residual_nd.square().sum(1).mean().clamp_min(1e-12)

    def _train_run(self, run: _Run, x_nd: torch.Tensor, global_tokens: int, logging_step: bool) -> dict[str, float]:
        cfg, sae = run.config.sae, run.sae
        xn_nd = sae.normalize(x_nd)
        # mixed precision: the products (encoder, dense decoder) under autocast, every loss in float32
        with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.config.precision == "bfloat16"):
            encoding = _in_float32(sae.encode_for_training(xn_nd, self._dead_latents(run), self.config.aux_k))
            decoded_nd = [sae.decode_normalized(encoding, p) for p in (*cfg.nested_widths[:-1], None)]
        decoded_nd = [decoded.float() for decoded in decoded_nd]
        recon_nd = decoded_nd[-1]
        errors = [(decoded - xn_nd).square().sum(1).mean() for decoded in decoded_nd]
        recon_loss = torch.stack(errors).mean()
        loss = recon_loss
        penalty = cfg.architecture.sparsity_penalty(sae, encoding)
        if penalty is not None:
            loss = loss + sparsity_coefficient(self.step, run.config.sparsity_coefficient, self.config.sparsity_warmup_steps) * penalty
        aux = self._aux_loss(run, xn_nd, encoding, recon_nd)
        loss = loss + self.config.aux_coefficient * aux

        lr = learning_rate(self.step, self.config.total_steps, run.config.lr, self.config.warmup_steps, self.config.final_lr_fraction)
        for group in run.optimizer.param_groups:
            group["lr"] = lr
        run.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        for parameter in sae.parameters():
            if parameter.grad is not None and self.workers.world_size > 1:
                _reduce(parameter.grad, self.workers).div_(self.workers.world_size)
        with torch.no_grad():  # keep decoder rows on the unit sphere: drop the radial gradient
            grad = sae.W_dec.grad
            if grad is not None:
                grad -= (grad * sae.W_dec).sum(1, keepdim=True) * sae.W_dec
        torch.nn.utils.clip_grad_norm_(sae.parameters(), self.config.grad_clip)
        run.optimizer.step()
        with torch.no_grad():
            sae.W_dec.div_(sae.W_dec.norm(dim=1, keepdim=True).clamp_min(1e-12))
            fires_w = self._count_fires(run, encoding, global_tokens)
            if not logging_step:
                return {}
            return self._metrics(run, xn_nd, recon_nd, fires_w, global_tokens, float(loss), float(aux), lr)

    def _count_fires(self, run: _Run, encoding: Encoding, global_tokens: int) -> torch.Tensor:
        """Per-latent firing counts of this step (all workers), feeding dead and dense tracking."""
        if encoding.codes is not None:
            fires_w = torch.bincount(encoding.codes.cols[encoding.codes.values > 0], minlength=run.config.sae.width)
        else:
            fires_w = (encoding.dense() > 0).sum(0)
        fires_w = _reduce(fires_w, self.workers)
        run.tokens_since_fired = torch.where(fires_w > 0, 0, run.tokens_since_fired + global_tokens)
        run.fires_in_window += fires_w
        run.tokens_in_window += global_tokens
        return fires_w

    def _metrics(self, run: _Run, xn_nd: torch.Tensor, recon_nd: torch.Tensor, fires_w: torch.Tensor, global_tokens: int,
                 loss: float, aux: float, lr: float) -> dict[str, float]:
        # NMSE against this batch's mean: squared error and spread summed over all workers
        sums = torch.stack([(recon_nd - xn_nd).double().square().sum(), (xn_nd.double() - xn_nd.double().mean(0)).square().sum()])
        error, spread = _reduce(sums, self.workers).tolist()
        return {
            "loss": loss, "aux_loss": aux, "lr": lr,
            "nmse": error / max(spread, 1e-30),
            "explained_variance": explained_variance(xn_nd, recon_nd),
            "l0": float(fires_w.sum()) / global_tokens,
            "dead_fraction": float((run.tokens_since_fired >= self.config.dead_after_tokens).double().mean()),
        }

    # -- loop --------------------------------------------------------------------------------------
    def fit(self, show_progress: bool = True) -> list[Path]:
        config, workers = self.config, self.workers
        if self.complete:
            log.info("%s is already complete", config.out)
            return self.result_dirs
        stream = self.store.shuffled(self.layer.name, ShuffleConfig(batch_size=config.batch_size, seed=config.seed))
        batches = stream.batches(start_batch=self.step)
        sinks = MetricSinks(config.out, config.log_to, enabled=workers.is_main, resume_after=self.step)
        with tqdm(total=config.total_steps, initial=self.step, unit="step", desc="train",
                  disable=not (show_progress and workers.is_main)) as progress:
            while self.step < config.total_steps:
                global_nd = next(batches)
                local_nd = self._clean(global_nd.chunk(workers.world_size)[workers.rank]).to(self.device)
                logging_step = (self.step + 1) % config.log_every == 0 or self.step + 1 == config.total_steps
                metrics = [self._train_run(run, local_nd, len(global_nd), logging_step) for run in self.runs]
                self.step += 1
                if logging_step:
                    for run, values in zip(self.runs, metrics, strict=True):
                        rates_w = run.fires_in_window.double() / max(run.tokens_in_window, 1)
                        values["dense_fraction"] = float((rates_w > DENSE_FREQUENCY).double().mean())
                        run.fires_in_window.zero_()
                        run.tokens_in_window = 0
                        run.last_metrics = values
                        sinks.write(self.step, self.step * config.batch_size, run.config.name, values)
                    progress.set_postfix(nmse=f"{metrics[0]['nmse']:.3f}", l0=f"{metrics[0]['l0']:.1f}")
                if self.step % config.checkpoint_every == 0 and self.step < config.total_steps:
                    self._save_checkpoint()
                progress.update(1)
        sinks.close()
        if self.n_nonfinite:
            log.warning("skipped %d tokens with NaN/Inf values", self.n_nonfinite)
        return self._save_results()

    # -- persistence -------------------------------------------------------------------------------
    def _checkpoint_identity(self) -> dict[str, Any]:
        return _identity(self.config.to_dict())

    def _save_checkpoint(self) -> None:
        if self.workers.is_main:
            folder = self.config.out / CHECKPOINT_DIR
            tensors: dict[str, torch.Tensor] = {"rng.torch": torch.random.get_rng_state()}
            for index, run in enumerate(self.runs):
                tensors.update(run.state_tensors(f"runs.{index}"))
            weights = folder / _weights_name(self.step)
            save_tensors(weights, tensors)
            state = {"step": self.step, "weights": weights.name, "n_nonfinite": self.n_nonfinite,
                     "tokens_in_window": [run.tokens_in_window for run in self.runs],
                     "config": self._checkpoint_identity(), "store": self._store_identity()}
            atomic_write_json(folder / CHECKPOINT_STATE, state)
            for old in folder.glob("state-*.safetensors"):
                if old != weights:
                    old.unlink()
        self.workers.barrier()

    def _load_checkpoint(self, path: Path) -> None:
        damaged = f"damaged checkpoint in {path.parent}"
        state = _read_checkpoint_state(path, len(self.runs), self.config.total_steps, damaged)
        same_store = state.get("store", self._store_identity()) == self._store_identity()  # older checkpoints lack it
        if _identity(state["config"]) != self._checkpoint_identity() or not same_store:
            raise TrainingError(f"the checkpoint in {path.parent} is from a different training configuration or store; "
                                "use another --out")
        try:
            tensors = load_file(str(path.parent / state["weights"]), device=str(self.device))
            torch.random.set_rng_state(tensors["rng.torch"].cpu())
            for index, run in enumerate(self.runs):
                run.load_state_tensors(f"runs.{index}", tensors)
        except (OSError, KeyError, ValueError, RuntimeError, SafetensorError) as error:  # missing, truncated or foreign tensors
            raise TrainingError(f"{damaged}: {first_line(error)}") from error
        for run, tokens in zip(self.runs, state["tokens_in_window"], strict=True):
            run.tokens_in_window = tokens
        self.step = state["step"]
        self.n_nonfinite = state["n_nonfinite"]

    def _save_results(self) -> list[Path]:
        for run in self.runs:  # a diverged SAE would be saved as NaN weights and NaN metrics
            check_finite(f"training {run.config.name} diverged (try a lower --lr)", run.sae.state_dict(), TrainingError)
        sample_nd = self._sample(self.config.init_sample_tokens)
        for run in self.runs:
            run.config.sae.architecture.after_training(run.sae, sample_nd)
        for run, directory in zip(self.runs, self.result_dirs, strict=True):
            if self.workers.is_main:
                extra = {"layer": self.layer.name, "acts": str(self.config.acts), **self._store_identity(), "run": run.config.to_dict(),
                         "training": self.config.to_dict(), "metrics": run.last_metrics}
                save_sae(run.sae, directory, extra)
        if self.workers.is_main:  # every SAE is saved: the checkpoint has done its job
            shutil.rmtree(self.config.out / CHECKPOINT_DIR, ignore_errors=True)
        self.workers.barrier()
        return self.result_dirs


def _in_float32(encoding: Encoding) -> Encoding:
    """The encoding's dense tensors in float32 (autocast makes them in bfloat16); sparse codes
    already are."""
    return replace(encoding, pre_nw=None if encoding.pre_nw is None else encoding.pre_nw.float(),
                   latents_nw=None if encoding.latents_nw is None else encoding.latents_nw.float())


def _identity(training: dict[str, Any]) -> dict[str, Any]:
    """What fixes a training run's result: its config without where and how it is run and logged,
    each SAE config in today's form (one written before architectures had their own fields
    carried JumpReLU's on every SAE; it is the same configuration)."""
    identity = {key: value for key, value in training.items() if key not in ("out", "device", "log_to", "checkpoint_every")}
    if "tokens" in identity and "n_tokens" not in identity:  # configs saved before the rename call the count tokens
        identity["n_tokens"] = identity.pop("tokens")
    identity.setdefault("precision", "float32")  # configs saved before bfloat16 training were float32
    runs = identity.get("runs")
    if isinstance(runs, list):
        identity["runs"] = [_current_run(run) for run in runs]
    return identity


def _current_run(run: Any) -> Any:
    if not isinstance(run, dict) or not isinstance(run.get("sae"), dict):
        return run
    try:
        return {**run, "sae": SAEConfig.from_dict(run["sae"]).to_dict()}
    except SAEConfigError:
        return run  # damaged: compared as written, so it never matches


def _weights_name(step: int) -> str:
    return f"state-{step:08d}.safetensors"


def _read_checkpoint_state(path: Path, n_runs: int, total_steps: int, damaged: str) -> dict[str, Any]:
    """``state.json`` with every field checked; ``weights`` must be the file its step writes beside
    it (never a path elsewhere)."""
    try:
        state = json.loads(path.read_bytes())
    except (OSError, ValueError) as error:  # ValueError: bad JSON or bad UTF-8
        raise TrainingError(f"{damaged}: {first_line(error)}") from error
    if not isinstance(state, dict):
        raise TrainingError(f"{damaged}: {path.name} is not a JSON object")
    windows = state.get("tokens_in_window")
    checks = {
        "step": is_int(state.get("step")) and 0 < state["step"] < total_steps,
        "weights": is_int(state.get("step")) and state.get("weights") == _weights_name(state["step"]),
        "n_nonfinite": is_int(state.get("n_nonfinite")) and state["n_nonfinite"] >= 0,
        "tokens_in_window": isinstance(windows, list) and len(windows) == n_runs and all(is_int(n) and n >= 0 for n in windows),
        "config": isinstance(state.get("config"), dict),
    }
    bad = [name for name, ok in checks.items() if not ok]
    if bad:
        raise TrainingError(f"{damaged}: {path.name} has a missing or invalid {', '.join(bad)}")
    return state


def train(config: TrainConfig, resume: bool = True, show_progress: bool = True) -> list[Path]:
    """Train every run of ``config``; returns the directories of the saved SAEs. An unfinished
    run of the same config in ``config.out`` is resumed and a finished one kept (``resume=False``
    refuses a folder holding either)."""
    with workers_from_env() as workers:
        return Trainer(config, workers, resume).fit(show_progress)


def sweep_runs(d_in: int, *, widths: Sequence[int] = (), expansions: Sequence[float] = (16.0,), activation: str = "topk",
               ks: Sequence[int] = (32,), lrs: Sequence[float] = (3e-4,), sparsity_coefficients: Sequence[float] = (0.0,),
               matryoshka_widths: Sequence[int] = (), normalization: Normalization = "norm") -> tuple[RunConfig, ...]:
    """The SAEs ``traitlens train`` sweeps: every width (given, or ``expansions`` times ``d_in``)
    with every k, learning rate and sparsity coefficient; ``k`` is capped at the width."""
    runs: list[RunConfig] = []
    for width in widths or tuple(round(expansion * d_in) for expansion in expansions):
        base = RunConfig(SAEConfig(d_in=d_in, width=width, activation=activation, k=min(ks[0], width),
                                   matryoshka_widths=tuple(sorted(set(matryoshka_widths))), normalization=normalization))
        runs += sweep(base, k=tuple(ks), lr=tuple(lrs), sparsity_coefficient=tuple(sparsity_coefficients))
    return tuple(runs)


def sweep(base: RunConfig, **values: tuple[Any, ...]) -> tuple[RunConfig, ...]:
    """Every combination of the given values: ``sweep(run, k=(16, 32), lr=(1e-4, 3e-4))``."""
    runs = [base]
    for name, options in values.items():
        expanded = []
        for run in runs:
            for option in options:
                if name in ("lr", "sparsity_coefficient"):
                    expanded.append(replace(run, **{name: option}))
                else:
                    expanded.append(replace(run, sae=replace(run.sae, **{name: option})))
        runs = expanded
    return tuple(runs)
