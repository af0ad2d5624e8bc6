"""Building the learning agents in tests from one flat set of settings (AgentConfig's, SACConfig's
or DDPGConfig's fields, plus the shape: state_dim, num_domains, action_center)."""

import dataclasses

from megatron_hds.mixing.acodm import DDPGAgent
from megatron_hds.mixing.agent_base import AgentShape
from megatron_hds.mixing.config import AgentConfig, DDPGConfig, MixingConfig, SACConfig
from megatron_hds.mixing.sac import SACAgent

_SHAPE = {f.name for f in dataclasses.fields(AgentShape)}


def _split(own_config, settings: dict):
    """(AgentConfig, own config, AgentShape) from flat settings; unknown names are an error."""
    groups = {"agent": AgentConfig, "own": own_config}
    out = {name: {} for name in groups}
    shape = {}
    for key, value in settings.items():
        if key in _SHAPE:
            shape[key] = value
            continue
        owner = next((name for name, cls in groups.items() if key in {f.name for f in dataclasses.fields(cls)}), None)
        if owner is None:
            raise TypeError(f"unknown agent setting {key!r}")
        out[owner][key] = value
    return AgentConfig(**out["agent"]), own_config(**out["own"]), AgentShape(**shape)


def sac_agent(**settings) -> SACAgent:
    return SACAgent(*_split(SACConfig, settings))


def ddpg_agent(**settings) -> DDPGAgent:
    return DDPGAgent(*_split(DDPGConfig, settings))


def mixing_config(**settings) -> MixingConfig:
    """A MixingConfig from flat settings: each name goes to the (nested) config that has it."""
    defaults = MixingConfig()
    nested = [f.name for f in dataclasses.fields(MixingConfig) if dataclasses.is_dataclass(getattr(defaults, f.name))]
    top = {f.name for f in dataclasses.fields(MixingConfig)} - set(nested)
    groups = {name: {} for name in nested}
    kwargs = {}
    for key, value in settings.items():
        if key in top:
            kwargs[key] = value
            continue
        owner = next((name for name in nested
                      if key in {f.name for f in dataclasses.fields(getattr(defaults, name))}), None)
        if owner is None:
            raise TypeError(f"unknown mixing setting {key!r}")
        groups[owner][key] = value
    for name, values in groups.items():
        kwargs[name] = dataclasses.replace(getattr(defaults, name), **values)
    return MixingConfig(**kwargs)
