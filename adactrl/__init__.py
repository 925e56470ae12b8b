"""adactrl: latency-budget-aware control of mixture-of-experts vision-language models."""

__version__ = "0.1.0"
