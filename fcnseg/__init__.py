"""fcnseg: Fully Convolutional Networks for semantic segmentation."""

__version__ = "0.1.0"

from fcnseg.models import build_model, list_models  # noqa: E402

__all__ = ["__version__", "build_model", "list_models"]
