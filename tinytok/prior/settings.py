"""How the prior draws: the sampling settings, one value whose defaults are the recommended ones.

    Sampling()                        the recommended settings (SAMPLING)
    Sampling(cfg_scale=2.0, rerank=8) any of them changed
    PLAIN                             the model as it is: no guidance, one draw per picture

Every entry point that draws takes one such value whole (`sampling=`): Pipeline.generate,
edit and converse, Conversation, every `tinytok` command, the demo, eval-prior, the bench
and the lessons. The defaults live here and nowhere else, and the settings are checked once,
when the value is made, so a bad setting is a ConfigError before any work.

Why these defaults (measured by `tinytok eval-prior` on the shipped prior; the figures are
in data/checkpoints/figures.json): guidance at 1.5 and the best of 4 drawings lift the
pictures of held-out shape-colour pairs far above plain sampling; an edit gains from each
doubling of its candidates far more than a drawing from a caption does, because the model
often redraws the picture in hand, and the caption the edit should give tells the copy from
the edit, so edits draw 16.
"""
from dataclasses import dataclass, replace

from tinytok.errors import ConfigError
from tinytok.ops.checks import is_finite_number, is_whole_number, require_positive_int


@dataclass(frozen=True)
class Sampling:
    """The prior's sampling settings; the defaults are the recommended ones.

    temperature > 0 sharpens (< 1) or flattens (> 1) each next-token distribution; top_k
    keeps the k likeliest tokens (None: all); top_p keeps the smallest set of tokens with at
    least that much probability (None: all); cfg_scale mixes the conditional and the
    unconditional logits, uncond + cfg_scale * (cond - uncond) (classifier-free guidance,
    1 = off); cfg_ramp makes a next-scale prior's guidance rise linearly over its maps, from
    1 (none) at the first to cfg_scale at the last, as VAR's sampler does (raster and masked
    priors guide every pass alike and refuse it); rerank draws that many candidates for
    each picture asked for by a caption and keeps the one whose caption the prior finds
    likeliest (1 = off); edit_rerank the same for each edited picture. steps and
    choice_temperature are a masked prior's (MaskGIT,
    prior/masked.py): how many passes of the model fill in the grid, and how much annealed
    noise goes into which codes each pass keeps (0: always the most confident); a raster
    prior writes one token per pass and a next-scale prior one map (prior/scales.py), and
    neither reads them. A masked or next-scale prior cannot caption, so it draws each
    picture once whatever rerank says.
    """
    temperature: float = 1.0
    top_k: int | None = None
    top_p: float | None = None
    cfg_scale: float = 1.5
    cfg_ramp: bool = False
    rerank: int = 4
    edit_rerank: int = 16
    steps: int = 8
    choice_temperature: float = 4.5

    def __post_init__(self):
        if not (is_finite_number(self.temperature) and self.temperature > 0):
            raise ConfigError(f"temperature must be a finite number > 0, got {self.temperature!r}")
        if self.top_k is not None and not is_whole_number(self.top_k, 1):
            raise ConfigError(f"top_k must be a whole number >= 1 or None, got {self.top_k!r}")
        if self.top_p is not None and not (is_finite_number(self.top_p) and 0 < self.top_p <= 1):
            raise ConfigError(f"top_p must lie in (0, 1] or be None, got {self.top_p!r}")
        if not (is_finite_number(self.cfg_scale) and self.cfg_scale >= 0):
            raise ConfigError(f"the guidance scale cfg_scale must be a finite number >= 0, "
                              f"got {self.cfg_scale!r}")
        if not isinstance(self.cfg_ramp, bool):
            raise ConfigError(f"cfg_ramp must be True or False, got {self.cfg_ramp!r}")
        if not (is_finite_number(self.choice_temperature) and self.choice_temperature >= 0):
            raise ConfigError(f"choice_temperature must be a finite number >= 0, "
                              f"got {self.choice_temperature!r}")
        for name in ("rerank", "edit_rerank", "steps"):
            require_positive_int(name, getattr(self, name))

    def but(self, **changes):
        """A copy with some settings changed (checked like a new value)."""
        unknown = sorted(set(changes) - set(self.__dataclass_fields__))
        if unknown:
            raise ConfigError(f"unknown sampling setting {unknown[0]!r}; the settings are "
                              f"{', '.join(self.__dataclass_fields__)}")
        return replace(self, **changes)


SAMPLING = Sampling()
PLAIN = Sampling(cfg_scale=1.0, rerank=1, edit_rerank=1)


def check_sampling(sampling):
    """sampling itself if it is a Sampling value; a clear error for anything else."""
    if not isinstance(sampling, Sampling):
        raise ConfigError("sampling must be a tinytok.Sampling value, such as Sampling() or "
                          f"Sampling(cfg_scale=2.0), got {type(sampling).__name__}")
    return sampling
