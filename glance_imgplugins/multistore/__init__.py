"""Multi-store import and copy with live per-store progress.

``progress`` (pure state machine over Image API answers), ``render`` (live,
plain and JSON-lines output), ``api`` (the Image API calls over a
keystoneauth session) and ``runner`` (start, watch, retry, stale verdict)
back ``openstack image multistore import|copy|watch`` and
``glance-imgplugins import|copy|watch`` (``glance_imgplugins.osc``).
"""
