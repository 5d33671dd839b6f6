# sdbridge OUTPUT — paste into the callbacks DAT of a Script TOP (no input needed).
# Shows the newest frame of sdbridge's output stream STREAM (the last one while none is new).
# The daemon writes it with:  sink: [{kind: shm, name: sdbridge-out}]
# Cooks every frame because it reads absTime.frame (or use execute_dat.py's onFrameStart).
import sys

STREAM = "sdbridge-out"
SDBRIDGE_TD = ""  # folder of sdbridge_td.py; "" if it is in the Python 64-bit Module Path
if SDBRIDGE_TD and SDBRIDGE_TD not in sys.path:
    sys.path.append(SDBRIDGE_TD)
import sdbridge_td  # noqa: E402


def onSetupParameters(scriptOp):
    return


def onPulse(par):
    return


def onCook(scriptOp):
    absTime.frame  # noqa: B018,F821 - TouchDesigner global: makes this TOP time-dependent
    sdbridge_td.cook_output(scriptOp, stream=STREAM, key=scriptOp.path)
