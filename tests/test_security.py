"""Security: credentials never leak into any artifact, model loading runs no untrusted code, manifests cannot
reach outside the allowed schemes, and names from inputs cannot write outside the output prefix."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import urllib.request
from pathlib import Path

import pyarrow.parquet as pq
import pytest
import soundfile as sf

from pipeline import RunOptions, UsageError, read_results, run_job
from pipeline.graph import _source_segments
from pipeline.sources import list_sources, make_filesystem
from tests.hostile_corpus import tone

REPO = Path(__file__).resolve().parents[1]
# Known fake credentials for one run; distinct from the session's so any hit is this run's.
SECRETS = {
    "AWS_ACCESS_KEY_ID": "AKIALEAKCANARY000042",
    "AWS_SECRET_ACCESS_KEY": "leak-canary-secret/Zq9+xK2mP7vR4tW8yB1nC5",
    "AWS_SESSION_TOKEN": "leak-canary-session-token-7f3e9a1b2c4d",
}


def _needles() -> list[bytes]:
    out = []
    for v in SECRETS.values():
        out += [v.encode(), v[len(v) // 2 :].encode()]  # also a tail: a truncated secret is still a leak
    return out


def _leaks(blob: bytes) -> list[str]:
    return [n.decode() for n in _needles() if n in blob]


def _parquet_text(path: Path) -> bytes:
    """Every value and every metadata string of a Parquet file (values may be compressed on disk)."""
    f = pq.ParquetFile(path)
    meta = f.metadata
    parts = [str(f.schema_arrow).encode(), repr(meta.metadata).encode()]
    parts.append(json.dumps(f.read().to_pylist(), default=str).encode())
    return b"\n".join(parts)


@pytest.mark.slow
def test_credentials_never_leak(s3_server, prometheus_stack, tmp_path):
    """One run of `python -m jobs.run` with canary credentials (its own embedded Ray), reading S3 with an
    unreadable object, a vanished one and a corrupt one, pushing metrics; then a run whose output is
    unreachable. Grep stdout, stderr, every output object (data and metadata), the run summary, the
    Ray session logs and the Pushgateway's metrics for any part of the credentials."""
    s3 = s3_server.client()
    s3_server.create_bucket("leak-in")
    s3_server.create_bucket("leak-out")
    sf.write(tmp_path / "a.wav", tone(2.0), 16000)
    for key in ("in/a.wav", "in/denied.wav", "in/gone.wav"):
        s3.upload_file(str(tmp_path / "a.wav"), "leak-in", key)
    s3.put_object(Bucket="leak-in", Key="in/corrupt.mp3", Body=b"not audio" * 100)
    s3.put_bucket_policy(
        Bucket="leak-in",
        Policy=json.dumps(
            {
                "Version": "2012-10-17",
                "Statement": [
                    {
                        "Effect": "Deny",
                        "Principal": "*",
                        "Action": "s3:GetObject",
                        "Resource": "arn:aws:s3:::leak-in/in/denied.wav",
                    }
                ],
            }
        ),
    )
    ray_tmp = tempfile.mkdtemp(prefix="rsec", dir="/tmp")  # short: Ray's socket paths have a length limit
    env = dict(os.environ, **SECRETS, RAY_TMPDIR=ray_tmp, PYTHONPATH=str(REPO))
    env.pop("RAY_ADDRESS", None)
    base = [sys.executable, "-m", "jobs.run", "--s3-endpoint", s3_server.endpoint, "--workers", "1"]
    try:
        run = subprocess.run(
            base
            + ["--input", "s3://leak-in/in/", "--output", "s3://leak-out/o", "--max-error-fraction", "1"]
            + [
                "--pushgateway",
                prometheus_stack.pushgateway,
                "--job-name",
                "leak-canary",
                "--run-id",
                "leak-1",
            ],
            cwd=REPO,
            env=env,
            capture_output=True,
            timeout=300,
        )
        assert run.returncode == 0, run.stderr.decode()[-3000:]
        s3.delete_object(Bucket="leak-in", Key="in/gone.wav")  # listed by nobody now: a second run sees 3
        failed = subprocess.run(
            base + ["--input", "s3://leak-in/in/", "--output", "s3://no-such-bucket-xyz/o"],
            cwd=REPO,
            env=env,
            capture_output=True,
            timeout=300,
        )
        assert failed.returncode == 3, failed.stderr.decode()[-2000:]

        found: dict[str, list[str]] = {}

        def check(name: str, blob: bytes) -> None:
            if hits := _leaks(blob):
                found[name] = hits

        for name, proc in (("run", run), ("failed run", failed)):
            check(f"{name} stdout", proc.stdout)
            check(f"{name} stderr", proc.stderr)
        out = tmp_path / "out"
        keys = [o["Key"] for o in s3.list_objects_v2(Bucket="leak-out")["Contents"]]
        assert any(k.endswith(".parquet") for k in keys) and "o/runs/leak-1.json" in keys
        for key in keys:
            if key.endswith("/"):  # directory markers
                continue
            dest = out / key
            dest.parent.mkdir(parents=True, exist_ok=True)
            s3.download_file("leak-out", key, str(dest))
            check(key, dest.read_bytes())
            if key.endswith(".parquet"):
                check(key + " (decoded)", _parquet_text(dest))
        logs = list(Path(ray_tmp).rglob("*"))
        assert any(p.name.endswith((".log", ".out", ".err")) for p in logs), "no Ray logs to check"
        for p in logs:
            if p.is_file() and not p.is_socket():
                check(str(p), p.read_bytes())
        with urllib.request.urlopen(f"{prometheus_stack.pushgateway}/metrics", timeout=10) as r:
            metrics = r.read()
        assert b"leak-canary" in metrics, "the run pushed no metrics"
        check("pushgateway /metrics", metrics)
        assert not found, f"credentials leaked into: {found}"

        files = {r["id"]: r for r in read_results("s3://leak-out/o", s3_server.endpoint).files.to_pylist()}
        assert files["s3://leak-in/in/denied.wav"]["error_kind"] == "permission_denied"
        assert files["s3://leak-in/in/a.wav"]["status"] == "ok"
    finally:
        shutil.rmtree(ray_tmp, ignore_errors=True)


