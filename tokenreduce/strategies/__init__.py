"""Built-in strategies; importing this package registers them all."""

from tokenreduce.strategies import attention_prune, keep_all, random_select, uniform  # noqa: F401
