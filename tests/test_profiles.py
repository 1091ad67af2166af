"""Profiles: validation, versioned JSON round trip, and clear errors for bad files."""

import json
import pickle

import pytest
import torch

from headrouter import HeadRouter, ProfileError, Profiles
from headrouter.profiles import FORMAT, VERSION


def _profiles(**overrides):
    fields = dict(
        semantic=[0.5, 1.5, 0.0, 2.0],
        acoustic=[3, 0, 1, 0],
        centers=(0.03, 0.08, 0.15),
        bandwidth=0.04,
        model_id="Qwen/Qwen2.5-Omni-3B",
        layer=2,
        calibration={"method": "head-ablation", "samples_per_category": 10},
    )
    fields.update(overrides)
    return Profiles(**fields)


def test_fields_are_stored_as_float_tuples_and_picklable():
    p = _profiles()
    assert p.semantic == (0.5, 1.5, 0.0, 2.0) and p.acoustic == (3.0, 0.0, 1.0, 0.0)
    assert all(type(v) is float for v in p.acoustic + p.centers) and type(p.bandwidth) is float
    assert p.num_heads == 4
    assert pickle.loads(pickle.dumps(p)) == p
    hash(p)  # usable as a dict key / in sets despite the calibration dict
    with pytest.raises(AttributeError):
        p.bandwidth = 1.0


def test_save_load_round_trip(tmp_path):
    p = _profiles()
    path = tmp_path / "sub" / "headrouter_profiles.json"
    p.save(path)
    data = json.loads(path.read_text())
    assert data["format"] == FORMAT == "headrouter-profiles" and data["version"] == VERSION == 2
    assert data["num_heads"] == 4 and data["layer"] == 2 and data["model_id"] == "Qwen/Qwen2.5-Omni-3B"
    assert data["calibration"] == {"method": "head-ablation", "samples_per_category": 10}
    assert Profiles.load(path) == p
    assert Profiles.load(path, num_heads=4) == p
    assert [f.name for f in tmp_path.joinpath("sub").iterdir()] == [
        "headrouter_profiles.json"
    ]  # no temp left


def test_uniform_profiles_give_uniform_heads_for_any_input():
    p = Profiles.uniform(3, model_id="tiny")
    assert p.semantic == p.acoustic == (1.0, 1.0, 1.0) and p.bandwidth > 0 and len(p.centers) == 3
    assert p.calibration["method"] == "uniform"
    torch.manual_seed(0)
    sel = HeadRouter(p).select(torch.randn(3, 2, 4) * 4, torch.randn(3, 9, 4), 0.5)
    assert torch.allclose(sel.head_weights, torch.full((3,), 1 / 3))
    assert torch.allclose(sel.importance, sel.probe.mean(0))
    with pytest.raises(ProfileError):
        Profiles.uniform(0)


def test_wrong_head_count(tmp_path):
    path = tmp_path / "p.json"
    _profiles().save(path)
    with pytest.raises(ProfileError, match="have 4 head weights but the model has 16 query heads"):
        Profiles.load(path, num_heads=16)
    with pytest.raises(ProfileError, match="4 head weights but the model has 2"):
        HeadRouter(_profiles()).select(torch.randn(2, 1, 4), torch.randn(2, 3, 4), 0.5)


@pytest.mark.parametrize(
    "overrides, message",
    [
        (dict(semantic=[1.0, -0.1, 0.0, 1.0]), "semantic has negative weights"),
        (dict(acoustic=[0, 0, 0, 0]), "acoustic weights are all zero"),
        (dict(acoustic=[1.0, float("nan"), 0.0, 1.0]), "NaN or inf"),
        (dict(acoustic=[1.0, 2.0]), "semantic has 4 heads but acoustic has 2"),
        (dict(semantic=[]), "semantic is empty"),
        (dict(semantic="1234"), "list of per-head floats"),
        (dict(bandwidth=0.0), "bandwidth must be > 0"),
        (dict(bandwidth=-0.1), "bandwidth must be > 0"),
        (dict(bandwidth=float("inf")), "bandwidth must be finite"),
        (dict(centers=(0.1, 0.2)), "centers must be three numbers"),
        (dict(centers=(0.1, "x", 0.2)), "centers must be a number"),
        (dict(layer=0), "layer must be an int >= 1"),
        (dict(calibration=[1]), "calibration must be a JSON object"),
    ],
)
def test_invalid_profiles(overrides, message):
    with pytest.raises(ProfileError, match=message) as info:
        _profiles(**overrides)
    assert isinstance(info.value, ValueError) and "\n" not in str(info.value)


def _write(tmp_path, data):
    path = tmp_path / "p.json"
    path.write_text(data if isinstance(data, str) else json.dumps(data))
    return path


@pytest.mark.parametrize(
    "mutate, message",
    [
        (lambda d: d.update(version=3), "unsupported version 3"),
        (lambda d: d.pop("version"), "unsupported version None"),
        (lambda d: d.update(format="other"), "not a 'headrouter-profiles' file"),
        (lambda d: d.pop("bandwidth"), "missing field\\(s\\) bandwidth"),
        (lambda d: [d.pop("semantic"), d.pop("centers")], "missing field\\(s\\) semantic, centers"),
        (lambda d: d.update(num_heads=5), "num_heads=5 but the profiles have 4 weights"),
        (lambda d: d.update(acoustic=[0, 0, 0, 0]), "all zero"),
        (lambda d: d.update(semantic=[1, 2, "a", 3]), "only numbers"),
    ],
)
def test_malformed_files(tmp_path, mutate, message):
    data = _profiles().to_dict()
    mutate(data)
    path = _write(tmp_path, data)
    with pytest.raises(ProfileError, match=message) as info:
        Profiles.load(path)
    assert str(path) in str(info.value) and "\n" not in str(info.value)


def test_unreadable_or_non_json_files(tmp_path):
    with pytest.raises(ProfileError, match="not valid JSON"):
        Profiles.load(_write(tmp_path, "{not json"))
    with pytest.raises(ProfileError, match="expected a JSON object"):
        Profiles.load(_write(tmp_path, "[1, 2]"))
    with pytest.raises(ProfileError, match="cannot read"):
        Profiles.load(tmp_path / "missing.json")


def test_the_engine_refuses_profiles_calibrated_under_other_settings():
    from headrouter import PruneOptions, load_lalm

    lalm = load_lalm("tiny-synth")  # its profiles were calibrated at layer 2, normed probe, after_audio, 2.0
    audio = torch.zeros(8000).numpy() + 0.01
    lalm.generate([audio], ["what is the sound ?"], PruneOptions(method="headrouter", layer=2), 1)
    for wrong in ({"layer": 3}, {"probe_input": "hidden"}, {"query_tokens": "all_text"}, {"prefilter": 1.5}):
        with pytest.raises(ProfileError):
            lalm.generate([audio], ["what is the sound ?"], PruneOptions(method="headrouter", **wrong), 1)
    overridden = PruneOptions(method="headrouter", layer=3, override_profile_settings=True)
    assert lalm.generate([audio], ["what is the sound ?"], overridden, 1)[0].kept_tokens > 0
    # baselines do not use profiles
    assert lalm.generate([audio], ["what is the sound ?"], PruneOptions(method="frame", layer=3), 1)
