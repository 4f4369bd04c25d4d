"""`xpeft serve`: the real app on uvicorn on a free loopback port, spoken to with httpx."""

from __future__ import annotations

import io
import json
import threading
import time

import httpx
import pytest

from xpeft_cli.service import BackgroundServer, build_service
from xpeft_cli.store import Store

from helpers import sentiment_rows, write_jsonl


@pytest.fixture()
def two_profiles(cli, fitted):
    """alice (hard masks) and dora (sign masks, three classes) in profs/, and the requests predict gets."""
    rows = [dict(r, label={"pos": "up", "neg": "down"}[r["label"]]) for r in sentiment_rows(30, 3)]
    rows += [{"text": "this game was quite fine", "label": "meh"} for _ in range(6)]
    write_jsonl(fitted / "dora.jsonl", rows)
    assert cli("fit", "-p", "dora", "-d", "dora.jsonl", "--epochs", "2", "--quiet")[0] == 0
    (fitted / "profs").mkdir()
    for f in ("alice.xpm", "dora.xpm"):
        (fitted / "profs" / f).write_bytes((fitted / f).read_bytes())
    test = [json.loads(l) for l in (fitted / "alice_test.jsonl").read_text().splitlines()]
    requests = [{"id": i, "profile": "alice" if i % 2 else "dora", "text": r["text"]} for i, r in enumerate(test)]
    return fitted, requests


def predict_cli(cli, monkeypatch, requests, profiles="profs") -> list[dict]:
    monkeypatch.setattr("sys.stdin", io.StringIO("".join(json.dumps(r) + "\n" for r in requests)))
    code, out, err = cli("predict", "--profiles", profiles)
    assert code == 0, err
    return [json.loads(l) for l in out.splitlines()]


def serve(folder, profiles="profs", **kw):
    app, _ = build_service(str(folder / profiles), str(folder / "bank"), device="cpu", **kw)
    return BackgroundServer(app)


def same_answers(got: list[dict], want: list[dict]) -> None:
    assert [(a.get("id"), a["profile"], a["prediction"]) for a in got] == [
        (a.get("id"), a["profile"], a["prediction"]) for a in want
    ]
    assert [a["score"] for a in got] == pytest.approx([a["score"] for a in want], abs=1e-5)


def test_classify_equals_predict_one_by_one_and_as_a_list(cli, two_profiles, monkeypatch):
    folder, requests = two_profiles
    want = predict_cli(cli, monkeypatch, requests)
    with serve(folder) as url, httpx.Client(base_url=url, timeout=60) as c:
        as_list = c.post("/v1/classify", json=requests)
        assert as_list.status_code == 200
        same_answers(as_list.json(), want)
        one = [c.post("/v1/classify", json=r).json() for r in requests]
        same_answers(one, want)
        no_id = c.post("/v1/classify", json={"profile": "alice", "text": requests[1]["text"]}).json()
        assert no_id == {k: v for k, v in want[1].items() if k != "id"} | {
            "score": pytest.approx(want[1]["score"], abs=1e-5)
        }
        assert c.get("/health").json()["profiles"] == 2


