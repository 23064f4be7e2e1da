"""Hypothesis profiles: ``ci`` (the default, what CI runs: the property suite draws at least 200
examples per strategy) and ``quick`` for local iteration (``pytest --hypothesis-profile quick``)."""

from hypothesis import HealthCheck, settings

settings.register_profile("ci", max_examples=50, deadline=None, suppress_health_check=[HealthCheck.too_slow])
settings.register_profile("quick", max_examples=10, deadline=None, suppress_health_check=[HealthCheck.too_slow])
settings.load_profile("ci")
