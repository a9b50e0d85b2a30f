"""One sampling-settings value: its defaults are the recommended ones, everywhere.

Every entry point that draws takes `sampling=` whole. Those that take any prior default to
None, "the prior's recommended settings" (Pipeline.sampling: its kind's, prior/kinds.py:
SAMPLING, or a next-scale prior's SCALES_SAMPLING); those that need a raster prior default
to SAMPLING itself. The command line's flags start from the same (or from PLAIN with
--plain); bad settings are one ConfigError when the value is made.
"""
from types import SimpleNamespace
import dataclasses
import inspect

import pytest

import tinytok
from tinytok import PLAIN, SAMPLING, Sampling, cli, conversation, demo, evaluate
from tinytok.errors import ConfigError
from tinytok.cli.drawing import sampling_from
from tinytok.pipeline import Pipeline
from tinytok.prior.kinds import PRIOR_KINDS
from tinytok.prior.scales import SCALES_SAMPLING
from tinytok.prior.settings import check_sampling

ANY_PRIOR = [Pipeline.generate, Pipeline.generate_codes, Pipeline.edit, Pipeline.converse,
             Pipeline.inpaint, evaluate.adherence, evaluate.edit_figures,
             evaluate.inpaint_figures, evaluate.eval_prior]
RASTER_ONLY = [conversation.Conversation.__init__, conversation.converse, conversation.edit,
               demo.write_pictures]
ENTRY_POINTS = ANY_PRIOR + RASTER_ONLY
SETTING_NAMES = {f.name for f in dataclasses.fields(Sampling)}
RASTER = SimpleNamespace(sampling=SAMPLING)          # what sampling_from reads of a pipeline
SCALES = SimpleNamespace(sampling=SCALES_SAMPLING)


def test_the_defaults_are_the_recommended_settings():
    assert SAMPLING == Sampling(temperature=1.0, top_k=None, top_p=None, cfg_scale=1.5,
                                rerank=4, edit_rerank=16)
    assert PLAIN == SAMPLING.but(cfg_scale=1.0, rerank=1, edit_rerank=1)
    assert tinytok.Sampling is Sampling


@pytest.mark.parametrize("fn", ENTRY_POINTS, ids=lambda f: f.__qualname__)
def test_every_entry_point_takes_the_settings_whole_with_the_recommended_default(fn):
    params = inspect.signature(fn).parameters
    assert params["sampling"].default is (None if fn in ANY_PRIOR else SAMPLING)
    assert params["sampling"].kind is inspect.Parameter.KEYWORD_ONLY
    assert not SETTING_NAMES & set(params), \
        f"{fn.__qualname__} keeps its own copy of a sampling setting"
    if "seed" in params:             # keyword arguments in one order: seed, then sampling
        names = list(params)
        assert names.index("seed") < names.index("sampling")


def test_each_kind_of_prior_has_its_recommended_settings():
    assert PRIOR_KINDS["raster"].sampling is SAMPLING is PRIOR_KINDS["masked"].sampling
    assert PRIOR_KINDS["scales"].sampling == SCALES_SAMPLING == SAMPLING.but(
        cfg_scale=2.5, cfg_ramp=True, temperature=0.4)
    for kind in PRIOR_KINDS.values():
        assert Pipeline.sampling.fget(SimpleNamespace(prior=SimpleNamespace(kind=kind))) \
            is kind.sampling
        pipe = SimpleNamespace(sampling=kind.sampling, prior=SimpleNamespace(kind=kind))
        assert Pipeline.sampling_or_recommended(pipe, None) is kind.sampling
        assert Pipeline.sampling_or_recommended(pipe, PLAIN) is PLAIN


def test_only_a_next_scale_prior_ramps_its_guidance():
    ramped = PLAIN.but(cfg_scale=2.0, cfg_ramp=True)
    for name, kind in PRIOR_KINDS.items():
        pipe = SimpleNamespace(sampling=kind.sampling, prior=SimpleNamespace(kind=kind))
        if name == "scales":
            assert Pipeline.sampling_or_recommended(pipe, ramped) is ramped
            continue
        with pytest.raises(ConfigError, match=f"only a next-scale prior draws; a {name} prior "
                                              "guides every pass at cfg_scale"):
            Pipeline.sampling_or_recommended(pipe, ramped)
    with pytest.raises(ConfigError, match="cfg_ramp must be True or False, got 'yes'"):
        Sampling(cfg_ramp="yes")


def test_the_settings_are_frozen():
    with pytest.raises(dataclasses.FrozenInstanceError):
        SAMPLING.cfg_scale = 3.0


