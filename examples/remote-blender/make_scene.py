"""Builds scene.blend: a camera, a light, a plane and a text object, rendered by Cycles on
the CPU at 160x120 with 16 samples and a fixed seed (so a render is the same every time).
Run: blender -b --factory-startup --python make_scene.py -- scene.blend
Debian's blender has no OpenImageDenoise: denoising is off."""

import sys

import bpy

out = sys.argv[sys.argv.index("--") + 1]
bpy.ops.wm.read_factory_settings(use_empty=True)
scene = bpy.context.scene
scene.name = "veil-remote-scene-7f3a"
scene.render.engine = "CYCLES"
scene.cycles.device = "CPU"
scene.cycles.samples = 16
scene.cycles.seed = 7
scene.cycles.use_denoising = False
scene.render.resolution_x, scene.render.resolution_y = 160, 120
scene.render.resolution_percentage = 100
scene.render.image_settings.file_format = "PNG"
scene.render.threads_mode = "FIXED"
scene.render.threads = 2

world = bpy.data.worlds.new("world")
world.color = (0.05, 0.05, 0.08)
scene.world = world

bpy.ops.mesh.primitive_plane_add(size=20, location=(0, 0, 0))
ground = bpy.data.materials.new("ground")
ground.diffuse_color = (0.02, 0.03, 0.08, 1.0)
ground.use_nodes = True
ground.node_tree.nodes["Principled BSDF"].inputs["Base Color"].default_value = (0.02, 0.03, 0.08, 1.0)
bpy.context.object.data.materials.append(ground)
bpy.ops.object.text_add(location=(-1.75, -0.2, 0.05))
text = bpy.context.object
text.name = "caption"
text.data.body = "scene default"
text.data.size = 0.6
text.data.extrude = 0.05
material = bpy.data.materials.new("caption-colour")
material.diffuse_color = (0.8, 0.8, 0.8, 1.0)
material.use_nodes = True
text.data.materials.append(material)

bpy.ops.object.light_add(type="SUN", location=(0, 0, 5))
bpy.context.object.data.energy = 3.0
bpy.ops.object.camera_add(location=(0, 0, 6), rotation=(0, 0, 0))
scene.camera = bpy.context.object

bpy.ops.wm.save_as_mainfile(filepath=out, compress=False)
