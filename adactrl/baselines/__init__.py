"""Baselines built from an `adactrl profile` table: the static Pareto oracle (lookup table), the
supervised budget -> plan controller (Exp 2) and the latency estimator (Exp 1). No Ray."""

from adactrl.baselines.oracle import LATENCY_STATISTICS, LookupTableOracle, OracleChoice

__all__ = ["LATENCY_STATISTICS", "LookupTableOracle", "OracleChoice"]
