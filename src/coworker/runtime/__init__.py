"""The runtime: dispatch of incoming messages (:mod:`.dispatch`), the two sides of a task (:mod:`.callee`,
:mod:`.caller`) and collaborations (:mod:`.collaboration`). Sits on the core, the store and a transport."""
