"""Pruning: magnitude and filter pruning, and dropping zeroed channels through every coupled
tensor (rules in ``rules/prune*.toml``, phase ``drop_channels``). (Issue 9; being built.)"""

# magnitude and filter pruning, the report, the layer selection (graphopt.prune.api and below)
from graphopt.prune.api import prune  # noqa: E402
from graphopt.prune.layers import prunable_layers, select_layers  # noqa: E402
from graphopt.prune.report import PruneReport  # noqa: E402
from graphopt.prune.storage import load_sparse, save_sparse, storage_sizes  # noqa: E402

# channel coupling (which channels keep or drop together) and dropping zeroed channels
from graphopt.prune.coupling import ChannelGroup, channel_groups  # noqa: E402
from graphopt.prune.drop import DropReport, drop_channels  # noqa: E402
from graphopt.prune import rule_functions as _rule_functions  # noqa: E402,F401  (registers them)
