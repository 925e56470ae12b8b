"""Adapters that let other evaluation frameworks run the budgeted model (`lmms`: lmms-eval)."""
