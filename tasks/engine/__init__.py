"""The engine under the tasks: inventory, facts, steps, the per-host runner and the report."""
