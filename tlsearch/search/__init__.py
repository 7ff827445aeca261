"""A search along its seams: ``prepare`` (before Ray), ``session`` (where it runs), ``trial`` (one Train run),
``tables`` (ResultGrid to Parquet rows), ``export`` (the best model), ``resume`` and ``run`` (the loop)."""

from tlsearch.search.prepare import Plan, prepare
from tlsearch.search.run import Outcome, run_search
from tlsearch.search.session import Resources, plan_resources, start_ray

__all__ = ["Outcome", "Plan", "Resources", "plan_resources", "prepare", "run_search", "start_ray"]
