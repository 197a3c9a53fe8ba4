"""The records of a generation, torch-free at import: its cost, the checkpoints (latents and solver
state) it captured, and the `Generation` itself with its on-disk form (video.mp4,
latents.safetensors, record.json, every artifact hashed in the record).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from models.request import GenerationRequest, Runtime
from models.video import CODEC_SETTINGS, decode_mp4, encode_mp4

if TYPE_CHECKING:  # pragma: no cover
    import torch

# What `Generation.save` writes into a generation directory; record.json holds the SHA-256 of the others.
GENERATION_FILES = ("video.mp4", "latents.safetensors", "record.json")
HASHED_FILES = ("video.mp4", "latents.safetensors")
RECORD_KEYS = ("request", "effective_request", "runtime", "deviation", "sha256", "cost")
# Captured latents are stored, committed and compared in float32, the dtype the pipeline keeps them
# in between steps (the transformer's input is cast to the model dtype); bytes are counted in it too
# (`Checkpoint.nbytes`): resuming from a bf16-rounded latent would not reproduce the run.
LATENT_DTYPE_NAME = "float32"
SOLVER_KEYS = ("model_outputs", "timestep_list", "lower_order_nums", "last_sample", "this_order", "_step_index")




def latent_dtype():
    import torch

    return getattr(torch, LATENT_DTYPE_NAME)


class ArtifactError(ValueError):
    """A stored generation is missing, truncated or inconsistent."""


# ---------------------------------------------------------------------------------------------
# Records


@dataclass
class Cost:
    """What a generation actually spent."""

    forward_passes: dict[str, int] = field(default_factory=lambda: {"high": 0, "low": 0})
    latent_tokens: int = 0  # tokens per forward pass (per sample)
    batch_size: int = 1
    block_calls: int = 0  # transformer block forwards (cached blocks are not called)
    seconds: dict[str, float] = field(default_factory=lambda: {"text_encoder": 0.0, "high": 0.0, "low": 0.0, "vae": 0.0})
    compute_share: float = 1.0  # transformer work relative to the honest run of the claimed request

    @property
    def total_passes(self) -> int:
        return sum(self.forward_passes.values())

    def to_dict(self) -> dict[str, Any]:
        return {
            "forward_passes": dict(self.forward_passes), "latent_tokens": self.latent_tokens,
            "batch_size": self.batch_size, "block_calls": self.block_calls,
            "seconds": {k: round(v, 6) for k, v in self.seconds.items()}, "compute_share": self.compute_share,
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "Cost":
        return cls(**d)


@dataclass
class Checkpoint:
    """The latent after step `step` and the solver's multistep state at that point."""

    step: int
    latents: "torch.Tensor"  # float32, CPU, (1, 16, T, h, w)
    solver: dict[str, Any] | None = None

    def nbytes(self, with_solver: bool = True) -> int:
        n = self.latents.numel() * self.latents.element_size()
        if with_solver and self.solver:
            for v in solver_tensors(self.solver).values():
                n += v.numel() * v.element_size()
        return n


