"""The network simulation: agents (requesters, executors, validators) on the mock chain, epochs,
the two fidelities (surrogate, real) and the economics of cheating."""

from sim.lazy import lazy_exports

__getattr__, __all__ = lazy_exports(__name__, {
    "backends": ("RunDirError", "SurrogateBackend",),
    "epoch": ("EpochWeights", "NetworkResult", "NetworkSimulation", "capacity_weights", "poc_stage_weights", "run_network", "weights_fn_from",),
    "params": ("DEFAULT_MIX", "TINY_MIX", "ExecutorGroup", "NetworkParams", "RequestShape",),
})
