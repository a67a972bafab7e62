from .images import IMAGE_EXTENSIONS, list_images
from .io import (
    PathLike, atomic_folder, atomic_path, atomic_save_json, atomic_write, current_umask, readable_folder, recover_folder)
from .system import cpu_count, default_workers, resolve_device
