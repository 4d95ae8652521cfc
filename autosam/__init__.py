"""autosam: nnU-Net-style auto-configuring 3D medical image segmentation with SAM-based methods as plugins."""
import pluggy

__version__ = "0.1.0"

#: The marker every plugin (built-in or third-party) decorates its hook implementations with.
hookimpl = pluggy.HookimplMarker("autosam")

__all__ = ["hookimpl", "__version__"]