def _tiny_model_copy(dest: Path) -> Path:
    from headrouter.engine.tiny import tiny_path

    shutil.copytree(tiny_path("tiny-random"), dest)
    return dest


class _Boom:
    """Unpickling this creates a marker file: proof that a pickle was executed."""

    def __init__(self, marker: str):
        self.marker = marker

    def __reduce__(self):
        return (open, (self.marker, "w"))


def test_model_loading_never_unpickles(tmp_path):
    import torch

    from headrouter import load_lalm

    model = _tiny_model_copy(tmp_path / "model")
    os.remove(model / "model.safetensors")
    marker = tmp_path / "pickle-ran"
    torch.save({"weights": _Boom(str(marker))}, model / "pytorch_model.bin")
    with pytest.raises(Exception):  # noqa: B017 - any refusal will do; running the pickle will not
        load_lalm(str(model))
    assert not marker.exists(), "a pickled checkpoint was executed"


def test_model_loading_runs_no_remote_code(tmp_path):
    from headrouter import load_lalm

    model = _tiny_model_copy(tmp_path / "model")
    marker = tmp_path / "remote-code-ran"
    (model / "evil.py").write_text(
        f"open({str(marker)!r}, 'w').close()\n"
        "from transformers import PretrainedConfig, PreTrainedModel, PreTrainedTokenizerFast\n"
        "class EvilConfig(PretrainedConfig):\n    model_type = 'evil'\n"
        "class EvilModel(PreTrainedModel):\n    config_class = EvilConfig\n"
        "class EvilTokenizer(PreTrainedTokenizerFast):\n    pass\n"
    )
    for name, auto_map in (
        ("config.json", {"AutoConfig": "evil.EvilConfig", "AutoModel": "evil.EvilModel"}),
        ("tokenizer_config.json", {"AutoTokenizer": [None, "evil.EvilTokenizer"]}),
    ):
        cfg = json.loads((model / name).read_text())
        cfg["auto_map"] = auto_map
        (model / name).write_text(json.dumps(cfg))
    try:
        lalm = load_lalm(str(model))  # loading the stock class is fine; importing evil.py is not
        assert type(lalm.model).__module__.startswith("transformers.")
    except Exception:
        pass
    assert not marker.exists(), "remote code ran without trust_remote_code"


def test_model_download_cannot_write_outside_its_cache(s3_server, tmp_path):
    """An object key with '..' under an s3:// model prefix must not be written outside the cache folder."""
    from headrouter import load_lalm
    from headrouter.engine.tiny import tiny_path

    s3 = s3_server.client()
    s3_server.create_bucket("hostile-models")
    src = tiny_path("tiny-random")
    for f in os.listdir(src):
        s3.upload_file(str(src / f), "hostile-models", f"m/{f}")
    s3.put_object(Bucket="hostile-models", Key="m/../../../../escaped.txt", Body=b"planted")
    cache = tmp_path / "a" / "b" / "c" / "cache"
    try:
        load_lalm("s3://hostile-models/m", cache_dir=cache, endpoint_url=s3_server.endpoint)
    except Exception:
        pass  # refusing the whole model is fine
    planted = [p for p in tmp_path.rglob("escaped.txt")]
    assert all(cache / "s3" in p.parents for p in planted), f"written outside the model cache: {planted}"


