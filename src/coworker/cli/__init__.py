"""The command line: ``coworker`` (:mod:`.main`), its network commands (:mod:`.network`), ``coworker setup``
and ``coworker demo``."""
