"""The head kinds of ``traitlens heads train --kind``; importing this package registers them."""

from traitlens.heads.kinds import intr, linear, prompt_cam

KIND_MODULES = (intr, linear, prompt_cam)
"""Named so that linters see the imports that register the kinds."""
