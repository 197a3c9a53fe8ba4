"""Seeds: every derivation of one seed (or one source of randomness) from another, one function per
role. New code derives with `derive_seed(root, *path)`; the other functions keep the formula each
role has always had, bit for bit, because golden slices, scores and tables depend on them.

Torch-free and numpy-free at import (numpy is imported by the two roles that build SeedSequences).

| role                       | function                   | formula (kept)                                                   | caller |
|----------------------------|----------------------------|------------------------------------------------------------------|--------|
| new uses                   | `derive_seed`              | sha256("t2vsim/{root}/{p1}/...")[:8] little-endian, 63 bits       | - |
| preset weights, per tensor | `tensor_seed`              | = `derive_seed(weights_seed, name)`                              | models/presets.py |
| hwnoise emulation          | `hwnoise_seed`             | sha256("hwnoise/{run_seed}")[:8] little-endian, 63 bits           | models/deviations.py |
| batch fillers' noise       | `batch_filler_seed`        | (run_seed * 7919 + 104729 * (i + 1)) mod 2^63                    | models/engine.py |
| batch fillers' prompts     | `filler_prompt_start`      | seed mod n                                                       | models/deviations.py |
| prompt-swap cheat          | `prompt_swap_index`        | int(sha256(prompt).hex) mod n                                    | models/deviations.py |
| shapes training batches    | `train_step_seeds`         | ((seed * 1000003 + stage) * 10000019 + step * 1009 + i) mod 2^62 | models/shapes_train.py |
| shapes scenes              | `shapes_scene_key`         | random.Random("t2vsim-shapes/{seed}")                            | models/shapes_data.py |
| shapes prompt sample       | `shapes_prompts_key`       | random.Random("t2vsim-shapes-prompts/{seed}")                    | models/shapes_data.py |
| PoC nonce (Gonka)          | `poc_nonce_digest`         | sha256("{block_hash}_{public_key}_nonce{n}")                     | models/poc.py |
| PoC nonce noise            | `poc_nonce_seed`           | nonce digest[:8] little-endian, 63 bits                          | models/poc.py |
| PoC Householder layer i    | `poc_householder_seed`     | sha256("{block_hash}_layer_{i}_householder")[:8] little, 63 bits  | models/poc.py |
| PoC projection             | `poc_projection_seed`      | sha256("{block_hash}_projection")[:8] little, 63 bits             | models/poc.py |
| experiment prompt's request| `experiment_request_seed`  | seed * 1000003 + prompt_id                                       | sim/experiment.py |
| executor hardware run seed | `hardware_run_seed`        | sha256("hardware/{seed}/{prompt_id}/{spec}")[:8] little, 63 bits  | sim/experiment.py |
| experiment prompt sample   | `prompt_sample_key`        | random.Random(seed)                                              | sim/experiment.py |
| calibration/test split     | `split_key`                | random.Random("split/{seed}")                                    | sim/experiment.py |
| re-split of a run          | `resplit_key`              | random.Random("resplit/{seed}")                                  | sim/deployable.py |
| bootstrap of a rule        | `bootstrap_seed_sequence`  | SeedSequence([seed, 10])                                         | sim/deployable.py |
| detection draws            | `detection_seed_sequence`  | SeedSequence([secret_seed, 11])                                  | sim/deployable.py |
| stand-in commitment root   | `standin_root`             | sha256("root/{key}")                                             | sim/deployable.py |
| validator beacon           | `validator_beacon`         | sha256("t2vsim/validator/{secret_seed}/{key}")                   | sim/commitment.py |
| challenged segments        | `challenge_seed`           | sha256(b"t2vsim/challenge/" + beacon + root), big-endian, 256 bits| sim/commitment.py |
| JL fingerprint block       | `fingerprint_block_seed`   | SeedSequence([seed, block]) two uint32 words, 63 bits            | sim/fingerprint.py |
| network epoch block hash   | `epoch_block_hash`         | sha256("t2vsim/network/{seed}/epoch{epoch}").hex                 | sim/network/epoch.py |
| PoC participant key        | `poc_public_key`           | sha256("t2vsim/poc/key/{seed}/{pid}").hex[:40]                   | sim/poc/stage.py |

Not seeds, and so not here: the protocol's own draws (`ShouldValidate`'s SHA-256 of "seed:id",
SplitMix64, the vote ranking, `keyed_uniforms`) mirror Gonka's code in sim/chain/rules.py and
sim/network/backends.py; streams spawned from one SeedSequence (sim/network/epoch.py,
sim/poc/stage.py, sim/stats.py) and fixed constants (a generator seeded 0 or 12345) derive nothing.
"""

from __future__ import annotations

import hashlib

MASK63 = 2**63 - 1


def _low63(digest: bytes) -> int:
    """The first 8 bytes of a digest, little-endian, as a 63-bit seed (what torch's manual_seed takes)."""
    return int.from_bytes(digest[:8], "little") & MASK63


def text_seed(text: str) -> int:
    """A 63-bit seed from SHA-256 of `text` (its first 8 bytes, little-endian)."""
    return _low63(hashlib.sha256(text.encode()).digest())


def derive_seed(root: int | str, *path: int | str) -> int:
    """A 63-bit seed for the role `path` under `root`: SHA-256 of "t2vsim/{root}/{p1}/{p2}...",
    first 8 bytes little-endian. The parts are joined with "/", so they must not contain one."""
    parts = [str(root), *(str(p) for p in path)]
    if any("/" in p for p in parts[1:]):
        raise ValueError(f"derive_seed: path parts must not contain '/', got {path!r}")
    return text_seed("t2vsim/" + "/".join(parts))


