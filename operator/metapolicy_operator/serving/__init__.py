"""`metapolicy serve`: the placement server, a kube-scheduler extender that lets each
MetaPolicy's active version score the candidate nodes of the pods it places.

Modules, one job each: `wire` (the extender's JSON types), `cache` (nodes and pods as the
scheduler sees them) fed by `informer` (list + watch), `policies` (MetaPolicies and their active
versions, hot-swapped), `arrivals` and `observation` (the policy's input, built by the model
library's feature builder), `scores` (preferences and the heuristic fallback as 0..10),
`shadow` (agreement of shadow-mode policies), `placer` (one request's decision, failing open),
`server` (the HTTP app), `metrics`, and `command` (the CLI entry point and worker processes).
"""
