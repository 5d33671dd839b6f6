# sdbridge INPUT — paste into the callbacks DAT of a Script TOP (see README.md).
# Wire the TOP you want transformed into the Script TOP's input; it is passed through unchanged
# and every cooked frame is written to sdbridge's shared-memory stream STREAM.
# The daemon reads it with:  source: {kind: shm, name: sdbridge-in}
import sys

STREAM = "sdbridge-in"
SDBRIDGE_TD = ""  # folder of sdbridge_td.py, e.g. r"C:\sdbridge\plugins\touchdesigner";
                  # leave "" if that folder is in Preferences > Python 64-bit Module Path
if SDBRIDGE_TD and SDBRIDGE_TD not in sys.path:
    sys.path.append(SDBRIDGE_TD)
import sdbridge_td  # noqa: E402


def onSetupParameters(scriptOp):
    return


def onPulse(par):
    return


def onCook(scriptOp):
    sdbridge_td.cook_input(scriptOp, stream=STREAM, key=scriptOp.path)
