"""Reading finished runs: trained models out of checkpoints, Grad-CAM and t-SNE figures
(docs/layout.md)."""
