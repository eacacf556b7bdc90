"""SimCLR and G-SimCLR (docs/method.md section 4), in one home: ``config.py`` (the
[method] keys), ``method.py`` (the staged method), ``stages.py`` (autoencoder, cluster,
pretrain, linear, finetune), ``protocol.py`` (the authors' evaluation: early stopping,
linear probes on features, fine-tuning in two phases), ``losses.py`` (NT-Xent and the kNN
monitor) and ``models.py`` (the autoencoder, the contrastive model, the linear probes,
the fine-tuned classifier). The batched view ops and the guided batches are the data
floor's (``pipelines.simclr_ops``, ``pipelines.sampling``)."""
