"""What operators and node managers feed in: strict YAML, the config file, the
slices file, PLC slivers, slice names, the notice template.
"""
