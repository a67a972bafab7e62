"""Fine-tune a PTL network on a (synthetic) ReID dataset and evaluate it.

    python examples/finetune.py --output runs/finetune            # a few CPU minutes
    python examples/finetune.py --backbone convnext_atto          # PTL on any timm backbone

With real data, point ``dataset`` at e.g. ``'market1501'`` and ``data_root`` at its folder, or use
``ptl-timm train --config configs/market1501/ptl_densenet161.yaml``.
"""
import argparse
from pathlib import Path

from ptl_timm.data.synth import generate_synthetic
from ptl_timm.engine import TrainConfig, fine_tune


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--output', default='runs/finetune')
    parser.add_argument('--backbone', default='resnet18')
    parser.add_argument('--epochs', type=int, default=6)
    parser.add_argument('--num-ids', type=int, default=40)
    args = parser.parse_args(argv)

    root = generate_synthetic(Path(args.output) / 'data', 'street', num_ids=args.num_ids, images_per_id=8)
    result = fine_tune(TrainConfig(
        model='ptl_net', model_args=dict(backbone=args.backbone), pretrained=False,  # True: ImageNet weights
        dataset='market1501', data_root=str(root), img_size=(128, 64), batch_size=16, lr=0.05,
        epochs=args.epochs, lr_step=args.epochs, eval_every=2, num_workers=0,
        output=str(Path(args.output) / 'ptl'), overwrite=True))
    metrics = result['last']['eval']['synth-street']  # the synthetic domain's own label
    print(f'mAP {metrics["mAP"]:.2f}  Rank-1 {metrics["rank1"]:.2f}  checkpoint: {result["output"]}/last')
    return result


if __name__ == '__main__':
    main()
