"""Moved to ``bnnkit.graph.plan`` (the memory plan belongs to the graph contract); this name
stays for code written against the old place."""

from bnnkit.graph.plan import MemoryPlan, Step, fused_groups, layout_bytes, layouts, plan_memory

__all__ = ["MemoryPlan", "Step", "fused_groups", "layout_bytes", "layouts", "plan_memory"]
