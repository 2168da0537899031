"""Entry point for `fab`: the task tree lives in tasks/, the engine in tasks/engine/."""

from tasks import ns  # noqa: F401  (Invoke looks for a collection named `ns`)
