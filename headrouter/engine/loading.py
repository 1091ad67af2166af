"""Loading a model by name: tiny aliases built offline, local folders, s3:// prefixes (verified download) or hub ids."""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
from pathlib import Path

from headrouter.engine.lalm import LALM

__all__ = ["TINY_ALIASES", "adapter_for_model", "load_lalm", "model_window_s", "resolve_model"]

log = logging.getLogger("headrouter")

TINY_ALIASES = (
    "tiny-random",
    "tiny-random-qwen2-audio",
    "tiny-random-phi4mm",
    "tiny-random-voxtral",
    "tiny-random-qwen3-omni",
)
_REPO_ROOT = Path(__file__).resolve().parents[2]


def resolve_model(
    name: str, cache_dir: str | os.PathLike | None = None, endpoint_url: str | None = None
) -> str:
    """Where `name` lives: a local folder path (tiny aliases built, s3 prefixes downloaded) or a hub id."""
    from headrouter.engine.tiny import tiny_cache_dir, tiny_path

    if name in TINY_ALIASES:
        return str(tiny_path(name, cache_dir))
    if name == "tiny-synth":
        path = _REPO_ROOT / "models" / "tiny-synth"
        if not (path / "config.json").exists():
            raise FileNotFoundError(
                f"tiny-synth model not found at {path}: it ships in the checkout's models/tiny-synth/ "
                "(an installed package has no models/): pass that folder's path, or use 'tiny-random'"
            )
        return str(path)
    if name.startswith("s3://"):
        return str(_download_s3(name, tiny_cache_dir(cache_dir) / "s3", endpoint_url))
    path = Path(name).expanduser()
    if path.is_dir():
        if not (path / "config.json").exists():
            raise FileNotFoundError(f"model folder {path} has no config.json")
        return str(path)
    if name.startswith((".", "/", "~")) or path.exists():
        raise FileNotFoundError(f"model folder {name} does not exist or is not a folder")
    if not re.fullmatch(r"[\w.-]+/[\w.-]+", name):
        raise FileNotFoundError(
            f"unknown model {name!r}: expected a tiny alias {TINY_ALIASES + ('tiny-synth',)}, a local folder, "
            "an s3://bucket/prefix or a hub id 'org/name'"
        )
    return name  # a hub id, tried only because the user named it


def adapter_for_model(name: str, endpoint_url: str | None = None):
    """The adapter (`headrouter.engine.adapters.Adapter`) of model `name` without loading weights (or downloading
    them): tiny aliases by their family, local folders and s3:// prefixes by their config.json, hub ids by the
    hub's config.json."""
    from headrouter.engine.adapters import adapter_by_family, adapter_for
    from headrouter.engine.tiny import TINY_FAMILIES

    if name in TINY_FAMILIES:
        return adapter_by_family(TINY_FAMILIES[name])
    if name.startswith("s3://"):
        import boto3

        bucket, _, prefix = name[len("s3://") :].partition("/")
        s3 = boto3.client("s3", endpoint_url=endpoint_url or os.environ.get("AWS_ENDPOINT_URL") or None)
        key = f"{prefix.strip('/')}/config.json".lstrip("/")
        return adapter_for(json.loads(s3.get_object(Bucket=bucket, Key=key)["Body"].read()))
    location = resolve_model(name)
    if Path(location).is_dir():
        return adapter_for(json.loads((Path(location) / "config.json").read_text()))
    from huggingface_hub import hf_hub_download

    return adapter_for(json.loads(Path(hf_hub_download(location, "config.json")).read_text()))


def model_window_s(name: str, endpoint_url: str | None = None) -> float:
    """The longest audio (seconds) one call of model `name` takes: its adapter's WINDOW_S, the limit the
    loaded engine enforces. Needs no weights, so the pipeline's driver can chunk before any model loads."""
    return float(adapter_for_model(name, endpoint_url).WINDOW_S)


