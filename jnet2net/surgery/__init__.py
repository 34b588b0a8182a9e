"""Array-level surgery: architecture-free building blocks of growth and reuse.

Every function here works on plain arrays and axes; none knows about Flax modules.
"""

from jnet2net.surgery.identity import (
    identity_batch_norm,
    identity_conv_kernel,
    identity_dense_kernel,
)
from jnet2net.surgery.mapping import (
    random_mapping,
    replication_counts,
    uniform_mapping,
)
from jnet2net.surgery.replicate import (
    add_paper_noise,
    replicate,
    split_among_replicas,
)
from jnet2net.surgery.resize import resize_kernel
from jnet2net.surgery.shrink import fold_dropped_units, select_units

__all__ = [
    "add_paper_noise",
    "fold_dropped_units",
    "identity_batch_norm",
    "identity_conv_kernel",
    "identity_dense_kernel",
    "random_mapping",
    "replicate",
    "replication_counts",
    "resize_kernel",
    "select_units",
    "split_among_replicas",
    "uniform_mapping",
]
