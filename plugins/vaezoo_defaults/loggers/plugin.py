"""Registers the experiment loggers `tensorboard` and `mlflow` (each needs its optional extra)."""

import vaezoo

VAEZOO_PLUGIN_API = ">=1.1,<2"  # the plugin API versions it is written for (docs/plugins.md)


@vaezoo.hookimpl
def register_loggers(register):
    register(
        "tensorboard",
        "vaezoo_defaults.loggers.tensorboard_logger:TensorBoardLogger",
        summary="Scalars and picture grids in OUT/tensorboard (pip install 'vaezoo[tensorboard]')",
    )
    register(
        "mlflow",
        "vaezoo_defaults.loggers.mlflow_logger:MLflowLogger",
        summary="An MLflow run: params, metrics per epoch, pictures, model file (pip install 'vaezoo[mlflow]')",
    )
