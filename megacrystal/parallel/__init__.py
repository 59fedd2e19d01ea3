"""3D parallelism: the rank grid, tensor/sequence-parallel layers, pipeline schedules, ZeRO-1, the engine."""
