"""Retrieval with a trained checkpoint: embed query and gallery images, rank, draw the ranked lists.

    python examples/retrieval.py --model runs/finetune/ptl/last --output runs/retrieval

Without ``--model`` a small PTL model is fine-tuned first (examples/finetune.py). Images are resized
to the size the checkpoint records (its config.json), the one it was trained at. The gallery is
searched with cosine similarity; the PNG frames correct matches green and wrong ones red.
"""
import argparse
from pathlib import Path

from ptl_timm.data import build_dataset
from ptl_timm.data.synth import generate_synthetic
from ptl_timm.eval import FeatureExtractor, FeatureSet
from ptl_timm.eval.retrieval import draw_rankings, search


def main(argv=None) -> Path:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--model', help='checkpoint folder (config.json + model.safetensors)')
    parser.add_argument('--output', default='runs/retrieval')
    parser.add_argument('--num-ids', type=int, default=40)
    parser.add_argument('--backbone', default='resnet18', help='backbone when no --model is given')
    parser.add_argument('--epochs', type=int, default=6, help='fine-tuning epochs when no --model is given')
    args = parser.parse_args(argv)

    output = Path(args.output)
    checkpoint = args.model
    if checkpoint is None:
        from finetune import main as finetune
        checkpoint = finetune(['--output', str(output / 'finetune'), '--epochs', str(args.epochs),
                               '--num-ids', str(args.num_ids), '--backbone', args.backbone])['output'] + '/last'
    root = generate_synthetic(output / 'finetune' / 'data', 'street', num_ids=args.num_ids, images_per_id=8)
    dataset = build_dataset('market1501', root)
    extractor = FeatureExtractor(checkpoint)
    query, gallery = (FeatureSet(*extractor.extract_records(records), [r.path for r in records])
                      for records in (dataset.query, dataset.gallery))
    rankings = search(query, gallery, top_k=8)
    picture = draw_rankings(rankings, output / 'ranked.png', max_queries=8)
    print(f'{len(rankings)} queries ranked; top-8 lists of the first 8: {picture}')
    return picture


if __name__ == '__main__':
    main()