@pytest.mark.parametrize("changes, message", [
    (dict(temperature=0), "temperature must be"), (dict(temperature=float("inf")), "temperature"),
    (dict(top_k=0), "top_k must be"), (dict(top_k=2.0), "top_k must be"),
    (dict(top_p=1.5), "top_p must lie"), (dict(cfg_scale=-1), "cfg_scale"),
    (dict(cfg_scale=float("nan")), "cfg_scale"), (dict(rerank=0), "rerank must be"),
    (dict(edit_rerank=True), "edit_rerank must be"), (dict(edit_rerank=2.5), "edit_rerank"),
    (dict(guidance=2), "unknown sampling setting 'guidance'"),
])
def test_bad_settings_are_one_config_error(changes, message):
    with pytest.raises(ConfigError, match=message):
        SAMPLING.but(**changes)


def test_something_else_than_settings_is_refused():
    for bad in ({"cfg_scale": 1.5}, 1.5, None):
        with pytest.raises(ConfigError, match="sampling must be a tinytok.Sampling"):
            check_sampling(bad)


@pytest.mark.parametrize("words, want", [
    (["sample", "--prompt", "a red circle"], SAMPLING),
    (["sample", "--prompt", "a red circle", "--plain"], PLAIN),
    (["sample", "--prompt", "x", "--cfg", "2", "--top-k", "5"], SAMPLING.but(cfg_scale=2.0, top_k=5)),
    (["sample", "--prompt", "x", "--plain", "--rerank", "3"], PLAIN.but(rerank=3)),
    (["edit", "p.png", "make it blue"], SAMPLING),
    (["edit", "p.png", "make it blue", "--edit-rerank", "4"], SAMPLING.but(edit_rerank=4)),
    (["chat"], SAMPLING),
    (["eval-prior"], SAMPLING),
    (["eval-prior", "--plain", "--temperature", "0.5"], PLAIN.but(temperature=0.5)),
    (["sample", "--prompt", "x", "--steps", "3", "--choice-temperature", "0"],
     SAMPLING.but(steps=3, choice_temperature=0.0)),
    (["inpaint", "p.png", "--region", "0,0,8,8", "--prompt", "x"], SAMPLING),
    (["inpaint", "p.png", "--region", "0,0,8,8", "--prompt", "x", "--plain", "--steps", "12"],
     PLAIN.but(steps=12)),
    (["eval-prior", "--choice-temperature", "2.5"], SAMPLING.but(choice_temperature=2.5)),
])
def test_the_command_line_starts_from_the_same_settings(words, want):
    assert sampling_from(cli.build_parser().parse_args(words), RASTER) == want


@pytest.mark.parametrize("words, want", [
    (["sample", "--prompt", "x"], SCALES_SAMPLING),
    (["sample", "--prompt", "x", "--temperature", "1", "--cfg", "1.5", "--no-cfg-ramp"],
     SAMPLING),
    (["sample", "--prompt", "x", "--plain"], PLAIN),
    (["sample", "--prompt", "x", "--plain", "--cfg", "3", "--cfg-ramp"],
     PLAIN.but(cfg_scale=3.0, cfg_ramp=True)),
])
def test_the_command_line_starts_from_a_next_scale_priors_settings(words, want):
    assert sampling_from(cli.build_parser().parse_args(words), SCALES) == want


@pytest.mark.parametrize("command, words", [
    ("sample", ["--prompt", "x"]), ("inpaint", ["p.png", "--region", "0,0,8,8", "--prompt", "x"]),
    ("edit", ["p.png", "make it blue"]), ("chat", []), ("eval-prior", [])])
def test_every_setting_has_its_flag(command, words):
    """Each Sampling field has a flag of its own name (edit_rerank where a command edits),
    and the flag sets that field alone: a setting added to Sampling needs a flag."""
    edits = command in ("edit", "chat", "eval-prior")
    given = {"temperature": "0.5", "top_k": "3", "top_p": "0.5", "cfg_scale": "2",
             "cfg_ramp": None, "rerank": "2", "edit_rerank": "3", "steps": "5",
             "choice_temperature": "1.5"}
    assert set(given) == SETTING_NAMES
    for name, text in given.items():
        if name == "edit_rerank" and not edits:
            continue
        flag = "--cfg" if name == "cfg_scale" else "--" + name.replace("_", "-")
        if text is None:                                   # a switch: --flag / --no-flag
            for words_given, value in (([flag], True), (["--no-" + flag[2:]], False)):
                parsed = sampling_from(cli.build_parser().parse_args(
                    [command, *words, *words_given]), SCALES)
                assert parsed == SCALES_SAMPLING.but(**{name: value})
            continue
        parsed = sampling_from(cli.build_parser().parse_args([command, *words, flag, text]),
                               RASTER)
        assert parsed == SAMPLING.but(**{name: type(getattr(parsed, name))(text)})


def test_sample_has_no_edit_setting(capsys):
    with pytest.raises(SystemExit):
        cli.build_parser().parse_args(["sample", "--prompt", "x", "--edit-rerank", "2"])
    assert "unrecognized arguments" in capsys.readouterr().err
