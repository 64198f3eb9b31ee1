"""Makes the shared test models (onnx_test_models.py) importable by the tests beside it."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
