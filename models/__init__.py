"""Model zoo (transformer, Zamba-like hybrid, Block-State Transformer).

Every model plugs in `energy_attn.EnergyAttention`; the models arrive with the
training-stack and zoo issues.
"""
