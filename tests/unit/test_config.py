import pytest

from s3core.config import PRESETS, config_from_dict, load_config
from s3core.errors import ConfigError


def test_defaults_are_the_papers_8_3_3():
    cfg = load_config()
    assert (cfg.search.retrieve_k, cfg.search.select_max, cfg.search.max_turns) == (8, 3, 3)
    assert cfg.search.initial_k == 3 and cfg.reward.mode == "gbr"


def test_preset_and_file_merge(tmp_path):
    p = tmp_path / "c.yaml"
    p.write_text("presets: [5-3-4]\nsearch:\n  select_max: 2\ngenerator:\n  max_new_tokens: 16\n")
    cfg = load_config(p)
    assert cfg.search.retrieve_k == 5 and cfg.search.max_turns == 4
    assert cfg.search.select_max == 2  # the file wins over its presets
    assert cfg.generator.max_new_tokens == 16


def test_gpu_preset_uses_vllm():
    cfg = config_from_dict({}, presets=["gpu"])
    assert cfg.generator.backend == "vllm" and "14B" in cfg.generator.model


@pytest.mark.parametrize(
    ("data", "needle"),
    [
        ({"search": {"retrive_k": 8}}, "search.retrive_k"),
        ({"bogus": 1}, "bogus"),
        ({"search": {"retrieve_k": 0}}, "search.retrieve_k must be >= 1"),
        ({"search": {"retrieve_k": "8"}}, "search.retrieve_k must be an integer"),
        ({"search": {"retrieve_k": True}}, "must be an integer"),
        ({"reward": {"mode": "gain"}}, "reward.mode must be one of"),
        ({"generator": {"backend": "openai"}}, "base_url is required"),
        ({"retriever": {"port": 70000}}, "retriever.port must be a TCP port"),
        ({"search": 3}, "search must be a mapping"),
        ({"eval": {"k": 0}}, "eval.k must be >= 1"),
    ],
)
def test_bad_values_name_the_key(data, needle):
    with pytest.raises(ConfigError) as err:
        config_from_dict(data)
    assert needle in str(err.value)


def test_unknown_preset_and_bad_files(tmp_path):
    with pytest.raises(ConfigError, match="unknown preset 'nope'"):
        config_from_dict({}, presets=["nope"])
    with pytest.raises(ConfigError, match="no such config file"):
        load_config(tmp_path / "missing.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("search: [1, 2\n")
    with pytest.raises(ConfigError, match="invalid YAML"):
        load_config(bad)
    lst = tmp_path / "list.yaml"
    lst.write_text("- 1\n- 2\n")
    with pytest.raises(ConfigError, match="top level must be a mapping"):
        load_config(lst)


def test_every_preset_is_valid():
    for name in PRESETS:
        config_from_dict({}, presets=[name])
