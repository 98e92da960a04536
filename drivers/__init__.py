"""Device access: Modbus transports, block-read planner, device profiles (data), codecs."""
