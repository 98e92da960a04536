"""The `evedge` command line: the service entry point and the technician's tools."""
