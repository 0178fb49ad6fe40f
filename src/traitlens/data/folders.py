"""Directory sources: class subfolders (``root/<class>/...``) or a flat folder of images."""

from __future__ import annotations

from pathlib import Path

from traitlens.data.images import describe_extensions, find_images
from traitlens.data.source import FileImageSource, ImageRecord
from traitlens.errors import DataError


class ClassFolderSource(FileImageSource):
    """Images under ``root/<class>/`` at any depth, labelled by their top-level subfolder."""

    kind = "class_folder"

    def __init__(self, root: Path, paths: list[Path]) -> None:
        by_source = sorted((path.relative_to(root).as_posix(), path) for path in paths)
        records = [ImageRecord(source, source.split("/", 1)[0]) for source, _ in by_source]
        super().__init__(root, records, [path for _, path in by_source])


class ImageFolderSource(FileImageSource):
    """Unlabelled images directly inside ``root``."""

    kind = "image_folder"

    def __init__(self, root: Path, paths: list[Path]) -> None:
        by_source = sorted((path.name, path) for path in paths)
        records = [ImageRecord(source, None) for source, _ in by_source]
        super().__init__(root, records, [path for _, path in by_source])


class ImageFileSource(FileImageSource):
    """One image file as a one-image, unlabelled source (``--data photo.jpg``); its source is the
    file's name and its root the file itself."""

    kind = "image_file"

    def __init__(self, path: Path) -> None:
        super().__init__(path, [ImageRecord(path.name, None)], [path])


def open_folder(root: Path) -> ClassFolderSource | ImageFolderSource:
    """A class folder when ``root``'s subfolders hold images, else a flat image folder.

    Raises DataError when there are no images, or when images sit both directly in ``root`` and in
    subfolders, since then it is unclear which of them carry a class.
    """
    loose_images = find_images(root, recursive=False)
    images_by_class = {
        path.name: find_images(path, recursive=True)
        for path in root.iterdir()
        if path.is_dir() and not path.name.startswith(".")
    }
    class_names = sorted(name for name, images in images_by_class.items() if images)
    if class_names and loose_images:
        raise DataError(
            f"{root} holds images both directly (e.g. {loose_images[0].name}) and in subfolders "
            f"({', '.join(class_names)}); expected either one subfolder per class or a flat "
            "folder of images"
        )
    if class_names:
        return ClassFolderSource(
            root, [path for name in class_names for path in images_by_class[name]]
        )
    if loose_images:
        return ImageFolderSource(root, loose_images)
    raise DataError(f"no images found in {root} (looked for {describe_extensions()})")
