"""The `vllm-omni` engine: a vLLM-Omni server, talked to as a Gonka ML node is.

`generate()` (reached through `models.engine.generate` when `Runtime.engine == "vllm-omni"`) saves
the preset once as a local diffusers directory (`preset_dir`), starts `vllm serve DIR --omni` from
vLLM-Omni's own environment as a managed subprocess on a loopback port, and posts the request to its
`POST /v1/videos/sync` video API. The executor's MP4 and its SHA-256 are the bytes the server
returned (encoded by vLLM-Omni with the project's x264 options passed as `video_codec_options`);
the frames are those bytes decoded.

The server:
- runs in a new session (its own process group) under `serve_guard.py`, which ends the whole group
  when this process goes away (even by SIGKILL: the guard watches a pipe only this process holds),
  when the server exits, or on a clean stop;
- is started once per (directory, dtype, boundary ratio, device) and reused; it is health-checked
  (`GET /health`) before use and stopped at interpreter exit;
- reports every failure as one line (`EngineError`): environment missing, start failure (with the
  server log's last error line), start timeout, the server gone mid-request, an HTTP error.

What the video API does not expose (and so what this engine cannot do): intermediate latents and
step callbacks. A vLLM-Omni generation carries no captured latents, cannot resume from a checkpoint
or continue from a substituted latent, and cannot run the PoC forward pass; the latent policies
therefore cannot score its claims (docs/engines.md says what the engine would need).
"""

from __future__ import annotations

import atexit
import hashlib
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from models.request import GenerationRequest, Runtime

if TYPE_CHECKING:  # pragma: no cover
    from models.deviations import Deviation
    from models.artifacts import Generation

REPO = Path(__file__).resolve().parents[2]
GUARD = Path(__file__).with_name("serve_guard.py")
STAMP = ".t2vsim-installed"
DEFAULT_START_TIMEOUT_S = 600.0
DEFAULT_REQUEST_TIMEOUT_S = 1800.0


class EngineError(RuntimeError):
    """The engine could not run a generation (one line, naming what failed)."""


def env_dir() -> Path:
    """vLLM-Omni's own environment: $T2VSIM_VLLM_OMNI_ENV, else `vllm-omni-env` in the project's
    cache (~/.cache/t2vsim), so that every checkout on a machine (and CI's fresh clones) shares one."""
    from models.engines.preset_dir import cache_root

    env = os.environ.get("T2VSIM_VLLM_OMNI_ENV")
    return Path(env).expanduser().resolve() if env else cache_root() / "vllm-omni-env"


def env_ready(env: Path | None = None) -> bool:
    env = env or env_dir()
    return (env / STAMP).is_file() and (env / "bin" / "vllm").is_file()


def _require_env(env: Path) -> None:
    if not env_ready(env):
        raise EngineError(
            f"engine vllm-omni: no vLLM-Omni environment at {env}; create it with "
            "`t2vsim engines install vllm-omni` (or `make vllm-omni-env`), or set T2VSIM_VLLM_OMNI_ENV"
        )


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


_ANSI = re.compile(r"\x1b\[[0-9;]*m")


def _server_exit_code(text: str) -> str | None:
    """The server's exit code as its guard logged it (the guard itself ends by SIGKILL)."""
    found = re.findall(r"serve_guard: server exited with code (-?\d+|None)", text)
    return found[-1] if found else None


def _last_error_line(text: str) -> str:
    """The most telling line of a server log: the last error/exception line, else the last line."""
    text = _ANSI.sub("", text)
    lines = [ln.strip() for ln in text.splitlines() if ln.strip() and not ln.startswith("serve_guard:")]
    for ln in reversed(lines):
        if any(k in ln for k in ("Error", "error:", "Exception", "No such file", "not found", "failed")):
            return ln[-300:]
    return lines[-1][-300:] if lines else "(empty log)"


