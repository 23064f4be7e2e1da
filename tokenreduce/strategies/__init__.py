"""Built-in strategies; importing this package registers them all."""

from tokenreduce.strategies import (  # noqa: F401
    attention_prune,
    fastv,
    framefusion,
    visionzip,
    keep_all,
    random_select,
    uniform,
)
