"""The network simulation: agents (requesters, executors, validators) on the mock chain, epochs,
the two fidelities (surrogate, real) and the economics of cheating."""

from sim.network.backends import RunDirError, SurrogateBackend
from sim.network.epoch import (EpochWeights, NetworkResult, NetworkSimulation, capacity_weights, poc_stage_weights,
                               run_network, weights_fn_from)
from sim.network.params import DEFAULT_MIX, TINY_MIX, ExecutorGroup, NetworkParams, RequestShape

__all__ = ["RunDirError", "SurrogateBackend", "EpochWeights", "weights_fn_from", "NetworkResult", "NetworkSimulation", "capacity_weights",
           "poc_stage_weights", "run_network", "DEFAULT_MIX", "TINY_MIX", "ExecutorGroup", "NetworkParams",
           "RequestShape"]
