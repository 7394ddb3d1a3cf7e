"""Run inside blender before it renders (`--python render.py`): sets the caption and its
colour, so the rendered PNG shows that this script, sent encrypted, ran on the host."""

import bpy

CAPTION = "veil remote"  # the marker below must never appear in clear on the host
MARKER = "remote-script-marker-c41d"

caption = bpy.data.objects["caption"]
caption.data.body = CAPTION
principled = caption.data.materials[0].node_tree.nodes["Principled BSDF"]
principled.inputs["Base Color"].default_value = (0.9, 0.25, 0.05, 1.0)
print("render.py: caption set")
