import pytest

from config import PROFILES, load_config, parse_override, to_dict
from errors import InputError


def test_every_profile_loads():
    budgets = {p: load_config(p).memory_budget_mb for p in PROFILES if p != "auto"}
    assert budgets["low_memory"] < budgets["default"] < budgets["high_performance"]


def test_precedence_profile_then_file_then_overrides(tmp_path):
    base = load_config("low_memory")
    assert base.data.chunk_cache_size == 1048576 and base.data.lookback == 64
    f = tmp_path / "mine.yaml"
    f.write_text("data:\n  lookback: 100\n  horizon: 5\n")
    from_file = load_config("low_memory", f)
    assert from_file.data.lookback == 100 and from_file.data.horizon == 5
    assert from_file.data.chunk_cache_size == 1048576            # the profile still shows through
    final = load_config("low_memory", f, ["data.lookback=7", "data.split.fractions=[0.5, 0.25, 0.25]"])
    assert final.data.lookback == 7 and final.data.horizon == 5
    assert final.data.split.fractions == (0.5, 0.25, 0.25)


def test_unknown_keys_list_the_valid_ones(tmp_path):
    with pytest.raises(InputError, match=r"unknown config key data.split.metod \(did you mean "
                                         r"data.split.method\?\); valid keys: data.split.method"):
        load_config("default", overrides=["data.split.metod=rows"])
    f = tmp_path / "bad.yaml"
    f.write_text("trainingg: {}\n")
    with pytest.raises(InputError, match=r"unknown config key trainingg"):
        load_config("default", f)


def test_bad_values_name_the_field(tmp_path):
    with pytest.raises(InputError, match=r"data.chunk_cache_w0 must be within \[0, 1\], got 2.0"):
        load_config("default", overrides=["data.chunk_cache_w0=2"])
    with pytest.raises(InputError, match=r"data.allow_external_links must be true or false"):
        load_config("default", overrides=["data.allow_external_links=maybe"])
    with pytest.raises(InputError, match=r"profile 'huge' does not exist"):
        load_config("huge")
    f = tmp_path / "broken.yaml"
    f.write_text("data: [unclosed\n")
    with pytest.raises(InputError, match=r"broken.yaml: line \d+ is not valid YAML"):
        load_config("default", f)


def test_override_parsing():
    assert parse_override("a.b=3") == {"a": {"b": 3}}
    assert parse_override("paths=[x.h5, y.h5]") == {"paths": ["x.h5", "y.h5"]}
    with pytest.raises(InputError, match="not key=value"):
        parse_override("lookback")


def test_resolved_config_round_trips(tmp_path):
    import yaml
    config = load_config("quick_demo", overrides=["data.split.rows={train: [0, 10]}", "data.split.method=rows"])
    f = tmp_path / "resolved.yaml"
    f.write_text(yaml.safe_dump({k: v for k, v in to_dict(config).items() if k != "profile"}))
    assert load_config("quick_demo", f) == config


def test_every_key_is_documented():
    from pathlib import Path
    from config import Config
    doc = (Path(__file__).resolve().parents[1] / "docs" / "configuration.md").read_text()

    def keys(obj, prefix=""):
        for k, v in obj.items():
            if isinstance(v, dict) and k != "rows":
                yield from keys(v, f"{prefix}{k}.")
            else:
                yield prefix + k
    missing = [k for k in keys(to_dict(Config())) if f"`{k}`" not in doc]
    assert not missing, f"docs/configuration.md lacks {missing}"


def test_auto_profile_picks_by_ram():
    from config import auto_profile
    assert [auto_profile(gb) for gb in (4, 8, 16, 64)] == ["low_memory", "default", "default", "high_performance"]
    assert load_config("auto").profile in ("low_memory", "default", "high_performance")


def test_yaml_1_1_surprises_are_read_as_meant():
    config = load_config("default", overrides=["training.amp=off", "training.learning_rate=1e-4"])
    assert config.training.amp == "off" and config.training.learning_rate == 1e-4


def test_dates_stay_strings():
    config = load_config("default", overrides=["data.split.method=timestamps", "data.split.val_start=2016-07-01",
                                               "data.split.test_start=2017-04-01"])
    assert config.data.split.val_start == "2016-07-01" and config.data.split.test_start == "2017-04-01"


