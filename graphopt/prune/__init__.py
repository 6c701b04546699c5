"""Pruning: magnitude and filter pruning, and dropping zeroed channels through every coupled
tensor (rules in ``rules/prune*.toml``, phase ``drop_channels``). (Issue 9; being built.)"""
