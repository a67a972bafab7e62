from .io import atomic_path, atomic_save_json, atomic_write
