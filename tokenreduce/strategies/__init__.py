"""Built-in strategies; importing this package registers them all."""

from tokenreduce.strategies import (  # noqa: F401
    attention_prune,
    dart,
    evs,
    fastervlm,
    fastv,
    fit_budget,
    flashvid,
    framefusion,
    holitom,
    keep_all,
    prumerge_plus,
    random_select,
    st_simdiff,
    st_simdiff_reference,
    st_simdiff_select,
    uniform,
    vidcom2,
    visionzip,
)
