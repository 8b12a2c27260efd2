"""An organization node's operator dashboard and read API, in one room per job.

- :mod:`~nodes.org_node.dashboard.config`: :class:`DashboardConfig`, where it listens and what
  it reads.
- :mod:`~nodes.org_node.dashboard.auth`: who may read it (users file with scrypt hashes,
  signed session cookie, trusted reverse-proxy header).
- :mod:`~nodes.org_node.dashboard.read_model`: :class:`ReadModel`, the counts, quarantine,
  decisions, statements, trends and seals shown, read from the node's store through read-only
  connections.
- :mod:`~nodes.org_node.dashboard.reports_view`: the reports, filtered and paged through
  :mod:`bus.store.report_query`, one report's detail with its attachments, the exports.
- :mod:`~nodes.org_node.dashboard.openapi`: the OpenAPI document of the JSON API.
- :mod:`~nodes.org_node.dashboard.final_view`: provisional and final verdicts side by side (the
  node's store joined to its sealer's final store, both read-only) and the final seals.
- :mod:`~nodes.org_node.dashboard.metrics`: the Prometheus exposition of the store's counts
  (served by the ops server, :mod:`nodes.runtime.ops`).
- :mod:`~nodes.org_node.dashboard.charts`: the geometry of the inline SVG map and charts.
- :mod:`~nodes.org_node.dashboard.page`: the HTML page and the SVG map, rendered from Jinja2
  templates (``templates/``) with autoescaping.
- :mod:`~nodes.org_node.dashboard.server`: the aiohttp application, its routes, and ``serve``.

Import from the module that defines a name; this package's ``__init__`` imports nothing, so
reading the store does not load the HTTP server.
"""