@pytest.mark.parametrize("override, message", [
    ("training.learning_rate=.inf", r"training.learning_rate must be a finite number, got inf"),
    ("training.weight_decay=.nan", r"training.weight_decay must be a finite number, got nan"),
    ("training.grad_clip=.nan", r"training.grad_clip must be a finite number, got nan"),
    ("model.gru.dropout=-.inf", r"model.gru.dropout must be a finite number, got -inf"),
    ("training.weight_decay=-0.1", r"training.weight_decay must be >= 0, got -0.1"),
    ("training.grad_clip=-1", r"training.grad_clip must be >= 0 \(0 = no clipping\), got -1.0"),
    ("data.split.fractions=[.nan, 0.5, 0.5]", r"split.fractions is \[nan, 0.5, 0.5\]; give three finite shares"),
    ("data.split.fractions=[a, b, c]", r"split.fractions is \['a', 'b', 'c'\]; give three finite shares"),
    # a traceback after the run directory was written; accepted and meaningless
    ("seed=-1", r"seed must be within 0 .. 4294967295, got -1"),
    ("seed=4294967296", r"seed must be within 0 .. 4294967295, got 4294967296"),
    ("training.early_stopping_patience=-1", r"training.early_stopping_patience must be >= 0 \(0 = never stop early\)"),
    ("training.max_nonfinite_steps=0", r"training.max_nonfinite_steps must be at least 1"),
])
def test_non_finite_and_out_of_range_numbers_are_refused(override, message):
    # Issue 10, case 10: learning_rate=.inf trained to all-NaN metrics with exit 0.
    with pytest.raises(InputError, match=message):
        load_config("default", overrides=[override])


def test_a_python_tag_and_an_empty_file_are_named_as_such(tmp_path):
    # Issue 10, case 18: the tag was refused with "fix the syntax"; an empty file was accepted silently.
    tagged = tmp_path / "tagged.yaml"
    tagged.write_text("training:\n  epochs: !!python/object/apply:os.system [ls]\n")
    with pytest.raises(InputError, match=r"tagged.yaml: line 2 uses the YAML tag "
                                         r"'tag:yaml.org,2002:python/object/apply:os.system', which is not allowed"):
        load_config("default", tagged)
    empty = tmp_path / "empty.yaml"
    empty.write_text("# nothing yet\n")
    with pytest.raises(InputError, match=r"empty.yaml: the config file is empty"):
        load_config("default", empty)


def test_the_cli_and_the_python_api_share_one_default_profile():
    # Issue 10, case 22: quick_demo for the CLI, default for load_config(), and nothing said which.
    import h5series
    import main
    assert h5series.load_config().profile == main.SELECTED_CONFIG == main.parse_args(main.build_parser(), ["train"]).profile


def test_split_times_stay_text_and_a_bad_one_is_named():
    # YAML read 2020-13-01 as a timestamp and raised ValueError (a traceback); dates now stay text.
    config = load_config("default", overrides=["data.split.method=timestamps", "data.split.val_start=2020-01-15",
                                               "data.split.test_start=2020-02-01T09:30:00+01:00"])
    assert config.data.split.val_start == "2020-01-15"
    assert config.data.split.test_start == "2020-02-01T09:30:00+01:00"
    for key, value in (("val_start", "2020-13-01"), ("test_start", "NaT"), ("end", "soon")):
        overrides = ["data.split.method=timestamps", "data.split.val_start=2020-01-15",
                     "data.split.test_start=2020-02-01", f"data.split.{key}={value}"]
        with pytest.raises(InputError, match=f"split.{key} is '{value}', not a time"):
            load_config("default", overrides=overrides)


@pytest.mark.parametrize("overrides,message", [
    (["data.feature_columns=[[ret]]"], "data.feature_columns must be a list of names"),
    (["data.target_columns=[1, 2]"], "data.target_columns must be a list of names"),
    (["data.split.method=rows", "data.split.rows={train: [a, b]}"], "split.rows.train is ['a', 'b']; give [start, stop)"),
    (["data.split.method=rows", "data.split.rows=[0, 5]"], "data.split.rows must be a mapping, got [0, 5]"),
    (["data.split.holdout_val=[[a]]"], "split.holdout_val is [['a']]; give a list of session names"),
    (["training.max_val_windows=-5"], "training.max_val_windows must be >= 0 (0 = every window), got -5"),
])
def test_lists_of_the_wrong_type_are_one_line(overrides, message, capsys):
    """A list of lists or of numbers where names or row numbers go: TypeError tracebacks."""
    import main
    assert main.main(["config", *overrides]) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err, err


def test_a_config_that_is_not_utf8_text_is_one_line(tmp_path, capsys):
    import main
    from data.demo import generate
    (tmp_path / "latin1.yaml").write_bytes("model:\n  name: gr\xe9u\n".encode("latin-1"))
    generate(tmp_path / "d.h5", sessions=1, rows=50, features=2, progress=False)
    for path, message in ((tmp_path / "latin1.yaml", "not UTF-8 text (byte 0xe9"), (tmp_path / "d.h5", "not UTF-8 text"),
                          (tmp_path, "is a folder")):
        assert main.main(["config", "--config", str(path)]) == 2
        err = capsys.readouterr().err
        assert message in err and "Traceback" not in err, err
    run = tmp_path / "run"
    run.mkdir()
    (run / "config.yaml").write_bytes(b"\xff\xfe\x00")
    assert main.main(["train", "--resume", str(run)]) == 2
    assert "not UTF-8 text" in capsys.readouterr().err