@dataclass
class Generation:
    request: GenerationRequest  # what the executor claims
    effective_request: GenerationRequest  # what it ran
    runtime: Runtime
    deviation: str | None
    frames: np.ndarray
    mp4: bytes | None  # None: not encoded yet (`generate(..., encode=False)`; `encoded()` encodes it)
    sha256: str  # of the MP4 ("" while it is not encoded)
    checkpoints: dict[str, Checkpoint]
    cost: Cost
    prompt_truncated: bool = False
    run_seed: int = 0

    @property
    def latents(self) -> dict[str, "torch.Tensor"]:
        return {k: c.latents for k, c in self.checkpoints.items()}

    @property
    def capture_steps(self) -> dict[str, int]:
        return {k: c.step for k, c in self.checkpoints.items()}

    @property
    def is_encoded(self) -> bool:
        return self.mp4 is not None

    def encoded(self) -> "Generation":
        """This generation with its frames encoded (`models.video.encode_mp4`, the encode `generate`
        runs by default: the same bytes) and hashed; itself when it already is. Touches no file."""
        if self.mp4 is not None:
            return self
        mp4 = encode_mp4(self.frames, self.request.fps)
        return dataclasses.replace(self, mp4=mp4, sha256=hashlib.sha256(mp4).hexdigest())

    def record(self) -> dict[str, Any]:
        return {
            "request": self.request.model_dump(),
            "effective_request": self.effective_request.model_dump(),
            "runtime": self.runtime.model_dump(),
            "deviation": self.deviation,
            "sha256": self.sha256,
            "codec": CODEC_SETTINGS,
            "frames_shape": list(self.frames.shape),
            "captures": self.capture_steps,
            "cost": self.cost.to_dict(),
            "prompt_truncated": self.prompt_truncated,
            "run_seed": self.run_seed,
        }

    def save(self, directory: str | os.PathLike) -> Path:
        """Write video.mp4, latents.safetensors and record.json (with every artifact's SHA-256) into a
        fresh directory beside `directory`, then rename it into place (`models.io` policy: a
        directory holding anything but these files is refused, never emptied)."""
        from safetensors.torch import save_file

        from models.io import staged_dir

        if self.mp4 is None:
            raise ValueError("Generation.save: the video is not encoded yet (save `encoded()`)")
        with staged_dir(directory, GENERATION_FILES) as tmp:
            (tmp / "video.mp4").write_bytes(self.mp4)
            tensors, meta = {}, {}
            for name, ck in self.checkpoints.items():
                tensors[name] = ck.latents.contiguous()
                if ck.solver is not None:
                    for key, t in solver_tensors(ck.solver).items():
                        tensors[f"solver/{name}/{key}"] = t.contiguous()
                    meta[name] = json.dumps(solver_scalars(ck.solver))
            meta["steps"] = json.dumps(self.capture_steps)
            save_file(tensors, str(tmp / "latents.safetensors"), metadata=meta)
            record = self.record()
            record["files"] = {n: _file_sha256(tmp / n) for n in HASHED_FILES}
            (tmp / "record.json").write_text(json.dumps(record, indent=1, allow_nan=False))
        return Path(directory)

    @classmethod
    def load(cls, directory: str | os.PathLike, *, verify: bool = True) -> "Generation":
        """Read a saved generation; refuses a missing file, a truncated file, a record that is not
        one, or a file whose SHA-256 differs from the record's (every artifact is hashed)."""
        directory = Path(directory)
        try:
            rec = json.loads((directory / "record.json").read_text())
            mp4 = (directory / "video.mp4").read_bytes()
        except FileNotFoundError as err:
            raise ArtifactError(f"{directory}: missing {Path(err.filename).name}") from None
        except (json.JSONDecodeError, UnicodeDecodeError) as err:
            raise ArtifactError(f"{directory}/record.json is not valid JSON: {err}") from None
        missing = [k for k in RECORD_KEYS if not isinstance(rec, dict) or k not in rec]
        if missing:
            raise ArtifactError(f"{directory}/record.json is not a generation record (missing {', '.join(missing)})")
        sha = hashlib.sha256(mp4).hexdigest()
        if verify:
            files = rec.get("files")
            if not isinstance(files, dict) or set(files) != set(HASHED_FILES):
                raise ArtifactError(f"{directory}/record.json does not hash every artifact ({', '.join(HASHED_FILES)}); "
                                    "it was written by an older t2vsim: regenerate it")
            if sha != rec["sha256"] or sha != files["video.mp4"]:
                raise ArtifactError(f"{directory}/video.mp4: SHA-256 {sha} does not match the record's {rec['sha256']}")
            for name in HASHED_FILES[1:]:
                got = _file_sha256(directory / name)
                if got != files[name]:
                    raise ArtifactError(f"{directory}/{name}: SHA-256 {got} does not match the record's {files[name]}")
        checkpoints = load_checkpoints(directory / "latents.safetensors")
        try:
            return cls(
                request=GenerationRequest(**rec["request"]),
                effective_request=GenerationRequest(**rec["effective_request"]),
                runtime=Runtime(**rec["runtime"]),
                deviation=rec["deviation"],
                frames=decode_mp4(mp4) if mp4 else np.zeros((0, 0, 0, 3), np.uint8),
                mp4=mp4,
                sha256=sha,
                checkpoints=checkpoints,
                cost=Cost.from_dict(rec["cost"]),
                prompt_truncated=rec.get("prompt_truncated", False),
                run_seed=rec.get("run_seed", 0),
            )
        except (TypeError, ValueError) as err:  # pydantic's ValidationError is a ValueError
            raise ArtifactError(f"{directory}/record.json holds invalid fields: {err}") from None


def _file_sha256(path: Path) -> str:
    try:
        with open(path, "rb") as f:
            return hashlib.file_digest(f, "sha256").hexdigest()
    except FileNotFoundError:
        raise ArtifactError(f"{path.parent}: missing {path.name}") from None


def solver_tensors(solver: dict[str, Any]) -> dict[str, "torch.Tensor"]:
    import torch

    out = {}
    for key, v in solver.items():
        if isinstance(v, torch.Tensor):
            out[key] = v
        elif isinstance(v, list):
            for i, item in enumerate(v):
                if isinstance(item, torch.Tensor):
                    out[f"{key}.{i}"] = item
    return out


def solver_scalars(solver: dict[str, Any]) -> dict[str, Any]:
    import torch

    out: dict[str, Any] = {}
    for key, v in solver.items():
        if isinstance(v, torch.Tensor):
            out[key] = "tensor"
        elif isinstance(v, list):
            out[key] = ["tensor" if isinstance(x, torch.Tensor) else x for x in v]
        else:
            out[key] = v
    return out


def load_checkpoints(path: str | os.PathLike) -> dict[str, Checkpoint]:
    """Read captured latents (and solver states) written by `Generation.save`."""
    from safetensors import safe_open

    path = Path(path)
    try:
        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
            keys = list(f.keys())
            tensors = {k: f.get_tensor(k) for k in keys}
    except FileNotFoundError:
        raise ArtifactError(f"missing latent file {path}") from None
    except Exception as err:  # safetensors raises its own error types for truncated headers/data
        raise ArtifactError(f"{path}: unreadable or truncated latent file ({err})") from None
    steps = json.loads(meta.get("steps", "{}"))
    out: dict[str, Checkpoint] = {}
    for name, step in steps.items():
        if name not in tensors:
            raise ArtifactError(f"{path}: latent {name!r} listed but not stored")
        solver = None
        if name in meta:
            scalars = json.loads(meta[name])
            solver = {}
            for key, v in scalars.items():
                if v == "tensor":
                    solver[key] = tensors[f"solver/{name}/{key}"]
                elif isinstance(v, list):
                    solver[key] = [tensors[f"solver/{name}/{key}.{i}"] if x == "tensor" else x for i, x in enumerate(v)]
                else:
                    solver[key] = v
        out[name] = Checkpoint(step=int(step), latents=tensors[name], solver=solver)
    return out
