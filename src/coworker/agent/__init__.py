"""The public agent: :class:`~.agent.AsyncAgent`, its blocking facade :class:`~.blocking.Agent`, and the local
control port (:mod:`.control`) through which the CLI drives an agent that another process runs."""