def load_lalm(
    name: str,
    device: str = "cpu",
    dtype=None,
    cache_dir: str | os.PathLike | None = None,
    trust_remote_code: bool = False,
    *,
    attn_implementation: str | None = None,
    endpoint_url: str | None = None,
) -> LALM:
    """Load an audio-language model by alias (`TINY_ALIASES` or "tiny-synth"),
    local folder, "s3://bucket/prefix" (downloaded once into the cache, sizes and hashes verified) or hub id.

    Safetensors only; remote code only with `trust_remote_code=True`. dtype: a torch dtype or its name
    (default float32 on CPU, bfloat16 on CUDA). attn_implementation: default "sdpa".
    """
    import torch
    from transformers import AutoConfig, AutoTokenizer

    from headrouter.engine.adapters import adapter_for
    from headrouter.engine.audio import make_feature_extractor

    location = resolve_model(name, cache_dir, endpoint_url)
    folder = Path(location) if Path(location).is_dir() else None
    if folder is not None:
        config = json.loads((folder / "config.json").read_text())
    else:
        config = AutoConfig.from_pretrained(location, trust_remote_code=trust_remote_code).to_dict()
    adapter = adapter_for(config)
    if isinstance(dtype, str):
        dtype = getattr(torch, dtype)
    if dtype is None:
        dtype = torch.bfloat16 if str(device).startswith("cuda") else torch.float32
    model = adapter.load(
        location,
        dtype=dtype,
        use_safetensors=True,
        trust_remote_code=trust_remote_code,
        attn_implementation=attn_implementation or "sdpa",
    )
    model = model.to(device).eval()
    tokenizer = AutoTokenizer.from_pretrained(location, trust_remote_code=trust_remote_code)
    try:
        feature_extractor = adapter.load_feature_extractor(location)
    except OSError:
        log.warning("no preprocessor_config.json in %s: using the stock Whisper settings", location)
        feature_extractor = make_feature_extractor(adapter.WINDOW_S)
    lalm = LALM(model, tokenizer, feature_extractor, adapter, model_id=name, folder=folder)
    log.info("loaded %r", lalm)
    return lalm


def _download_s3(uri: str, root: Path, endpoint_url: str | None) -> Path:
    """Mirror s3://bucket/prefix into root/bucket/prefix once; every file's size (and MD5 when the ETag is
    one) is checked against the listing, so a partial or corrupt copy is fetched again, never loaded."""
    import boto3  # only here: headrouter imports no storage stack at module level

    bucket, _, prefix = uri[len("s3://") :].partition("/")
    prefix = prefix.strip("/")
    if not bucket:
        raise ValueError(f"bad S3 URI {uri!r}: expected s3://bucket/prefix")
    endpoint = endpoint_url or os.environ.get("AWS_ENDPOINT_URL") or None
    s3 = boto3.client("s3", endpoint_url=endpoint)
    target = root / bucket / prefix
    objects = []
    for page in s3.get_paginator("list_objects_v2").paginate(
        Bucket=bucket, Prefix=f"{prefix}/" if prefix else ""
    ):
        objects.extend(page.get("Contents", []))
    if not any(o["Key"].endswith("/config.json") or o["Key"] == "config.json" for o in objects):
        raise FileNotFoundError(f"{uri} holds no config.json ({len(objects)} objects)")
    for obj in objects:
        rel = obj["Key"][len(prefix) :].lstrip("/") if prefix else obj["Key"]
        if not rel or rel.endswith("/"):
            continue
        dest = target / rel
        if ".." in Path(rel).parts or Path(rel).is_absolute():  # a hostile key must not write outside target
            raise ValueError(f"s3://{bucket}/{obj['Key']}: object key escapes the model prefix")
        etag = obj.get("ETag", "").strip('"')
        if dest.exists() and _matches(dest, obj["Size"], etag):
            continue
        dest.parent.mkdir(parents=True, exist_ok=True)
        tmp = dest.with_name(f".{dest.name}.part")
        s3.download_file(bucket, obj["Key"], str(tmp))
        if not _matches(tmp, obj["Size"], etag):
            tmp.unlink(missing_ok=True)
            raise OSError(f"s3://{bucket}/{obj['Key']}: downloaded file does not match its size/ETag")
        tmp.replace(dest)
        log.info("fetched s3://%s/%s (%d bytes)", bucket, obj["Key"], obj["Size"])
    return target


def _matches(path: Path, size: int, etag: str) -> bool:
    if path.stat().st_size != size:
        return False
    if len(etag) == 32 and "-" not in etag:  # single-part upload: the ETag is the MD5
        md5 = hashlib.md5(usedforsecurity=False)
        with path.open("rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                md5.update(block)
        return md5.hexdigest() == etag
    return True
