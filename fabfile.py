"""Entry point for `fab` in the kit's own checkout: the task tree lives in tasks/ (installed as
djk.tasks), the engine in tasks/engine/. A team's fabfile is the same line."""

from djk.tasks import ns  # noqa: F401  (Invoke looks for a collection named `ns`)
