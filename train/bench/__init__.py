"""Benchmarks of the training stack (`energy-attn bench ...`, `energy-attn data bench`).

    training    train-step time, energy attention vs dot_product_attention; the whole recipe
    data        how fast the token cache feeds training
    checkpoint  what verified checkpoints cost against a whole save and restore
    sharded     a sequence-sharded train step vs one device
"""
