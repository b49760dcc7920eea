"""Self-supervised encoders: training (torch, ``train`` extra) and ONNX export.

Importing this package (and :mod:`~serving.encoders.onnx_io`, :mod:`~serving.encoders.data`,
:mod:`~serving.encoders.models`, :mod:`~serving.encoders.cli`) never imports torch; only the
training and export modules do.

=================  ======  ===================================================================
module             torch   what
=================  ======  ===================================================================
``objectives``     yes     SimCLR's NT-Xent and VICReg losses
``augment``        yes     batch augmentations: images (zoom-crop, shift, noise, erasing) and
                           tabular (SCARF corruption from the marginals, noise)
``nets``           yes     ``Encoder`` (normalisation inside the graph + CNN/MLP backbone)
``train``          yes     seeded training, early stopping, checkpoints (``TrainConfig``)
``export``         yes     ONNX export (opset 18, dynamic batch, output ``embedding``) + check
``text``           yes*    all-MiniLM-L6-v2 to ONNX; ``TextEncoder`` runs it without torch
``build_digits``   yes     rebuilds the bundled digits models
``onnx_io``        no      ``OnnxEncoder``: run any ONNX graph with a named embedding output
``data``           no      array files (.npy/.npz/.parquet) and input validation
``models``         no      paths and metadata of the bundled models
``cli``            no      ``repwatch encoder train|export|embed`` (torch imported lazily)
=================  ======  ===================================================================
"""
