"""models/seeds.py: each role keeps the formula it had where it was written (bit for bit)."""

import hashlib
import random

import numpy as np
import pytest

from models import seeds


def sha_low63(text: str) -> int:
    return int.from_bytes(hashlib.sha256(text.encode()).digest()[:8], "little") & (2**63 - 1)


@pytest.mark.parametrize("seed", [0, 1, 42, 2**40 + 3])
def test_legacy_formulas(seed):
    assert seeds.tensor_seed(seed, "blocks.0.attn1.to_q.weight") == sha_low63(f"t2vsim/{seed}/blocks.0.attn1.to_q.weight")
    assert seeds.tensor_seed(seed, "x") == seeds.derive_seed(seed, "x")
    assert seeds.hwnoise_seed(seed) == sha_low63(f"hwnoise/{seed}")
    assert seeds.batch_filler_seed(seed, 2) == (seed * 7919 + 104729 * 3) % 2**63
    assert seeds.train_step_seeds(seed, "high", 5, 3) == [((seed * 1_000_003 + 2) * 10_000_019 + 5 * 1009 + i) % 2**62
                                                          for i in range(3)]
    assert seeds.experiment_request_seed(seed, 7) == seed * 1_000_003 + 7
    assert seeds.hardware_run_seed(seed, 7, "fp8") == sha_low63(f"hardware/{seed}/7/fp8")
    assert random.Random(seeds.split_key(seed)).random() == random.Random(f"split/{seed}").random()
    state = np.random.SeedSequence([seed, 3]).generate_state(2, np.uint32)
    assert seeds.fingerprint_block_seed(seed, 3) == int(state[0]) | (int(state[1] & 0x7FFFFFFF) << 32)
    assert seeds.poc_public_key("p1", seed) == hashlib.sha256(f"t2vsim/poc/key/{seed}/p1".encode()).hexdigest()[:40]
    assert seeds.epoch_block_hash(seed, 2) == hashlib.sha256(f"t2vsim/network/{seed}/epoch2".encode()).hexdigest()


def test_poc_and_prompt_roles():
    d = seeds.poc_nonce_digest("abc", "key", 5)
    assert d == hashlib.sha256(b"abc_key_nonce5").digest()
    assert seeds.poc_nonce_seed(d) == int.from_bytes(d[:8], "little") & (2**63 - 1)
    assert seeds.poc_householder_seed("abc", 2) == sha_low63("abc_layer_2_householder")
    assert seeds.poc_projection_seed("abc") == sha_low63("abc_projection")
    assert seeds.prompt_swap_index("a cat", 12) == int(hashlib.sha256(b"a cat").hexdigest(), 16) % 12
    beacon, root = b"b" * 16, b"r" * 32
    assert seeds.challenge_seed(beacon, root) == int.from_bytes(
        hashlib.sha256(b"t2vsim/challenge/" + beacon + root).digest(), "big")


def test_derive_seed_separates_paths():
    a = seeds.derive_seed(1, "noise", 0)
    assert a == sha_low63("t2vsim/1/noise/0") and 0 <= a < 2**63
    assert len({seeds.derive_seed(1, "noise", i) for i in range(100)}) == 100
    assert seeds.derive_seed(1, "noise") != seeds.derive_seed(2, "noise")
    with pytest.raises(ValueError):
        seeds.derive_seed(1, "a/b")
