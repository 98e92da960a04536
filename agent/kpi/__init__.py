"""Availability KPIs at the edge: NEVI uptime per connector, charge attempts and
success, sessions ended by faults (see agent/kpi/uptime.py and agent/kpi/report.py)."""
