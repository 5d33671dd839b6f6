# sdbridge housekeeping — paste into an Execute DAT (turn on "Frame Start" and "Exit").
# Forces the output Script TOP to cook every frame and releases shared memory on exit.
import sdbridge_td

OUTPUT_TOP = "sdbridge_out"  # name of the Script TOP that uses script_top_output.py


def onFrameStart(frame):
    top = op(OUTPUT_TOP)  # noqa: F821 - TouchDesigner global
    if top is not None:
        top.cook(force=True)


def onExit():
    sdbridge_td.close_all()
