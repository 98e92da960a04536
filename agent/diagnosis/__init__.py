"""On-device fault diagnosis: rules as data, root cause by correlation, guidance.

rules.py (rule files and their checks), expr.py (the condition language), context.py
(what conditions see), facts.py (clock, disk, cloud), engine.py (hysteresis, root cause,
suppression), sides.py (charger- or vehicle-side), store.py (faults in the store),
service.py (the bus consumer), selftest.py (`evedge diagnose`), codes.py (code tables),
config.py (the [diagnosis] section). Kept free of imports: agent.config imports config.py.
"""
