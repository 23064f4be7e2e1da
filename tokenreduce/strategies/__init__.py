"""Built-in strategies; importing this package registers them all."""

from tokenreduce.strategies import keep_all, random_select, uniform  # noqa: F401
