"""Many runs at once.

    sweep         a grid of overrides, one resumable run directory per point
    compare       table, loss curves and an HTML report from run directories
    paired_stats  paired t-test over seeds
"""
