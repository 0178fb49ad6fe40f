"""Progress of a job that works through fixed batches of items into its output folder, so that the
same command, run again after a kill, continues from its last finished batch and ends with the
same files (``explain``, ``steer``, ``attribute``; the store, SAE and features jobs have their own
shards, checkpoints and chunks).

``job.json`` (everything that decides the result) is written first. Each finished batch leaves one
file in ``.traitlens-progress/``, written atomically after everything else the batch writes, so a batch with a
file is whole. The result file, written last, carries the job; once it is written, ``finish``
removes ``job.json`` and ``.traitlens-progress/``. Another job's files are refused with the settings that
differ (:func:`traitlens.output_folder.refuse_another_job`); ``--overwrite`` starts afresh.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file

from traitlens.atomic import atomic_write_json, save_tensors
from traitlens.errors import TraitlensError
from traitlens.json_config import read_json_config
from traitlens.output_folder import refuse_another_job

JOB = "job.json"
# hidden and prefixed: an output folder also holds files named after the images (class folders)
PROGRESS = ".traitlens-progress"
JOB_FORMAT = "traitlens.job"


def fixed_batches(n_items: int, batch_size: int) -> list[list[int]]:
    """Items ``0..n_items-1`` in batches of ``batch_size`` (the last may be short): the units a job
    resumes from. Every batch but the last is full, so the unfinished ones, taken in order, are
    batched again exactly as before."""
    return [list(range(start, min(start + batch_size, n_items))) for start in range(0, n_items, batch_size)]


class BatchProgress:
    """The progress files of one job (``job``, a JSON object) of the command that makes ``what``
    (e.g. ``"explain maps"``) in ``out``; every failure is one ``error`` line."""

    def __init__(self, out: Path, what: str, job: dict[str, Any], error: type[TraitlensError]) -> None:
        self.out, self.what, self.job, self.error = out, what, job, error

    def finished(self, result: Path, result_format: str) -> dict[str, Any] | None:
        """The result of this job when ``out`` holds it finished (leftover progress files removed),
        None when unfinished; another job's result or unfinished files are refused."""
        if result.is_file():
            data = read_json_config(result, result_format, self.what, self.error, f"{result} missing")
            previous = data.get("job")
            if not isinstance(previous, dict):  # written before the command resumed: its job is not known
                raise self.error(f"{self.out} already holds traitlens {self.what}; pass --overwrite to replace them, "
                                 "or choose another folder")
            refuse_another_job(self.out, self.what, previous, self.job, self.error)
            self.finish()
            return data
        job_path = self.out / JOB
        if job_path.is_file():
            saved = read_json_config(job_path, JOB_FORMAT, "job file", self.error, f"{job_path} missing").get("job")
            refuse_another_job(self.out, self.what, saved if isinstance(saved, dict) else {}, self.job, self.error)
        else:
            atomic_write_json(job_path, {"format": JOB_FORMAT, "job": self.job})
        return None

    def path(self, batch: int, suffix: str) -> Path:
        return self.out / PROGRESS / f"batch-{batch:06d}{suffix}"

    def damaged(self, path: Path, why: str) -> TraitlensError:
        return self.error(f"progress file {path} is damaged ({why}); pass --overwrite to start again")

    def save_tensors(self, batch: int, tensors: dict[str, torch.Tensor]) -> None:
        save_tensors(self.path(batch, ".safetensors"), tensors)

    def load_tensors(self, batch: int) -> dict[str, torch.Tensor] | None:
        """The tensors a finished batch saved; None when the batch is unfinished."""
        path = self.path(batch, ".safetensors")
        if not path.is_file():
            return None
        try:
            return load_file(str(path))
        except (OSError, SafetensorError) as cause:
            raise self.damaged(path, str(cause).splitlines()[0] if str(cause) else type(cause).__name__) from cause

    def save_json(self, batch: int, data: dict[str, Any]) -> None:
        atomic_write_json(self.path(batch, ".json"), {"format": JOB_FORMAT + ".batch", **data})

    def load_json(self, batch: int) -> dict[str, Any] | None:
        """The JSON object a finished batch saved; None when the batch is unfinished."""
        path = self.path(batch, ".json")
        if not path.is_file():
            return None
        return read_json_config(path, JOB_FORMAT + ".batch", "progress file", self.error, f"{path} missing")

    def finish(self) -> None:
        """Remove the progress files once the result is written."""
        shutil.rmtree(self.out / PROGRESS, ignore_errors=True)
        (self.out / JOB).unlink(missing_ok=True)