# ---------------------------------------------------------------------------------------------
# models/


def tensor_seed(weights_seed: int, name: str) -> int:
    """A 63-bit seed for one tensor from the preset's weights seed and the tensor's name."""
    return text_seed(f"t2vsim/{weights_seed}/{name}")


def hwnoise_seed(run_seed: int) -> int:
    """The hwnoise emulation's noise seed, from the run (the executor's hardware), not the request."""
    return text_seed(f"hwnoise/{run_seed}")


def batch_filler_seed(run_seed: int, i: int) -> int:
    """The initial-noise seed of the i-th (0-based) other request in a batch."""
    return (run_seed * 7919 + 104729 * (i + 1)) % 2**63


def filler_prompt_start(seed: int, n: int) -> int:
    """Where in a list of `n` prompts the batch fillers of run `seed` start."""
    return seed % n


def prompt_swap_index(prompt: str, n: int) -> int:
    """The prompt-swap cheat's pick among `n` other prompts."""
    return int(hashlib.sha256(prompt.encode()).hexdigest(), 16) % n


TRAIN_STAGES = {"vae": 1, "high": 2, "low": 3}


def train_step_seeds(seed: int, stage: str, step: int, n: int) -> list[int]:
    """The `n` sample seeds of one training step of `stage` (vae, high, low) of the shapes models."""
    base = TRAIN_STAGES[stage]
    return [((seed * 1_000_003 + base) * 10_000_019 + step * 1009 + i) % 2**62 for i in range(n)]


def shapes_scene_key(seed: int) -> str:
    """The `random.Random` seed of the shapes scene of one seed."""
    return f"t2vsim-shapes/{seed}"


def shapes_prompts_key(seed: int) -> str:
    """The `random.Random` seed of a sample of templated shapes prompts."""
    return f"t2vsim-shapes-prompts/{seed}"


def poc_nonce_digest(block_hash: str, public_key: str, nonce: int) -> bytes:
    """Gonka's per-nonce seed: SHA-256 of `"{block_hash}_{public_key}_nonce{n}"`."""
    return hashlib.sha256(f"{block_hash}_{public_key}_nonce{int(nonce)}".encode()).digest()


def poc_nonce_seed(digest: bytes) -> int:
    """The generator seed of a nonce's latent and text noise, from its digest."""
    return _low63(digest)


def poc_householder_seed(block_hash: str, layer: int) -> int:
    return text_seed(f"{block_hash}_layer_{layer}_householder")


def poc_projection_seed(block_hash: str) -> int:
    return text_seed(f"{block_hash}_projection")


# ---------------------------------------------------------------------------------------------
# sim/


def experiment_request_seed(seed: int, prompt_id: int) -> int:
    """The request seed of one prompt of an experiment (when the request does not fix one)."""
    return seed * 1_000_003 + prompt_id


def hardware_run_seed(seed: int, prompt_id: int, spec: str) -> int:
    """The run seed (the executor's hardware: batch fillers, hwnoise) of one prompt under one deviation."""
    return text_seed(f"hardware/{seed}/{prompt_id}/{spec}")


def prompt_sample_key(seed: int) -> int:
    """The `random.Random` seed of an experiment's sample of bundled prompts."""
    return seed


def split_key(seed: int) -> str:
    """The `random.Random` seed of an experiment's calibration/test split."""
    return f"split/{seed}"


def resplit_key(seed: int) -> str:
    """The `random.Random` seed of a fresh calibration/test split of a finished run."""
    return f"resplit/{seed}"


def bootstrap_seed_sequence(seed: int):
    """The numpy SeedSequence of a rule's bootstrap intervals."""
    import numpy as np

    return np.random.SeedSequence([seed, 10])


def detection_seed_sequence(secret_seed: int):
    """The numpy SeedSequence of the detection draws of the deployable rule."""
    import numpy as np

    return np.random.SeedSequence([secret_seed, 11])


def standin_root(key: str) -> bytes:
    """A stand-in for one claim's commitment root."""
    return hashlib.sha256(f"root/{key}".encode()).digest()


def validator_beacon(secret_seed: int, inference_key: str) -> bytes:
    """The validator's secret randomness for one inference (kept until it has the commitment)."""
    return hashlib.sha256(f"t2vsim/validator/{secret_seed}/{inference_key}".encode()).digest()


def challenge_seed(beacon: bytes, root: bytes) -> int:
    """The seed of the challenged segments: all 256 bits of SHA-256 of the beacon and the root."""
    return int.from_bytes(hashlib.sha256(b"t2vsim/challenge/" + bytes(beacon) + bytes(root)).digest(), "big")


def fingerprint_block_seed(seed: int, block: int) -> int:
    """The torch generator seed of one block of the JL fingerprint's projection."""
    import numpy as np

    state = np.random.SeedSequence([seed, block]).generate_state(2, np.uint32)
    return int(state[0]) | (int(state[1] & 0x7FFFFFFF) << 32)


def epoch_block_hash(seed: int, epoch: int) -> str:
    """The stand-in block hash of a simulated network epoch's PoC stage."""
    return hashlib.sha256(f"t2vsim/network/{seed}/epoch{epoch}".encode()).hexdigest()


def poc_public_key(pid: str, seed: int) -> str:
    """A deterministic stand-in public key for a simulated participant."""
    return hashlib.sha256(f"t2vsim/poc/key/{seed}/{pid}".encode()).hexdigest()[:40]
