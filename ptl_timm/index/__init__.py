"""A persistent, incremental gallery index for deployment: embeddings in safetensors shards, metadata in SQLite.

``ImageIndex.build(folder, model, images)`` embeds a gallery once; ``add`` embeds only new or changed images,
``remove`` drops images by path or identity, ``query`` ranks the gallery for new images (exact and streamed
shard by shard by default, faiss as an option, k-reciprocal re-ranking of the candidates as an option) and
``info`` describes it. The format, its crash safety and its one-writer lock: :mod:`ptl_timm.index.store`.
"""
from .gallery import BACKENDS, ROWS_PER_SHARD, ImageIndex, collect_images, describe_model

__all__ = ['ImageIndex', 'BACKENDS', 'ROWS_PER_SHARD', 'collect_images', 'describe_model']
