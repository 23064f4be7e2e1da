"""Built-in strategies; importing this package registers them all."""

from tokenreduce.strategies import attention_prune, keep_all, random_select, uniform  # noqa: F401
from tokenreduce.strategies import st_simdiff, st_simdiff_reference, st_simdiff_select  # noqa: F401
