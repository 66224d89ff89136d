"""Sphinx extension (listed in _config.yml, sphinx.local_extensions): the student edition.

``make book STUDENT=1`` builds the same book without the solutions of the exercises, for a
class. The build sets ``RTLEARN_STUDENT=1``, which turns on the config value
``rtlearn_student``; then every solution is removed from the pages before they are written:

* a gated solution (``solution-start`` ... ``solution-end`` around executable cells): the
  start node, every sibling up to the end node, and the end node;
* a plain ``solution`` directive.

sphinx-exercise's own ``hide_solutions`` drops only the start of a gated solution and leaves
its cells and its end marker behind (the build then fails on the end node), hence this
extension. The exercises themselves stay, numbered as in the full edition.
"""
from __future__ import annotations

import os

from sphinx.transforms import SphinxTransform


def student_default() -> bool:
    """True when the environment asks for the student edition (``RTLEARN_STUDENT=1``)."""
    value = os.environ.get("RTLEARN_STUDENT", "").strip().lower()
    if value in ("", "0", "false", "no"):
        return False
    if value in ("1", "true", "yes"):
        return True
    raise ValueError(f"RTLEARN_STUDENT must be 0 or 1, got {value!r}")


class RemoveSolutions(SphinxTransform):
    """Drop every solution from the doctree of the student edition.

    Runs after sphinx-exercise has checked the gated structure (priority 1) and before it
    merges gated solutions (priority 10).
    """

    default_priority = 5

    def apply(self) -> None:
        if not self.config.rtlearn_student:
            return
        from sphinx_exercise.nodes import solution_end_node, solution_node, solution_start_node

        for start in list(self.document.findall(solution_start_node)):
            parent = start.parent
            if parent is None:
                continue
            i = parent.index(start)
            j = next((k for k in range(i + 1, len(parent.children))
                      if isinstance(parent.children[k], solution_end_node)), None)
            if j is None:
                raise ValueError(f"{self.env.docname}: solution-start without solution-end "
                                 f"(label {start.get('label')!r})")
            for child in parent.children[i:j + 1]:
                parent.remove(child)
        for node in list(self.document.findall(solution_node)):
            node.parent.remove(node)


def setup(app):
    app.setup_extension("sphinx_exercise")
    app.add_config_value("rtlearn_student", student_default(), "env")
    app.add_transform(RemoveSolutions)
    return {"parallel_read_safe": True, "parallel_write_safe": True}
