"""The YAML configs, installed with the package as ``recsys.configs`` (``recsys configs`` lists them)."""
