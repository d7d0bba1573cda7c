"""The name of every file and directory a run keeps in its workdir; code that reads or writes one imports its name.

It sits at the bottom of the package (it imports nothing), so the engine (`cnn_jax.train`), the export
(`cnn_jax.export`), the run (`cnn_jax.run`) and the scripts all take the names from here:

=======================  ==================================================================
``checkpoints/<step>/``  the latest train states, for resuming (`cnn_jax.train.Checkpointer`)
``best/``                the state with the best validation accuracy, when there is a validation split
``metrics.jsonl``        one JSON record per logged train interval and evaluation
``tensorboard/``         TensorBoard event files of the same records
``flags.json``           the settings the run was started with (`cnn_jax.run.workdir`)
``normalization.json``   the training images' mean and std a from-scratch model normalizes by
``results.json``         the finished run's summary
``export/``              what inference needs (`cnn_jax.export`)
``figures/``             training curves, confusion matrix, per-class accuracy, predictions
``.lock``                names the process that holds the workdir
=======================  ==================================================================

Experiments add their own beside these: a gallery (``gallery/``), a study's table (``comparison.*``), a two-phase
transfer run's first phase (``feature_extract/``), the numbers behind the concept figures (``concepts.json``).
"""
CHECKPOINTS_DIR = "checkpoints"
BEST_DIR = "best"
METRICS_FILE = "metrics.jsonl"
TENSORBOARD_DIR = "tensorboard"
SETTINGS_FILE = "flags.json"
NORMALIZATION_FILE = "normalization.json"
RESULTS_FILE = "results.json"
EXPORT_DIR = "export"
FIGURES_DIR = "figures"
LOCK_FILE = ".lock"
GALLERY_DIR = "gallery"
COMPARISON_JSON, COMPARISON_TABLE, COMPARISON_FIGURE = "comparison.json", "comparison.md", "comparison.png"
FEATURE_EXTRACT_DIR = "feature_extract"
CONCEPTS_FILE = "concepts.json"