def test_manifest_schemes_and_local_reads_from_an_s3_job(s3_server, tmp_path):
    """An S3 manifest may name only s3:// objects: local paths, file://, '..' and other schemes become
    'forbidden' error rows without being opened. A local manifest may name local files, but no other scheme."""
    s3 = s3_server.client()
    s3_server.create_bucket("manifests")
    sf.write(tmp_path / "a.wav", tone(1.0), 16000)
    s3.upload_file(str(tmp_path / "a.wav"), "manifests", "audio/a.wav")
    hostile = [
        "/etc/passwd",
        "file:///etc/hostname",
        "../../etc/passwd",
        "audio/../../other-bucket/x.wav",
        "http://127.0.0.1:1/x.wav",
        "https://example.com/a.wav",
        "gs://bucket/x.wav",
        "ftp://host/x.wav",
    ]
    rows = [{"audio": "s3://manifests/audio/a.wav", "id": "ok"}, {"audio": "audio/a.wav", "id": "relative"}]
    rows += [{"audio": a, "id": f"h{i}"} for i, a in enumerate(hostile)]
    s3.put_object(Bucket="manifests", Key="m.jsonl", Body="\n".join(json.dumps(r) for r in rows).encode())

    fs = make_filesystem("s3://manifests/m.jsonl", s3_server.endpoint)
    sources = {s.id: s for s in list_sources("s3://manifests/m.jsonl", fs)}
    assert not sources["ok"].error and sources["relative"].uri == "s3://manifests/audio/a.wav"
    for i, audio in enumerate(hostile):
        assert sources[f"h{i}"].error.startswith("forbidden: "), (audio, sources[f"h{i}"])
        # The decode stage turns it into its one error row without touching the path.
        src = {"id": f"h{i}", "uri": sources[f"h{i}"].uri, "error": sources[f"h{i}"].error, "task": "asr"}
        (row,) = [t.to_pylist()[0] for t in _source_segments(src, 300.0, None, s3_server.endpoint)]
        assert row["status"] == "error" and row["error"].startswith("forbidden: ")

    local = tmp_path / "m.jsonl"
    local.write_text("\n".join(json.dumps(r) for r in [{"audio": "a.wav"}, {"audio": "http://x/a.wav"}]))
    got = list(list_sources(str(local), make_filesystem(str(local))))
    assert not got[0].error and got[0].uri == str(tmp_path / "a.wav")
    assert got[1].error.startswith("forbidden: ")


@pytest.mark.slow
def test_ids_and_names_cannot_write_outside_the_output(ray_local, tmp_path):
    """Hostile ids (paths, '..', newlines, NUL-free control characters, very long) and a hostile run id: every
    file the run writes lies under the output prefix, in the documented layout; ids come back verbatim."""
    audio = tmp_path / "audio"
    audio.mkdir()
    sf.write(audio / "a.wav", tone(1.0), 16000)
    ids = ["../../escape", "/abs/evil", "a/../../b", "x\ny", "..", "runs/../../z", "é" * 300, "files", "."]
    manifest = tmp_path / "m.jsonl"
    manifest.write_text("\n".join(json.dumps({"audio": "audio/a.wav", "id": i}) for i in ids))
    out = tmp_path / "deep" / "out"
    before = {p for p in tmp_path.rglob("*")}

    with pytest.raises(UsageError):
        run_job(RunOptions(input=str(manifest), output=str(out), run_id="../escape"))
    summary = run_job(RunOptions(input=str(manifest), output=str(out), workers=(1, 1), batch_size=4))

    created = {p for p in tmp_path.rglob("*")} - before
    outside = [p for p in created if out not in p.parents and p != out and p not in out.parents]
    assert not outside, f"written outside the output: {outside}"
    for p in created:
        if p.is_file():
            rel = p.relative_to(out).parts
            assert rel[0] in ("chunks", "files", "runs"), rel
            assert rel[0] == "runs" or (len(rel) == 3 and rel[1] == f"run={summary.run_id}"), rel
    files = read_results(str(out)).files.to_pylist()
    assert sorted(r["id"] for r in files) == sorted(ids)
    assert all(r["status"] == "ok" for r in files)
