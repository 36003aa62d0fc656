"""Multi-store import and copy with live per-store progress.

``progress`` (pure state machine over Image API answers), ``render`` (live,
plain and JSON-lines output), ``session`` (glanceclient from OS_* settings)
and ``runner`` (the API calls) back ``glance-imgplugins import``, ``copy``
and ``watch`` (``glance_imgplugins.cmd.multistore``).
"""
