"""Proof-of-Compute for the Wan2.2 DiT: Merkle commitments, strategies, validation, stages.

`run_poc_stage(participants, *, block_hash, params, fidelity, preset, runtime, seed)` is the entry
point the network epochs use; see docs/poc.md.
"""

from sim.lazy import lazy_exports

__getattr__, __all__ = lazy_exports(__name__, {
    "merkle": ("MerkleError", "MerkleTree", "decode_leaf", "encode_leaf", "verify_proof",),
    "params": ("DEFAULT_STAGE_MIX", "POC_FILES", "PocParams", "PocStageParams",),
    "stage": ("PocParticipant", "PocStageError", "PocStageResult", "Submission", "participants_from_mix", "public_key_for", "run_poc_stage",),
    "strategies": ("PocStrategy", "StrategyError", "parse_strategy", "register_strategy", "strategy_table",),
    "validator": ("Commitment", "Opening", "Verdict", "check_openings", "validate",),
})
