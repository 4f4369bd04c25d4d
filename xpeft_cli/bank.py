"""The adapter bank: N LoRA adapters per site, shared by every profile.

A bank is a folder with `bank.json` (the manifest, see formats/bank.md) and, for trained
or materialised banks, `adapters-<hash>.safetensors`. A random bank stores no tensors: it is
regenerated from its seed by the portable generator in rng.py and checked against the
recorded bank hash, so a random bank and its materialised copy have the same hash.
"""

from __future__ import annotations

import hashlib
import json
import math
import struct
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from . import rng, safetensors_file
from .atomic import atomic_write_text, atomic_write_with
from .config import ENV_BANK, MANIFEST  # noqa: F401
from .errors import DataError, IntegrityError, UsageError
from .fingerprint import matches as same_plm_files
from .plm import PLMRef, default_targets, resolve_model

TENSORS = "adapters.safetensors"
BANK_FORMAT = "xpeft-bank/1"
MAX_ADAPTERS = 65535  # the .xpm header stores N in 16 bits
# A random bank whose tensors would take more than this is checked against its hash a chunk of
# adapters at a time *before* it is regenerated: a forged 1 KB manifest (n_adapters: 65535) must
# not cost gigabytes to refuse.
STREAM_ABOVE = 64 << 20  # banks above this are hash-checked while streamed, before they are held
MAX_WIDTH = 1 << 20  # d_in, d_out of a site: far above any PLM's


@dataclass(frozen=True)
class Site:
    """One adapted nn.Linear of the PLM."""

    name: str
    d_in: int
    d_out: int


@dataclass(frozen=True)
class SiteConfig:
    """How a site applies the mixed adapter: y = W x + scale * LN(x Â) B̂."""

    ln: bool = True
    ln_eps: float = 1e-5
    scale: float = 1.0
    pooling: str = "mean"  # how the head reads the encoder: mean over tokens

    def to_json(self) -> dict:
        return {"ln": self.ln, "ln_eps": self.ln_eps, "scale": self.scale, "pooling": self.pooling}


@dataclass
class SharedHead:
    """A head every profile of the bank reuses (mtl banks): profiles then store masks (and LN) only."""

    task: str
    labels: list[str] | None
    weight: torch.Tensor  # (C, d) float32
    bias: torch.Tensor  # (C,)

    def to_json(self) -> dict:
        return {
            "task": self.task,
            "labels": self.labels,
            "outputs": int(self.weight.shape[0]),
            "hidden": int(self.weight.shape[1]),
        }


