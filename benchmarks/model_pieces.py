"""Carry a PLM larger than one device call (64 MiB) to the GPU machine in pieces.

Here, once: a float16 copy of the model folder, cut into pieces of at most 56 MiB, with the
SHA-256 of the whole weights file:

    python benchmarks/model_pieces.py split --model mpnet-base -o .devpieces/mpnet    # ~219 MB → 4 pieces

There, one call per piece, back to back on one warm machine (files outside the work tree stay while
it is warm, 30 s after each call); each call carries `.devpieces/mpnet/piece-K` and the small files:

    python benchmarks/model_pieces.py receive .devpieces/mpnet --to /root/mpnet-fp16

`receive` copies the pieces it finds out of the work tree, and once all of them are there it joins
them, checks the SHA-256 and prints the model folder, ready for `--model /root/mpnet-fp16`.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import shutil
from pathlib import Path

PIECE = 56 * 1024 * 1024
WEIGHTS = "model.safetensors"


def sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(1 << 20):
            h.update(block)
    return h.hexdigest()


def split(model: str, out: Path, piece: int = PIECE) -> dict:
    """The model's small files as they are, its weights in float16 cut into pieces, and a manifest."""
    import torch
    from safetensors.torch import load_file, save_file

    from xpeft_cli.plm import resolve_model

    plm = resolve_model(model)
    out.mkdir(parents=True, exist_ok=True)
    small = out / "files"
    small.mkdir(exist_ok=True)
    for f in plm.path.iterdir():
        if f.is_file() and f.name != WEIGHTS and f.suffix not in (".bin", ".onnx", ".h5", ".msgpack", ".ot"):
            shutil.copy(f, small / f.name)
    half = out / WEIGHTS
    tensors = load_file(plm.path / WEIGHTS)
    save_file(
        {k: v.to(torch.float16) if v.is_floating_point() else v for k, v in tensors.items()},
        half,
        metadata={"format": "pt"},
    )
    digest, names = sha256(half), []
    with open(half, "rb") as fh:
        k = 0
        while block := fh.read(piece):
            name = f"piece-{k}"
            (out / name).mkdir(exist_ok=True)
            (out / name / "data").write_bytes(block)
            names.append(name)
            k += 1
    half.unlink()
    manifest = {
        "source": plm.ref,
        "source_sha256": plm.fingerprint,
        "weights": WEIGHTS,
        "sha256": digest,
        "pieces": names,
    }
    (out / "manifest.json").write_text(json.dumps(manifest, indent=1) + "\n")
    return manifest


def receive(src: Path, dest: Path) -> Path | None:
    """Copy the pieces present in `src` to `dest`; join and verify once all are there."""
    manifest = json.loads((src / "manifest.json").read_text())
    stash = dest.parent / (dest.name + ".pieces")
    stash.mkdir(parents=True, exist_ok=True)
    for name in manifest["pieces"]:
        if (src / name / "data").is_file():
            shutil.copy(src / name / "data", stash / name)
    missing = [n for n in manifest["pieces"] if not (stash / n).is_file()]
    if missing:
        print(f"have {len(manifest['pieces']) - len(missing)} of {len(manifest['pieces'])} pieces; next: {missing[0]}")
        return None
    dest.mkdir(parents=True, exist_ok=True)
    for f in (src / "files").iterdir():
        shutil.copy(f, dest / f.name)
    tmp = dest / (WEIGHTS + ".tmp")
    with open(tmp, "wb") as out:
        for name in manifest["pieces"]:
            with open(stash / name, "rb") as fh:
                shutil.copyfileobj(fh, out, 1 << 20)
    got = sha256(tmp)
    if got != manifest["sha256"]:
        tmp.unlink()
        raise SystemExit(f"joined weights hash {got[:16]}… is not the recorded {manifest['sha256'][:16]}…")
    tmp.rename(dest / WEIGHTS)
    print(f"model ready at {dest} (sha256 {got[:16]}…, float16 copy of {manifest['source']})")
    return dest


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = ap.add_subparsers(dest="action", required=True)
    s = sub.add_parser("split")
    s.add_argument("--model", required=True)
    s.add_argument("-o", "--output", type=Path, required=True)
    s.add_argument("--piece-mib", type=int, default=56)
    r = sub.add_parser("receive")
    r.add_argument("src", type=Path)
    r.add_argument("--to", type=Path, required=True)
    args = ap.parse_args()
    if args.action == "split":
        m = split(args.model, args.output, args.piece_mib * 1024 * 1024)
        print(json.dumps(m))
    else:
        receive(args.src, args.to)


if __name__ == "__main__":
    main()
