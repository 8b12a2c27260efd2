"""An organization node's operator dashboard and read API, in one room per job.

- :mod:`~nodes.org_node.dashboard.config`: :class:`DashboardConfig`, where it listens and what
  it reads.
- :mod:`~nodes.org_node.dashboard.read_model`: :class:`ReadModel`, everything shown, read from
  the node's store through read-only connections.
- :mod:`~nodes.org_node.dashboard.final_view`: provisional and final verdicts side by side (the
  node's store joined to its sealer's final store, both read-only) and the final seals.
- :mod:`~nodes.org_node.dashboard.metrics`: the Prometheus exposition of the store's counts.
- :mod:`~nodes.org_node.dashboard.charts`: the geometry of the inline SVG map and charts.
- :mod:`~nodes.org_node.dashboard.page`: the HTML page and the SVG map, rendered from Jinja2
  templates (``templates/``) with autoescaping.
- :mod:`~nodes.org_node.dashboard.server`: the aiohttp application, its routes, and ``serve``.

Import from the module that defines a name; this package's ``__init__`` imports nothing, so
reading the store does not load the HTTP server.
"""
