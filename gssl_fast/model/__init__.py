"""The model: backbones by timm name, the gated heads, the G-SSL task and its losses,
attacks, accuracy metrics and the optimizer (docs/layout.md)."""
