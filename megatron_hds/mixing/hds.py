"""HDS: the Holistic Data Scheduler. A SAC agent (mixing/sac.py) observes the training
state after every step, is paid the holistic reward (mixing/rewards.py) for the weights
it chose, and picks the next weights, on the timeline of mixing/timeline.py."""

from __future__ import annotations

from megatron_hds.mixing.agent_base import AgentShape
from megatron_hds.mixing.config import MixingConfig
from megatron_hds.mixing.rewards import HolisticReward
from megatron_hds.mixing.sac import SACAgent
from megatron_hds.mixing.timeline import AgentTimeline


class HDSScheduler(AgentTimeline):
    """The SAC data scheduler on rank 0, paid the holistic reward."""

    name = "hds"

    def __init__(self, initial_weights, num_matrices: int, train_iters: int, mixing: MixingConfig, shape: AgentShape,
                 seq_length: int):
        agent = SACAgent(mixing.agent, mixing.sac, shape)
        super().__init__(initial_weights, num_matrices, train_iters, agent,
                         HolisticReward(mixing.reward, mtld_max=float(seq_length)), mixing)

    def _log_fields(self) -> dict:
        return {"alpha": self.agent.alpha}
