"""Control plane: ZeroMQ commands + events, OSC and MIDI adapters, all onto one ControlTarget.

target.py (ControlTarget protocol, StateTarget) · commands.py (typed commands, schema) ·
wire.py (JSON <-> commands, error codes) · server.py (ROUTER + PUB) · security.py (loopback,
CURVE, token) · client.py (ControlClient, EventSubscriber) · osc.py · midi.py · docs.py
(generates docs/control-protocol.md). The live parameter state is bridge/runtime/state.py.
"""
