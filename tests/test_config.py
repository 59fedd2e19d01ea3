import pytest

from megacrystal.config import ConfigError, load_config, validate_world


def write(tmp_path, text):
    p = tmp_path / "c.yaml"
    p.write_text(text)
    return str(p)


def test_defaults_resolve_from_family_and_preset(tmp_path):
    cfg = load_config(write(tmp_path, "model: {preset: crystal-7b}\ndata: {seq_length: 2048}\n"))
    m = cfg.model
    assert (m.norm, m.rotary_fraction, m.rotary_interleaved, m.bias, m.tie_embeddings, m.mup) == (
        "layernorm",
        0.25,
        True,
        True,
        True,
        True,
    )
    assert m.width_mult == 0.0625 and m.head_dim == 128
    llama = load_config(None, ["model.family=llama", "model.preset=tiny", "data.seq_length=64"])
    assert (llama.model.norm, llama.model.rotary_fraction, llama.model.bias) == ("rmsnorm", 1.0, False)


def test_overrides_and_a_trait_overrides_the_family():
    cfg = load_config(
        None, ["model.preset=tiny", "model.norm=rmsnorm", "parallel.tp=2", "train.precision=bf16", "data.seq_length=64"]
    )
    assert cfg.model.norm == "rmsnorm" and cfg.model.bias is True and cfg.parallel.tp == 2


@pytest.mark.parametrize(
    "override, message",
    [
        ("model.hiden_size=3", "unknown field 'model.hiden_size'"),
        ("parallel.tp=two", "parallel.tp: expected an integer"),
        ("train.precision=fp8", "train.precision: expected one of"),
        ("parallel.tp=3", "num_heads=4 is not divisible by tp=3"),
        ("parallel.pp=3", "num_layers=4 is not divisible by pp*vpp=3"),
        ("parallel.sequence_parallel=true", "sequence_parallel: needs parallel.tp > 1"),
        ("data.seq_length=4096", "data.seq_length: 4096 exceeds model.max_seq_len=128"),
    ],
)
def test_bad_values_name_the_field(override, message):
    with pytest.raises(ConfigError, match=message.replace("*", r"\*").replace("(", r"\(")):
        load_config(None, ["model.preset=tiny", "data.seq_length=64", override])


def test_errors_name_the_file(tmp_path):
    path = write(tmp_path, "model: {preset: tiny}\ntrain: {micro_batch_size: 0}\ndata: {seq_length: 64}\n")
    with pytest.raises(ConfigError, match=f"{path}: train.micro_batch_size"):
        load_config(path)
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(write(tmp_path, "model: [unclosed\n"))
    with pytest.raises(ConfigError, match="config file not found"):
        load_config(str(tmp_path / "missing.yaml"))


def test_phase_rules(tmp_path):
    text = """
model: {preset: tiny}
data:
  seq_length: 64
  sources: {web: {prefixes: [a]}, code: {prefixes: [b], kind: code}}
  phases:
    - {name: one, tokens: 1000, blend: {web: 1.0}}
    - {name: two, steps: 10, tokens: 5, blend: {code: 1.0}}
"""
    with pytest.raises(ConfigError, match=r"data.phases\[1\]: give exactly one of tokens or steps"):
        load_config(write(tmp_path, text))
    with pytest.raises(ConfigError, match="unknown source 'nope'"):
        load_config(write(tmp_path, text.replace("{code: 1.0}", "{nope: 1.0}").replace("tokens: 5, ", "")))


def test_world_rules():
    cfg = load_config(
        None,
        [
            "model.preset=tiny",
            "data.seq_length=64",
            "parallel.tp=2",
            "parallel.pp=2",
            "train.global_batch_size=6",
            "train.micro_batch_size=1",
        ],
    )
    with pytest.raises(ConfigError, match="world size 6 is not divisible by tp\\*pp=4"):
        validate_world(cfg, 6)
    with pytest.raises(ConfigError, match="global_batch_size: 6 is not divisible by micro_batch_size\\*dp = 1\\*4"):
        validate_world(cfg, 16)
    assert validate_world(cfg, 8) == 2


def test_exponent_without_a_dot_is_a_number(tmp_path):
    cfg = load_config(
        write(tmp_path, "model: {preset: tiny}\ndata: {seq_length: 64}\noptim: {eps: 1e-9}\n"),
        ["optim.weight_decay=1e-2"],
    )
    assert cfg.optim.eps == 1e-9 and cfg.optim.weight_decay == 0.01
    with pytest.raises(ConfigError, match="optim.eps: expected a number, got 'tiny'"):
        load_config(None, ["optim.eps=tiny"])


@pytest.mark.parametrize(
    "override, message",
    [
        ("train.max_steps=-1", "train.max_steps: expected >= 0"),
        ("train.eval_interval=-2", "train.eval_interval: expected >= 0"),
        ("train.save_interval=-1", "train.save_interval: expected >= 0"),
        ("train.log_interval=0", "train.log_interval: expected >= 1"),
        ("optim.eps=-1e-8", "optim.eps: expected >= 0, got -1e-08"),
        ("optim.weight_decay=-0.1", "optim.weight_decay: expected >= 0"),
        ("optim.clip_grad=-1", "optim.clip_grad: expected >= 0"),
        ("train.max_skipped_steps=0", "train.max_skipped_steps: expected >= 1"),
        ("train.step_timeout_s=-5", "train.step_timeout_s: expected >= 0"),
        ("parallel.timeout_s=0", "parallel.timeout_s: expected > 0"),
    ],
)
def test_run_safety_rules_name_the_field(override, message):
    with pytest.raises(ConfigError, match=message):
        load_config(None, ["model.preset=tiny", "data.seq_length=64", override])


def test_eval_iters_must_be_positive_only_when_evaluating():
    base = ["model.preset=tiny", "data.seq_length=64", "train.eval_iters=0"]
    assert load_config(None, base).train.eval_iters == 0  # no evaluation: not used
    with pytest.raises(ConfigError, match="train.eval_iters: expected >= 1 when train.eval_interval is set, got 0"):
        load_config(None, [*base, "train.eval_interval=10"])
    cfg = load_config(None, ["model.preset=tiny", "data.seq_length=64", "train.max_steps=0", "parallel.timeout_s=60"])
    assert cfg.train.max_steps == 0 and cfg.parallel.timeout_s == 60
