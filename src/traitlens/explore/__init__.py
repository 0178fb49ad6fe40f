"""``traitlens explore``: a local web app to click a patch of an image, read the SAE latents active
there and edit them live (:class:`Explorer` answers; :func:`create_app` serves it)."""

from traitlens.explore.session import ExploreConfig, ExploreError, Explorer

__all__ = ["ExploreConfig", "ExploreError", "Explorer"]
