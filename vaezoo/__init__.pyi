# Type checkers read this file instead of __init__.py, whose names load lazily through a module __getattr__
# (invisible to them). It lists the same names as _LAZY there: tests/test_typing.py checks that.
import pluggy

from vaezoo.api import build as build
from vaezoo.api import fit as fit
from vaezoo.components import Dataset as Dataset
from vaezoo.components import Decoder as Decoder
from vaezoo.components import Encoder as Encoder
from vaezoo.components import EncoderDecoderFamily as EncoderDecoderFamily
from vaezoo.components import Logger as Logger
from vaezoo.components import Loss as Loss
from vaezoo.components import LossParts as LossParts
from vaezoo.components import LRSchedule as LRSchedule
from vaezoo.components import Model as Model
from vaezoo.components import Prior as Prior
from vaezoo.components import RunInfo as RunInfo
from vaezoo.components import Sampler as Sampler
from vaezoo.errors import VaezooError as VaezooError
from vaezoo.files.model_file import save as save
from vaezoo.loading import load as load
from vaezoo.plugins.api_version import PLUGIN_API as PLUGIN_API
from vaezoo.plugins.manager import get_registry as get_registry
from vaezoo.plugins.manager import list_components as list_components
from vaezoo.recipes.resolve import resolve_recipe as resolve_recipe
from vaezoo.sharing.publish import push as push

__version__: str
hookimpl: pluggy.HookimplMarker
__all__: list[str]
