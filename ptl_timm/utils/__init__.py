from .images import IMAGE_EXTENSIONS, list_images, to_rgb
from .io import (
    PathLike, atomic_folder, atomic_path, atomic_save_json, atomic_write, check_output_path, current_umask,
    readable_folder, recover_folder, require_free_space,
)
from .device import DEVICE_HELP, parse_device, resolve_device
from .system import cpu_count, default_workers
