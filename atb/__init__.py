"""atb: AutoTinyBERT at production scale."""
