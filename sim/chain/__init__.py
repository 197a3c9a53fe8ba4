"""The mock chain: SQLModel tables, messages, and the one module that applies them.

    engine = create_chain("sqlite:///chain.db", ChainParams())   # or a postgresql+psycopg:// URL
    report = apply_block(engine, [Mint(sender="@gov", ...), RegisterParticipant(...), StartInference(...)])
    assert not check_invariants(engine)
"""

from sim.chain.apply import BlockReport, ChainApplyError, apply_block
from sim.chain.db import (ChainDatabaseError, SchemaVersionError, chain_params, create_chain, drop_chain,
                          make_engine, open_chain, sqlite_url)
from sim.chain.invariants import assert_invariants, check_invariants
from sim.chain.messages import (CommitSeed, ConfirmationPoc, DepositCollateral, EndEpoch, FinishInference, Mint,
                                PocCommitMsg, PocValidationMsg, RegisterParticipant, RequestParams, SetWeights,
                                StartInference, SubmitValidation, SubmitVote, parse_message)
from sim.chain.params import NGONKA_PER_GNK, ChainParams

__all__ = [
    "BlockReport", "ChainApplyError", "apply_block", "ChainDatabaseError", "SchemaVersionError", "chain_params",
    "create_chain", "drop_chain", "make_engine", "open_chain", "sqlite_url", "assert_invariants",
    "check_invariants", "CommitSeed", "ConfirmationPoc", "DepositCollateral", "EndEpoch", "FinishInference", "Mint", "PocCommitMsg",
    "PocValidationMsg", "RegisterParticipant", "RequestParams", "SetWeights", "StartInference",
    "SubmitValidation", "SubmitVote", "parse_message", "NGONKA_PER_GNK", "ChainParams",
]