class VllmOmniServer:
    """`vllm serve DIR --omni` on a loopback port, in its own process group, with a clean stop."""

    def __init__(self, model_dir: str | os.PathLike, *, dtype: str = "float32", boundary_ratio: float = 0.875,
                 env: Path | None = None, port: int | None = None, start_timeout_s: float | None = None,
                 extra_args: tuple[str, ...] = (), log_path: str | os.PathLike | None = None):
        self.model_dir = str(model_dir)
        self.dtype, self.boundary_ratio = dtype, boundary_ratio
        self.env = env or env_dir()
        self.port = port
        self.start_timeout_s = float(start_timeout_s if start_timeout_s is not None
                                     else os.environ.get("T2VSIM_VLLM_OMNI_START_TIMEOUT_S", DEFAULT_START_TIMEOUT_S))
        self.extra_args = tuple(extra_args)
        self.log_path = Path(log_path) if log_path else None
        self.proc: subprocess.Popen | None = None
        self._pipe_w: int | None = None
        self._log = None
        self.start_seconds: float | None = None
        self.last_pgid: int | None = None

    # ---- lifecycle ----------------------------------------------------------------------
    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def pgid(self) -> int | None:
        return self.proc.pid if self.proc is not None else None

    def command(self) -> list[str]:
        return [str(self.env / "bin" / "vllm"), "serve", self.model_dir, "--omni",
                "--host", "127.0.0.1", "--port", str(self.port), "--dtype", self.dtype, "--enforce-eager",
                "--boundary-ratio", repr(float(self.boundary_ratio)), *self.extra_args]

    def _child_env(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if k not in ("VIRTUAL_ENV", "PYTHONPATH", "PYTHONHOME")}
        env["PATH"] = f"{self.env / 'bin'}{os.pathsep}{env.get('PATH', '')}"
        env["VIRTUAL_ENV"] = str(self.env)
        env.setdefault("HF_HUB_OFFLINE", "1")
        env.setdefault("TRANSFORMERS_OFFLINE", "1")
        env.setdefault("VLLM_NO_USAGE_STATS", "1")
        env.setdefault("DO_NOT_TRACK", "1")
        env.setdefault("VLLM_CONFIGURE_LOGGING", "1")
        return env

    def start(self) -> "VllmOmniServer":
        _require_env(self.env)
        if self.proc is not None:
            return self
        if not Path(self.model_dir, "model_index.json").is_file():
            raise EngineError(f"engine vllm-omni: {self.model_dir} is not a diffusers directory (no model_index.json)")
        self.port = self.port or _free_port()
        if self.log_path is None:
            self.log_path = Path(tempfile.mkstemp(prefix="t2vsim-vllm-omni-", suffix=".log")[1])
        self._log = open(self.log_path, "wb")
        read_fd, self._pipe_w = os.pipe()
        t0 = time.perf_counter()
        try:
            self.proc = subprocess.Popen(
                [str(self.env / "bin" / "python"), str(GUARD), str(read_fd), "--", *self.command()],
                stdin=subprocess.DEVNULL, stdout=self._log, stderr=subprocess.STDOUT, env=self._child_env(),
                start_new_session=True, pass_fds=(read_fd,), cwd=tempfile.gettempdir(),
            )
        finally:
            os.close(read_fd)
        self.last_pgid = self.proc.pid  # the guard leads the group; kept after a stop (tests)
        _LIVE[id(self)] = self
        try:
            self._wait_healthy()
        except BaseException:
            self.stop()
            raise
        self.start_seconds = time.perf_counter() - t0
        return self

    def _wait_healthy(self) -> None:
        import httpx

        deadline = time.monotonic() + self.start_timeout_s
        while True:
            if self.proc.poll() is not None:
                raise EngineError(f"engine vllm-omni: server failed to start (exit {self._exit_code()}): "
                                  f"{self._log_tail()} (log: {self.log_path})")
            try:
                if httpx.get(self.url + "/health", timeout=2.0).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline:
                raise EngineError(f"engine vllm-omni: server not healthy after {self.start_timeout_s:g} s "
                                  f"(T2VSIM_VLLM_OMNI_START_TIMEOUT_S); last log line: {self._log_tail()} "
                                  f"(log: {self.log_path})")
            time.sleep(0.25)

    def _log_tail(self) -> str:
        try:
            data = Path(self.log_path).read_bytes()[-20000:].decode(errors="replace")
        except OSError:
            return "(no log)"
        return _last_error_line(data)

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def stop(self, grace_s: float = 15.0) -> None:
        """SIGTERM to the whole process group, SIGKILL after `grace_s`; idempotent."""
        proc, self.proc = self.proc, None
        _LIVE.pop(id(self), None)
        if proc is not None:
            try:
                os.killpg(proc.pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
            try:
                proc.wait(grace_s)
            except subprocess.TimeoutExpired:
                pass
            try:
                os.killpg(proc.pid, signal.SIGKILL)  # whatever the group still holds
            except ProcessLookupError:
                pass
            try:
                proc.wait(5)
            except subprocess.TimeoutExpired:  # pragma: no cover
                pass
        if self._pipe_w is not None:
            os.close(self._pipe_w)
            self._pipe_w = None
        if self._log is not None:
            self._log.close()
            self._log = None

    def __enter__(self) -> "VllmOmniServer":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    # ---- the video API -------------------------------------------------------------------
    def video(self, form: dict[str, Any], timeout_s: float | None = None) -> tuple[bytes, dict[str, str]]:
        """POST /v1/videos/sync with multipart form `form`; the MP4 bytes and the response headers."""
        import httpx

        if not self.alive():
            raise EngineError(f"engine vllm-omni: server is not running (exit {self._exit_code()}): "
                              f"{self._log_tail()}")
        timeout = float(timeout_s if timeout_s is not None
                        else os.environ.get("T2VSIM_VLLM_OMNI_REQUEST_TIMEOUT_S", DEFAULT_REQUEST_TIMEOUT_S))
        files = {k: (None, v if isinstance(v, str) else json.dumps(v) if isinstance(v, dict) else str(v))
                 for k, v in form.items()}
        try:
            resp = httpx.post(self.url + "/v1/videos/sync", files=files, timeout=timeout)
        except httpx.TimeoutException:
            raise EngineError(f"engine vllm-omni: no answer within {timeout:g} s "
                              "(T2VSIM_VLLM_OMNI_REQUEST_TIMEOUT_S)") from None
        except httpx.HTTPError as err:
            state = "server died" if not self.alive() else "request failed"
            raise EngineError(f"engine vllm-omni: {state} during the request ({type(err).__name__}; exit "
                              f"{self._exit_code()}): {self._log_tail()}") from None
        if resp.status_code != 200:
            try:
                detail = resp.json().get("detail") or resp.json().get("error") or resp.text
            except ValueError:
                detail = resp.text
            raise EngineError(f"engine vllm-omni: HTTP {resp.status_code} from /v1/videos/sync: "
                              f"{str(detail).strip()[:300]}")
        return resp.content, dict(resp.headers)

    def _exit_code(self):
        if self.proc is None:
            return "stopped"
        try:
            logged = _server_exit_code(Path(self.log_path).read_bytes()[-4000:].decode(errors="replace"))
        except OSError:
            logged = None
        return logged if logged is not None else self.proc.poll()


# ---------------------------------------------------------------------------------------------
# Server pool: one server per configuration, stopped at exit.

_LIVE: dict[int, VllmOmniServer] = {}
_POOL: dict[tuple, VllmOmniServer] = {}
_POOL_LOCK = threading.Lock()


def _stop_all() -> None:
    for server in list(_LIVE.values()):
        server.stop(grace_s=5.0)
    _POOL.clear()


atexit.register(_stop_all)


def server_for(model_dir: Path, runtime: Runtime, boundary_ratio: float) -> VllmOmniServer:
    """The pooled server of one (directory, dtype, boundary ratio); started, or restarted if it died."""
    key = (str(model_dir), runtime.dtype, float(boundary_ratio), str(env_dir()))
    with _POOL_LOCK:
        server = _POOL.get(key)
        if server is not None and not server.alive():
            server.stop()
            server = None
        if server is None:
            server = VllmOmniServer(model_dir, dtype=runtime.dtype, boundary_ratio=boundary_ratio)
            server.start()
            _POOL[key] = server
        return server


def stop_servers() -> None:
    """Stop every pooled server (tests, benchmarks)."""
    with _POOL_LOCK:
        for server in list(_POOL.values()):
            server.stop()
        _POOL.clear()


# ---------------------------------------------------------------------------------------------
# Generation


def request_form(request: GenerationRequest, boundary_ratio: float) -> dict[str, Any]:
    """The `/v1/videos` form fields of a request (vLLM-Omni's names)."""
    return {
        "prompt": request.prompt,
        "negative_prompt": request.negative_prompt,
        "width": request.width,
        "height": request.height,
        "num_frames": request.frames,
        "fps": request.fps,
        "num_inference_steps": request.steps,
        "guidance_scale": request.guidance_high,  # vLLM-Omni: the high-noise (first) expert's scale
        "guidance_scale_2": request.guidance_low,  # the low-noise expert's scale
        "flow_shift": request.shift,
        "boundary_ratio": boundary_ratio,
        "seed": request.seed,
        "extra_params": {"video_codec_options": server_codec_options()},
    }


def server_codec_options() -> dict[str, str]:
    """The project's x264 settings (constant QP, one thread, no psy-rd/mbtree) for vLLM-Omni's encoder
    instead of its default (preset ultrafast, threads 0 = automatic); `crf` -1 because vLLM-Omni sets
    crf 18 itself, which libx264 would prefer over qp."""
    from models.video import CODEC_SETTINGS

    return {"crf": "-1", **CODEC_SETTINGS["options"]}


def encode_like_server(frames, fps: float) -> bytes:
    """uint8 frames (F, H, W, 3) encoded as vLLM-Omni 0.30.0's server encodes its frames
    (vllm_omni.diffusion.utils.media_utils.mux_av_video_audio_bytes: GBR planar frames, H.264 in
    yuv420p, its crf replaced by `server_codec_options`): what the diffusers engine's frames would
    be as an MP4 from that server, so two engines' outputs compare without the codec in between."""
    import io
    from fractions import Fraction

    import av
    import numpy as np

    buf = io.BytesIO()
    with av.open(buf, mode="w", format="mp4") as container:
        stream = container.add_stream("h264", rate=Fraction(fps).limit_denominator(10000))
        stream.width, stream.height = int(frames.shape[2]), int(frames.shape[1])
        stream.pix_fmt = "yuv420p"
        stream.options = {"crf": "18", **server_codec_options()}
        for frame in frames:
            vf = av.VideoFrame(stream.width, stream.height, format="gbrp")
            for plane, channel in zip(vf.planes, (1, 2, 0)):
                view = np.frombuffer(memoryview(plane), dtype=np.uint8,
                                     count=plane.height * plane.line_size).reshape(plane.height, plane.line_size)
                view.fill(0)
                view[: stream.height, : stream.width] = frame[..., channel]
            for packet in stream.encode(vf):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return buf.getvalue()


def unsupported(dev: "Deviation | None", runtime: Runtime, **asked: Any) -> str | None:
    """Why this engine cannot run a call, or None."""
    from models.deviations import Deviation

    wants = {"resume_from": "resume from a checkpoint", "substitute": "continue from a substituted latent",
             "stop_after": "stop after a step", "decode_off": "return latents instead of a video"}
    for name, value in asked.items():
        if name not in wants:
            raise TypeError(f"unexpected argument {name!r}")
        if value is not None and value is not False and value != {}:
            return (f"{name}: the vLLM-Omni video API exposes no latents or step callbacks, so it cannot "
                    f"{wants[name]}; use engine diffusers for latent replays")
    if runtime.batch_size != 1:
        return "batch_size: the vllm-omni engine sends one request at a time (batch_size 1)"
    if runtime.compile:
        return "compile: the vllm-omni engine runs with --enforce-eager"
    if runtime.offload != "none":
        return "offload: the vllm-omni engine has no offload modes here"
    if runtime.vae_dtype != "float32":
        return "vae_dtype: the vllm-omni engine decodes with its own VAE settings"
    if runtime.attention_backend != "native":
        return "attention_backend: the vllm-omni engine uses its platform's attention (TORCH_SDPA on a CPU)"
    if dev is not None:
        cls = type(dev)
        for hook in ("patch", "patch_session", "postprocess", "video_from", "preset"):
            if getattr(cls, hook) is not getattr(Deviation, hook):
                return (f"deviation {dev.spec}: it changes the diffusers pipeline ({hook}), which the vllm-omni "
                        "engine does not run")
    return None


def generate(request: GenerationRequest, eff_request: GenerationRequest, runtime: Runtime,
             dev: "Deviation | None", *, run_seed: int = 0, weights_seed: int = 0, **asked: Any) -> "Generation":
    """One generation through vLLM-Omni (see the module docstring for what it cannot do). Latent
    captures asked for are not available: the generation carries none."""
    import numpy as np

    from models.artifacts import Cost, Generation
    from models.engines.preset_dir import preset_dir
    from models.plan import honest_work
    from models.spec import preset_spec
    from models.video import decode_mp4

    why = unsupported(dev, runtime, **asked)
    if why:
        raise EngineError(f"engine vllm-omni: {why}")
    spec = preset_spec(eff_request.model)
    model_dir = preset_dir(eff_request.model, weights_seed)
    eff_request, truncated = _fit_prompt(request, eff_request, model_dir, spec)
    server = server_for(model_dir, runtime, spec.boundary_ratio)
    t0 = time.perf_counter()
    mp4, headers = server.video(request_form(eff_request, spec.boundary_ratio))
    wall = time.perf_counter() - t0
    try:
        frames = decode_mp4(mp4)
    except Exception as err:
        raise EngineError(f"engine vllm-omni: the server's MP4 does not decode ({type(err).__name__}: {err})") from None
    if frames.shape[1:3] != (eff_request.height, eff_request.width) or frames.shape[0] != eff_request.frames:
        raise EngineError(f"engine vllm-omni: the server returned frames of shape {frames.shape}, expected "
                          f"({eff_request.frames}, {eff_request.height}, {eff_request.width}, 3)")
    cost = Cost()
    cost.seconds = {"engine_request": wall, "engine_inference": float(headers.get("x-inference-time-s", wall))}
    cost.latent_tokens = eff_request.latent_tokens(spec.vae_stride, spec.patch_size)
    base = honest_work(request)
    cost.compute_share = float(honest_work(eff_request) / base) if base > 0 else 1.0
    return Generation(
        request=request, effective_request=eff_request, runtime=runtime,
        deviation=dev.spec if dev else None, frames=np.ascontiguousarray(frames), mp4=mp4,
        sha256=hashlib.sha256(mp4).hexdigest(), checkpoints={}, cost=cost,
        prompt_truncated=truncated, run_seed=run_seed,
    )


_TOKENIZERS: dict[str, Any] = {}


def _fit_prompt(request: GenerationRequest, eff_request: GenerationRequest, model_dir: Path, spec):
    """The prompt as the diffusers engine would condition on it: refused over the preset's limit
    unless `truncate_prompt`, then cut there (vLLM-Omni itself would read up to 512 tokens)."""
    from transformers import AutoTokenizer

    from models.plan import PromptTooLong, truncate_to_tokens
    from diffusers.pipelines.wan.pipeline_wan import prompt_clean

    key = str(model_dir)
    if key not in _TOKENIZERS:
        _TOKENIZERS[key] = AutoTokenizer.from_pretrained(model_dir / "tokenizer", local_files_only=True)
    tok = _TOKENIZERS[key]
    n_tokens = len(tok(prompt_clean(eff_request.prompt), add_special_tokens=True)["input_ids"])
    if n_tokens <= spec.text_len:
        return eff_request, False
    if not request.truncate_prompt:
        raise PromptTooLong(
            f"prompt: {n_tokens} tokens exceed the text encoder's limit of {spec.text_len} for preset "
            f"{eff_request.model!r}; shorten it or set truncate_prompt=true to truncate explicitly (recorded)"
        )
    return eff_request.model_copy(update={"prompt": truncate_to_tokens(tok, eff_request.prompt, spec.text_len)}), True


# ---------------------------------------------------------------------------------------------
# The environment


def lock_file(gpu: bool) -> Path:
    return REPO / ("requirements-vllm-omni-gpu.txt" if gpu else "requirements-vllm-omni-cpu.lock")


def install(env: Path | None = None, *, gpu: bool | None = None, python: str | None = None,
            quiet: bool = True) -> Path:
    """Create vLLM-Omni's environment (scripts/vllm_omni_env.sh); returns its directory."""
    env = env or env_dir()
    cmd = ["bash", str(REPO / "scripts" / "vllm_omni_env.sh"), str(env)]
    envvars = dict(os.environ)
    if gpu is not None:
        envvars["T2VSIM_VLLM_OMNI_GPU"] = "1" if gpu else "0"
    if python:
        envvars["PY"] = python
    rc = subprocess.run(cmd, env=envvars, stdout=subprocess.DEVNULL if quiet else None).returncode
    if rc != 0:
        raise EngineError(f"engine vllm-omni: creating the environment at {env} failed (exit {rc}); "
                          f"rerun `bash scripts/vllm_omni_env.sh {env}` to see why")
    return env


def remove(env: Path | None = None) -> None:
    env = env or env_dir()
    if env.exists():
        shutil.rmtree(env)


if __name__ == "__main__":  # pragma: no cover - `python -m models.engines.vllm_omni` prints the state
    print(json.dumps({"env": str(env_dir()), "ready": env_ready(), "python": sys.executable}))
