"""Makes `import stable_diffusion` work from a plain checkout (repo root on PYTHONPATH, as
the hw2_N.sh scripts set it, no `pip install -e .`): the code lives in `stable-diffusion/`,
a folder name Python cannot import, so this package's search path points there."""
from pathlib import Path

__path__ = [str(Path(__file__).resolve().parent.parent / "stable-diffusion")]
