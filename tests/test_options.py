"""Each option of evaluate / predict / backtest / similar is written once, as a field of its command's
dataclass: the flag, its default and its type come from the field, and the parsed line builds the
dataclass back by name."""

import dataclasses

import pytest

import main
from analysis.backtest.config import BacktestConfig
from analysis.similar.config import IndexConfig, QueryConfig
from options import REQUIRED, cli_fields, flag_of, from_args
from trainers.options import EvaluateConfig, PredictConfig

COMMANDS = {BacktestConfig: ["backtest"], QueryConfig: ["similar", "query"], IndexConfig: ["similar", "index"],
            PredictConfig: ["predict"], EvaluateConfig: ["evaluate"]}


def _parse(words):
    return main.parse_args(main.build_parser(), words)


def _required(cls):
    return [w for f in cli_fields(cls) if f.default is REQUIRED and f.default_factory is REQUIRED
            for w in (flag_of(cls, f.name), "x")]


@pytest.mark.parametrize("cls", list(COMMANDS))
def test_defaults_of_the_line_are_the_dataclass_defaults(cls):
    args = _parse(COMMANDS[cls] + _required(cls))
    built = from_args(cls, args)
    given = {f.name: ["x"] if f.type is list else "x" for f in cli_fields(cls)
             if f.default is REQUIRED and f.default_factory is REQUIRED}
    assert built == cls(**given)


def test_every_flag_reaches_its_field():
    words = ["backtest", "--prices", "a.h5", "b.h5", "--out", "o", "--price-column", "close", "--signal", "rsi:14:30:70",
             "--strategy", "topk", "threshold", "--k", "7", "--no-analysis", "--long-only", "--cost-bps", "2.5",
             "--no-plots", "--no-tensorboard", "--pool", "serial", "--periods-per-year", "52"]
    cfg = from_args(BacktestConfig, _parse(words))
    assert cfg.prices == ["a.h5", "b.h5"] and cfg.strategies == ("topk", "threshold") and cfg.k == 7
    assert cfg.analysis is False and cfg.long_only is True and cfg.cost_bps == 2.5 and cfg.plots is False
    assert cfg.tensorboard is False and cfg.pool == "serial" and cfg.periods_per_year == 52.0
    assert cfg.progress is True                         # not an option: the API's switch keeps its default
    q = from_args(QueryConfig, _parse(["similar", "query", "--index", "ix", "--all-times", "--columns", "a", "b",
                                       "--k", "3", "--split", "test", "--return-column", "r"]))
    assert q.past_only is False and q.columns == ["a", "b"] and q.k == 3 and q.split == "test"
    p = from_args(PredictConfig, _parse(["predict", "--run", "r", "--out", "o.h5", "--latest", "--plot", "2"]))
    assert dataclasses.asdict(p) == {"run_dir": "r", "out": "o.h5", "split": None, "data": None, "latest": True,
                                     "plot": 2, "fit_new_sessions": None, "overwrite": False, "checkpoint": None,
                                     "strict": False}


def test_choices_and_types_come_from_the_field(capsys):
    with pytest.raises(SystemExit):
        _parse(["backtest", "--prices", "a", "--out", "o", "--strategy", "momentum"])
    assert "invalid choice: 'momentum'" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        _parse(["similar", "query", "--index", "ix", "--k", "ten"])
    assert "invalid int value: 'ten'" in capsys.readouterr().err
