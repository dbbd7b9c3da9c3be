"""Per-sample gradient engine for nn.Modules."""
