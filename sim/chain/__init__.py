"""The mock chain: SQLModel tables, messages, and the one module that applies them.

    engine = create_chain("sqlite:///chain.db", ChainParams())   # or a postgresql+psycopg:// URL
    report = apply_block(engine, [Mint(sender="@gov", ...), RegisterParticipant(...), StartInference(...)])
    assert not check_invariants(engine)
"""

from sim.lazy import lazy_exports

__getattr__, __all__ = lazy_exports(__name__, {
    "apply": ("BlockReport", "ChainApplyError", "apply_block",),
    "db": ("ChainDatabaseError", "SchemaVersionError", "chain_params", "create_chain", "drop_chain", "make_engine", "open_chain", "sqlite_url",),
    "invariants": ("assert_invariants", "check_invariants",),
    "messages": ("CommitSeed", "ConfirmationPoc", "DepositCollateral", "EndEpoch", "FinishInference", "Mint", "PocCommitMsg", "PocValidationMsg", "RegisterParticipant", "RequestParams", "SetWeights", "StartInference", "SubmitValidation", "SubmitVote", "parse_message",),
    "params": ("NGONKA_PER_GNK", "ChainParams",),
})
