"""Training algorithms behind one signature: ERM, PGD, MRT, MAT, MDA, AugMix."""

from fastmbr.algorithms.base import Algorithm, algorithm_names, build_algorithm, register_algorithm

__all__ = ["Algorithm", "algorithm_names", "build_algorithm", "register_algorithm"]
