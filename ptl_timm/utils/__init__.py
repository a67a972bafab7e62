from .images import IMAGE_EXTENSIONS, list_images
from .io import atomic_folder, atomic_path, atomic_save_json, atomic_write, current_umask, recover_folder
from .device import DEVICE_HELP, resolve_device
from .system import cpu_count, default_workers
