"""The XMTP transport: :mod:`.transport` drives one Node sidecar per agent (``sidecar/sidecar.mjs``, the official
``@xmtp/node-sdk``); :mod:`.node` finds Node.js and installs the sidecar's packages into the CoWorker home;
:mod:`.driver` drives a bare SDK client (``sidecar/driver.mjs``) for tests and benchmarks."""