def test_concurrent_clients_with_mixed_profiles_get_their_own_answers_in_order(cli, two_profiles, monkeypatch):
    folder, requests = two_profiles
    want = predict_cli(cli, monkeypatch, requests)
    results: dict[int, list] = {}
    errors: list[str] = []

    def client(k: int, url: str) -> None:
        try:
            with httpx.Client(base_url=url, timeout=60) as c:
                # each client sends its own rotation of the rows, some alone and some in lists
                mine = requests[k:] + requests[:k]
                got = []
                for s in range(0, len(mine), 3):
                    part = mine[s : s + 3]
                    r = c.post("/v1/classify", json=part if s % 2 else part[0])
                    got += r.json() if s % 2 else [r.json()]
                    if not s % 2:
                        got += [c.post("/v1/classify", json=x).json() for x in part[1:]]
                results[k] = got
        except Exception as exc:  # reported below, with the assertion
            errors.append(repr(exc))

    with serve(folder, max_batch=8, max_wait_ms=20) as url:
        threads = [threading.Thread(target=client, args=(k, url)) for k in range(6)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(120)
        metrics = httpx.get(url + "/metrics").text
    assert not errors
    for k in range(6):
        same_answers(results[k], want[k:] + want[:k])
    # rows of several clients were batched together, and counted
    assert f"xpeft_rows_total {6 * len(requests)}.0" in metrics
    batches = float(next(l.split()[-1] for l in metrics.splitlines() if l.startswith("xpeft_batch_rows_count")))
    assert batches < 6 * len(requests)
    assert 'xpeft_requests_total{endpoint="classify",status="200"}' in metrics
    assert "xpeft_profiles_loaded 2.0" in metrics


def test_profiles_listed_as_inspect_describes_them_and_added_while_requests_run(cli, two_profiles, monkeypatch):
    folder, requests = two_profiles
    inspected = json.loads(cli("inspect", "profs/dora.xpm", "--json")[1])
    # a third profile, fitted but not yet served
    write_jsonl(
        folder / "erin.jsonl", [dict(r, label={"pos": "neg", "neg": "pos"}[r["label"]]) for r in sentiment_rows(40, 5)]
    )
    assert cli("fit", "-p", "erin", "-d", "erin.jsonl", "--epochs", "2", "--quiet")[0] == 0
    erin = (folder / "erin.xpm").read_bytes()
    stop, seen, errors = threading.Event(), [], []

    def background(url: str) -> None:  # keeps asking while the profile is added
        with httpx.Client(base_url=url, timeout=60) as c:
            while not stop.is_set():
                r = c.post("/v1/classify", json=requests[:4])
                (seen if r.status_code == 200 else errors).append(r.status_code)

    with serve(folder) as url, httpx.Client(base_url=url, timeout=60) as c:
        listed = c.get("/v1/profiles").json()
        assert listed["count"] == 2 and {p["profile"] for p in listed["profiles"]} == {"alice", "dora"}
        one = c.get("/v1/profiles/dora").json()
        assert one == {k: v for k, v in inspected.items() if k != "file"}
        assert c.get("/v1/profiles/erin").status_code == 404
        t = threading.Thread(target=background, args=(url,))
        t.start()
        try:
            while not seen and not errors and t.is_alive():  # requests are running
                time.sleep(0.01)
            r = c.post("/v1/profiles", content=erin, headers={"content-type": "application/octet-stream"})
            assert r.status_code == 201 and r.json()["profile"] == "erin" and not r.json()["replaced"]
            before = len(seen)
            after = c.post("/v1/classify", json=[dict(q, profile="erin") for q in requests])
            while len(seen) == before and not errors and t.is_alive():  # and go on after the swap
                time.sleep(0.01)
        finally:
            stop.set()
            t.join(60)
        assert after.status_code == 200 and not errors and seen
        # written atomically beside the others: predict reads it and answers the same
        assert (folder / "profs" / "erin.xpm").read_bytes() == erin
        same_answers(after.json(), predict_cli(cli, monkeypatch, [dict(q, profile="erin") for q in requests]))
        # replacing a profile: 200, and the new one answers
        r = c.post("/v1/profiles", content=(folder / "alice.xpm").read_bytes())
        assert r.status_code == 200 and r.json()["replaced"]
        assert c.get("/v1/profiles").json()["count"] == 3
        page = c.get("/v1/profiles", params={"offset": 1, "limit": 1}).json()
        assert page["count"] == 3 and [p["profile"] for p in page["profiles"]] == ["dora"]
        assert c.get("/v1/profiles", params={"limit": 0}).status_code == 422
        bad = c.get("/v1/profiles", params={"limit": "x"})
        assert bad.status_code == 422 and list(bad.json()) == ["error"] and bad.json()["error"].startswith("limit:")


def test_a_store_is_served_and_grows_atomically(cli, two_profiles, monkeypatch):
    folder, requests = two_profiles
    assert cli("pack", "profs", "-o", "all.xps")[0] == 0
    want = predict_cli(cli, monkeypatch, requests, "all.xps")
    with serve(folder, "all.xps") as url, httpx.Client(base_url=url, timeout=60) as c:
        same_answers(c.post("/v1/classify", json=requests).json(), want)
        assert cli("fit", "-p", "fred", "-d", "alice.jsonl", "--epochs", "1", "--quiet")[0] == 0
        assert c.post("/v1/profiles", content=(folder / "fred.xpm").read_bytes()).status_code == 201
    with Store(folder / "all.xps") as store:  # rewritten whole, atomically, with the new profile in it
        assert sorted(p.name for p in store) == ["alice", "dora", "fred"]
    fred = predict_cli(cli, monkeypatch, [dict(q, profile="fred") for q in requests], "all.xps")
    assert len(fred) == len(requests)


def test_every_bad_request_gets_a_4xx_json_line_and_the_server_goes_on(cli, two_profiles, tmp_path):
    folder, requests = two_profiles
    # a profile of another bank
    assert cli("bank", "create", "--random", "-n", "16", "--seed", "7", "-o", "bank2")[0] == 0
    assert cli("fit", "-p", "mallory", "-d", "alice.jsonl", "--epochs", "1", "--bank", "bank2", "--quiet")[0] == 0
    good = (folder / "alice.xpm").read_bytes()
    with serve(folder, max_text_chars=1000) as url, httpx.Client(base_url=url, timeout=60) as c:
        cases = [
            (c.post("/v1/classify", json={"profile": "nobody", "text": "hi"}), 404, "no profile 'nobody'"),
            (c.post("/v1/classify", json={"profile": "alice"}), 422, "needs string fields 'profile' and 'text'"),
            (c.post("/v1/classify", json=[{"profile": "alice", "text": "ok"}, {"text": 3}]), 422, "request 1:"),
            (c.post("/v1/classify", json={"profile": "alice", "text": "x" * 1001}), 413, "over the limit of 1,000"),
            (
                c.post("/v1/classify", content=b"{not json", headers={"content-type": "application/json"}),
                400,
                "not valid JSON",
            ),
            (c.post("/v1/classify", json=[]), 422, "no requests"),
            (c.post("/v1/classify", json="text"), 422, "JSON object or a list"),
            (c.post("/v1/classify", json={"profile": "alice", "text": "a", "text_pair": 5}), 422, "text_pair"),
            (c.post("/v1/profiles", content=(folder / "mallory.xpm").read_bytes()), 409, "not on this bank"),
            (c.post("/v1/profiles", content=good[:-7]), 422, "not a valid .xpm"),
            (c.post("/v1/profiles", content=b"\x00" * 64), 422, "not a valid .xpm"),
            (c.get("/v1/profiles/nobody"), 404, "no profile 'nobody'"),
        ]
        for r, status, text in cases:
            assert r.status_code == status, (r.status_code, r.text)
            body = r.json()
            assert set(body) == {"error"} and text in body["error"] and "\n" not in body["error"]
        # nothing bad was written, and the server still answers
        assert sorted(p.name for p in (folder / "profs").glob("*")) == ["alice.xpm", "dora.xpm"]
        assert c.post("/v1/classify", json=requests[0]).status_code == 200
        assert c.get("/health").json()["status"] == "ok"
        assert 'xpeft_requests_total{endpoint="classify",status="404"} 1.0' in c.get("/metrics").text
        assert c.get("/openapi.json").json()["paths"]["/v1/classify"]["post"]


def test_serve_command_line_refusals(cli, fitted):
    code, _, err = cli("serve", "--profiles", "nowhere")
    assert code == 3 and "neither a folder" in err and len(err.strip().splitlines()) == 1
    (fitted / "profs").mkdir()
    code, _, err = cli("serve", "--profiles", "profs")
    assert code == 3 and "no profiles to serve" in err
    code, _, err = cli("serve", "--profiles", "profs", "--max-batch", "0")
    assert code == 2 and "--max-batch" in err
    (fitted / "profs" / "alice.xpm").write_bytes((fitted / "alice.xpm").read_bytes()[:-3])
    code, _, err = cli("serve", "--profiles", "profs")
    assert code == 4 and "alice.xpm" in err


def test_serve_runs_as_one_command_and_stops_on_a_signal(cli, fitted):
    """The README's one command, as a real process: --port 0 --json says where it listens."""
    import os
    import signal
    import subprocess
    import sys

    (fitted / "profs").mkdir()
    (fitted / "profs" / "alice.xpm").write_bytes((fitted / "alice.xpm").read_bytes())
    proc = subprocess.Popen(
        [sys.executable, "-m", "xpeft_cli", "serve", "-P", "profs", "--port", "0", "--json", "--device", "cpu"],
        cwd=fitted,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=dict(os.environ),
    )
    try:
        info = json.loads(proc.stdout.readline())
        assert info["profiles"] == 1 and info["url"].startswith("http://127.0.0.1:")
        r = httpx.post(info["url"] + "/v1/classify", json={"profile": "alice", "text": "a fun game"}, timeout=60)
        assert r.status_code == 200 and r.json()["prediction"] in ("pos", "neg")
    finally:
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, err
    assert "Traceback" not in err
