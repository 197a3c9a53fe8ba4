"""Proof-of-Compute for the Wan2.2 DiT: Merkle commitments, strategies, validation, stages.

`run_poc_stage(participants, *, block_hash, params, fidelity, preset, runtime, seed)` is the entry
point the network epochs use; see docs/poc.md.
"""

from sim.poc.merkle import MerkleError, MerkleTree, decode_leaf, encode_leaf, verify_proof
from sim.poc.params import PocParams
from sim.poc.stage import (
    PocParticipant, PocStageError, PocStageResult, Submission, participants_from_mix, public_key_for,
    run_poc_stage,
)
from sim.poc.strategies import PocStrategy, StrategyError, parse_strategy, register_strategy, strategy_table
from sim.poc.validator import Commitment, Opening, Verdict, check_openings, validate

__all__ = [
    "Commitment", "MerkleError", "MerkleTree", "Opening", "PocParams", "PocParticipant", "PocStageError",
    "PocStageResult", "PocStrategy", "StrategyError", "Submission", "Verdict", "check_openings",
    "decode_leaf", "encode_leaf", "participants_from_mix", "parse_strategy", "public_key_for",
    "register_strategy", "run_poc_stage", "strategy_table", "validate", "verify_proof",
]