@dataclass
class Bank:
    plm: PLMRef
    model_type: str
    sites: list[Site]
    n: int
    rank: int
    A: list[torch.Tensor]  # per site: (N, d_in, b)
    B: list[torch.Tensor]  # per site: (N, b, d_out)
    kind: str = "random"  # random | trained
    generator: dict | None = None
    config: SiteConfig = field(default_factory=SiteConfig)
    bank_hash: str = ""
    folder: Path | None = None
    head: SharedHead | None = None
    origin: dict | None = None  # how a trained bank was made (method, profiles, data), for `bank info`
    # The PLM's config and tokenizer fingerprint (plm.files_fingerprint): a new bank takes it from its PLM
    # and its hash covers it; a bank made before it existed ("") keeps the hash it had.
    plm_files: str | None = None

    def __post_init__(self) -> None:
        if self.plm_files is None:
            self.plm_files = self.plm.files

    # ---- identity -------------------------------------------------------------------
    def canonical_header(self) -> bytes:
        """What the hash covers besides the tensors: everything that changes a profile's meaning."""
        header = {
            "format": BANK_FORMAT,
            "plm_fingerprint": self.plm.fingerprint,
            "n": self.n,
            "rank": self.rank,
            "dtype": "float32",
            "sites": [[s.name, s.d_in, s.d_out] for s in self.sites],
            "config": self.config.to_json(),
        }
        if self.head is not None:  # only then: random banks keep the hash they always had
            header["head"] = self.head.to_json()
        if self.plm_files:  # likewise: banks made before it was recorded keep their hash
            header["plm_files"] = self.plm_files
        return json.dumps(header, sort_keys=True, separators=(",", ":")).encode("utf-8")

    def compute_hash(self) -> str:
        """SHA-256 over b'XPEFT-BANK\\0', u32 header length, header, then A[0],B[0],A[1],… as float32 LE."""
        head = self.canonical_header()
        h = hashlib.sha256(b"XPEFT-BANK\0" + struct.pack("<I", len(head)) + head)
        for a, b in zip(self.A, self.B):
            for t in (a, b):
                h.update(_le_bytes(t))
        if self.head is not None:
            h.update(_le_bytes(self.head.weight))
            h.update(_le_bytes(self.head.bias))
        return h.hexdigest()

    def streamed_hash(self, chunk_bytes: int = 1 << 20) -> str:
        """compute_hash of a random bank without holding its tensors: the generator makes any run of
        adapters alone, so they are hashed a chunk at a time, in the order compute_hash reads them."""
        if self.generator is None:
            raise ValueError("only a random bank can be hashed from its generator")
        seed, scale = int(self.generator["seed"]), float(self.generator.get("init_scale", 1.0))
        head = self.canonical_header()
        h = hashlib.sha256(b"XPEFT-BANK\0" + struct.pack("<I", len(head)) + head)
        for l, s in enumerate(self.sites):
            for tensor, numel, bound in (
                (rng.TENSOR_A, s.d_in * self.rank, math.sqrt(3.0 / s.d_in)),
                (rng.TENSOR_B, self.rank * s.d_out, scale * math.sqrt(3.0 / self.rank)),
            ):
                step = max(1, chunk_bytes // (4 * numel))
                for i in range(0, self.n, step):
                    block = rng.uniform_block(seed, l, tensor, range(i, min(self.n, i + step)), numel, bound)
                    h.update(block.astype("<f4", copy=False).tobytes())
        return h.hexdigest()

    def tensor_bytes(self) -> int:
        return 4 * self.n * self.rank * sum(s.d_in + s.d_out for s in self.sites)

    @property
    def L(self) -> int:
        return len(self.sites)

    # ---- creation -------------------------------------------------------------------
    @classmethod
    def create_random(
        cls,
        plm: PLMRef,
        encoder: torch.nn.Module,
        n: int,
        rank: int | None = None,
        seed: int = 0,
        targets: str | None = None,
        init_scale: float = 1.0,
        config: SiteConfig | None = None,
    ) -> "Bank":
        if not 1 <= n <= MAX_ADAPTERS:
            raise UsageError(f"-n must be between 1 and {MAX_ADAPTERS}, got {n}")
        model_config: Any = encoder.config
        model_type = str(model_config.model_type)
        sites = find_sites(encoder, targets or default_targets(model_type))
        hidden = int(model_config.hidden_size)
        if rank is None:
            rank = max(1, hidden // 16)
        if not 1 <= rank <= min(min(s.d_in, s.d_out) for s in sites):
            raise UsageError(f"--rank must be between 1 and the narrowest site's width, got {rank}")
        if not (math.isfinite(init_scale) and 1e-6 <= init_scale <= 1e6):
            raise UsageError(f"--init-scale must be between 1e-6 and 1e6, got {init_scale}")
        gen = {
            "name": rng.GENERATOR_NAME,
            "seed": int(seed),
            # A ~ U(±sqrt(3/d_in)): unit-variance projections; B ~ U(±init_scale*sqrt(3/b)).
            "init_scale": float(init_scale),
        }
        bank = cls(
            plm=plm,
            model_type=model_type,
            sites=sites,
            n=n,
            rank=rank,
            A=[],
            B=[],
            kind="random",
            generator=gen,
            config=config or SiteConfig(),
        )
        bank.A, bank.B = regenerate(sites, n, rank, gen)
        bank.bank_hash = bank.compute_hash()
        return bank

    # ---- persistence ----------------------------------------------------------------
    def manifest(self, materialized: bool) -> dict:
        return {
            "format": BANK_FORMAT,
            "kind": self.kind,
            "bank_hash": self.bank_hash,
            "plm": {"ref": self.plm.ref, "fingerprint": self.plm.fingerprint, "model_type": self.model_type}
            | ({"files_fingerprint": self.plm_files} if self.plm_files else {}),
            "n_adapters": self.n,
            "rank": self.rank,
            "dtype": "float32",
            "sites": [{"name": s.name, "d_in": s.d_in, "d_out": s.d_out} for s in self.sites],
            "config": self.config.to_json(),
            "generator": self.generator,
            "tensors": self.tensors_name() if materialized else None,
            "head": None if self.head is None else self.head.to_json(),
            "origin": self.origin,
        }

    def tensors_name(self) -> str:
        """The tensor file's name, by content (`adapters-<first 16 hex of the bank hash>.safetensors`): a
        replaced bank's new tensors never overwrite the file the old manifest names."""
        return f"adapters-{self.bank_hash[:16]}.safetensors" if self.bank_hash else TENSORS

    def save(self, folder: str | Path, materialize: bool = False) -> Path:
        """Write the bank crash-safely: the tensors under their own name, then the manifest (atomic), then
        the files no manifest names any more. Killed at any point, the folder holds a manifest and the
        complete tensor file it names: the old bank or the new one."""
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        if self.kind != "random":
            materialize = True  # trained banks cannot be regenerated
        if materialize:
            from safetensors.torch import save_file

            tensors = {}
            for i, (a, b) in enumerate(zip(self.A, self.B)):
                tensors[f"sites.{i}.A"] = a.contiguous()
                tensors[f"sites.{i}.B"] = b.contiguous()
            if self.head is not None:
                tensors["head.weight"] = self.head.weight.float().contiguous()
                tensors["head.bias"] = self.head.bias.float().contiguous()
            atomic_write_with(
                folder / self.tensors_name(),
                lambda p: save_file(tensors, str(p), metadata={"bank_hash": self.bank_hash}),
            )
        atomic_write_text(folder / MANIFEST, json.dumps(self.manifest(materialize), indent=2) + "\n")
        for old in folder.glob("adapters*.safetensors"):  # the replaced bank's tensors, once nothing names them
            if not materialize or old.name != self.tensors_name():
                old.unlink(missing_ok=True)
        self.folder = folder
        return folder

    @classmethod
    def load(cls, folder: str | Path, model: str | None = None) -> "Bank":
        """Load and verify a bank. `model` overrides where the PLM is found (its hash must match)."""
        folder = Path(folder)
        path = folder / MANIFEST
        m = read_manifest(folder)
        try:
            sites = [Site(str(s["name"]), int(s["d_in"]), int(s["d_out"])) for s in m["sites"]]
            n, rank = int(m["n_adapters"]), int(m["rank"])
            config = SiteConfig(**m.get("config", {}))
            plm_info = m["plm"]
            ref, fingerprint = str(plm_info["ref"]), str(plm_info["fingerprint"])
            files = str(plm_info.get("files_fingerprint", ""))
        except (ValueError, KeyError, TypeError, OverflowError) as exc:
            raise IntegrityError(f"{path}: malformed bank manifest ({exc.__class__.__name__}: {exc})") from None
        if not (
            1 <= n <= MAX_ADAPTERS
            and 1 <= rank <= 65535
            and sites
            and all(1 <= s.d_in <= MAX_WIDTH and 1 <= s.d_out <= MAX_WIDTH for s in sites)
        ):
            raise IntegrityError(f"{path}: n_adapters, rank or site widths out of range")
        plm = resolve_model(model or ref)
        if plm.fingerprint != fingerprint:
            raise IntegrityError(
                f"model {plm.ref} (sha256 {plm.fingerprint[:12]}…) is not the PLM this bank was made for "
                f"(sha256 {fingerprint[:12]}…)"
            )
        if files and not same_plm_files(plm.path, files, plm.files):
            raise IntegrityError(
                f"model {plm.ref}: its config or tokenizer (fingerprint {plm.files[:15]}…) are not those this "
                f"bank was made with ({files[:15]}…)"
            )
        _check_sites(path, plm, sites, rank)  # before anything is generated: a forged size costs nothing
        bank = cls(
            plm=plm,
            model_type=str(plm_info.get("model_type", "")),
            sites=sites,
            n=n,
            rank=rank,
            A=[],
            B=[],
            kind=m.get("kind", "random"),
            generator=m.get("generator"),
            config=config,
            folder=folder,
            origin=m.get("origin"),
            plm_files=files,
        )
        verified = False
        if m.get("tensors"):
            tensors = m["tensors"]
            # a file name inside the bank folder, never a path that leaves it
            if (
                not isinstance(tensors, str)
                or Path(tensors).name != tensors
                or tensors in (".", "..")
                or not 1 <= len(tensors.encode("utf-8", "surrogatepass")) <= 255
                or "\0" in tensors
            ):
                raise IntegrityError(f"{path}: 'tensors' must name a file inside the bank folder, got {tensors!r}")
            bank.A, bank.B, bank.head = _load_tensors(folder / tensors, sites, n, rank, m.get("head"))
        elif isinstance(bank.generator, dict) and bank.generator.get("name") == rng.GENERATOR_NAME:
            try:
                scale = float(bank.generator.get("init_scale", 1.0))
                if not 1e-6 <= scale <= 1e6:  # `bank create --init-scale`'s range: values stay finite in float32
                    raise ValueError(f"init_scale {scale!r} is outside [1e-6, 1e6]")
                if bank.tensor_bytes() > STREAM_ABOVE:
                    if bank.streamed_hash() != m.get("bank_hash"):
                        raise IntegrityError(
                            f"bank at {folder} does not match its recorded hash (checked before "
                            f"regenerating its {bank.tensor_bytes() / 2**30:.1f} GiB of adapters)"
                        )
                    verified = True  # the generator is deterministic: the tensors it now makes have that hash
                bank.A, bank.B = regenerate(sites, n, rank, bank.generator)
            except (KeyError, TypeError, ValueError, OverflowError) as exc:
                raise IntegrityError(f"{path}: malformed generator spec ({exc.__class__.__name__}: {exc})") from None
        else:
            raise IntegrityError(f"{path}: bank has neither tensors nor a known generator")
        bank.bank_hash = m["bank_hash"] if verified else bank.compute_hash()
        if bank.bank_hash != m.get("bank_hash"):
            raise IntegrityError(
                f"bank at {folder} does not match its recorded hash "
                f"(recorded {str(m.get('bank_hash'))[:16]}…, computed {bank.bank_hash[:16]}…)"
            )
        return bank


def stack_by_shape(
    bank_a: list[torch.Tensor], bank_b: list[torch.Tensor], dtype: torch.dtype | None = None
) -> list[tuple[list[int], torch.Tensor, torch.Tensor]]:
    """The sites' bank tensors stacked per shape group: [(site numbers, (G, N, d_in, b), (G, N, b, d_out))],
    groups in order of their first site. One stacked pair lets one batched matmul mix a whole group;
    training (XPeftModel.cast_bank) and serving (routing's tables) stack the bank here alike."""
    groups: dict[tuple, list[int]] = {}
    for l, (a, b) in enumerate(zip(bank_a, bank_b)):
        groups.setdefault((tuple(a.shape), tuple(b.shape)), []).append(l)
    return [
        (
            sites,
            torch.stack([bank_a[l].to(dtype) if dtype else bank_a[l] for l in sites]),
            torch.stack([bank_b[l].to(dtype) if dtype else bank_b[l] for l in sites]),
        )
        for sites in groups.values()
    ]


def _check_sites(path: Path, plm: PLMRef, sites: list[Site], rank: int) -> None:
    """Every site must be a Linear of this PLM with the manifest's widths, and the rank at most the
    site's narrower side: checked from the weights' headers, so a forged manifest is refused before
    its adapters are generated (a 1 KB file must not cost gigabytes)."""
    from .plm import linear_shape, weight_shapes

    shapes = weight_shapes(plm)
    if not shapes:
        return  # a PLM without safetensors weights is refused when it is loaded
    for s in sites:
        if linear_shape(shapes, s.name) != (s.d_out, s.d_in):
            raise IntegrityError(f"{path}: site {s.name!r} ({s.d_in}→{s.d_out}) is not a Linear of this PLM")
        if rank > min(s.d_in, s.d_out):
            raise IntegrityError(f"{path}: rank {rank} is above site {s.name!r}'s width")


def read_manifest(folder: str | Path) -> dict:
    """A bank's manifest as JSON, fast (no tensors). Missing: DataError; damaged: IntegrityError."""
    path = Path(folder) / MANIFEST
    if not path.is_file():
        raise DataError(f"no bank at {folder} ({MANIFEST} missing); create one with 'xpeft bank create'")
    try:
        m = json.loads(path.read_text(encoding="utf-8"))
    except RecursionError:
        raise IntegrityError(f"{path}: malformed bank manifest (JSON nested too deeply)") from None
    except (ValueError, UnicodeDecodeError) as exc:
        raise IntegrityError(f"{path}: malformed bank manifest ({exc})") from None
    if not isinstance(m, dict) or m.get("format") != BANK_FORMAT or not isinstance(m.get("bank_hash"), str):
        raise IntegrityError(f"{path}: not an {BANK_FORMAT} manifest")
    return m


def find_sites(encoder: torch.nn.Module, targets: str) -> list[Site]:
    """Every nn.Linear whose module name ends with one of the comma-separated suffixes."""
    suffixes = [t.strip() for t in targets.split(",") if t.strip()]
    sites = []
    for name, module in encoder.named_modules():
        if isinstance(module, torch.nn.Linear) and any(name == s or name.endswith("." + s) for s in suffixes):
            sites.append(Site(name, module.in_features, module.out_features))
    if not sites:
        raise UsageError(f"--targets {targets!r} matches no nn.Linear module of this model")
    return sites


def regenerate(sites: list[Site], n: int, rank: int, gen: dict) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    seed, scale = int(gen["seed"]), float(gen.get("init_scale", 1.0))
    As, Bs = [], []
    for l, s in enumerate(sites):
        a = rng.uniform_block(seed, l, rng.TENSOR_A, range(n), s.d_in * rank, math.sqrt(3.0 / s.d_in))
        b = rng.uniform_block(seed, l, rng.TENSOR_B, range(n), rank * s.d_out, scale * math.sqrt(3.0 / rank))
        As.append(torch.from_numpy(a).view(n, s.d_in, rank))
        Bs.append(torch.from_numpy(b).view(n, rank, s.d_out))
    return As, Bs


def _le_bytes(t: torch.Tensor) -> bytes:
    return t.detach().to("cpu", torch.float32).contiguous().numpy().astype("<f4", copy=False).tobytes()


def _load_tensors(path: Path, sites: list[Site], n: int, rank: int, head: dict | None = None):
    if not path.is_file():
        raise IntegrityError(f"bank tensors {path} missing")
    _, tensors = safetensors_file.read(path)
    shared = None
    if head:
        w, b = tensors.get("head.weight"), tensors.get("head.bias")
        try:
            shape_ok = (
                w is not None
                and b is not None
                and tuple(w.shape) == (int(head["outputs"]), int(head["hidden"]))
                and tuple(b.shape) == (int(head["outputs"]),)
            )
            if shape_ok and w is not None and b is not None:
                shared = SharedHead(str(head["task"]), head.get("labels"), w.float(), b.float())
        except (KeyError, TypeError, ValueError):
            shape_ok = False
        if not shape_ok:
            raise IntegrityError(f"{path}: the shared head is missing or does not match the manifest")
    As, Bs = [], []
    for i, s in enumerate(sites):
        a, b = tensors.get(f"sites.{i}.A"), tensors.get(f"sites.{i}.B")
        if a is None or b is None or tuple(a.shape) != (n, s.d_in, rank) or tuple(b.shape) != (n, rank, s.d_out):
            raise IntegrityError(f"{path}: tensors for site {i} missing or of the wrong shape")
        As.append(a.float())
        Bs.append(b.float())
    return As, Bs, shared


def default_bank_dir() -> Path:
    import os

    return Path(os.environ.get(ENV_BANK, "bank"))
