"""Built-in strategies; importing this package registers them all."""

from tokenreduce.strategies import (  # noqa: F401
    attention_prune,
    fastervlm,
    fastv,
    framefusion,
    visionzip,
    keep_all,
    random_select,
    uniform,
)
