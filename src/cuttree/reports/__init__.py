"""Reports: the ``report.json`` every command writes and the report a person reads (``report``),
and progress for long commands (``progress``). Reports render figures; they never compute them.
"""
